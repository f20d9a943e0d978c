"""HTTP for the TUF client: bounded retries, Range resume, and never a byte past the limit.

Field gateways sit behind cellular links that drop mid-download; the classic failures of update
clients are download loops that never give up (rauc-hawkbit-updater#158, hawkbit#866) and
restarting 100 MB from zero after every cut. So:

* every download makes at most ``attempts`` requests that bring no new bytes, with exponential
  backoff and jitter between them, and then raises (the update loop reports and tries at its
  next check); requests that did bring bytes do not use up that budget, but the total number of
  requests is capped too;
* a cut target download continues with ``Range: bytes=N-``; the bytes are kept in
  ``partial/<sha256(url)>`` so a restarted agent continues as well. That is safe only because
  consistent-snapshot target URLs are content-addressed (the hash is in the file name), so
  resuming is restricted to URLs under the targets base URL. TUF verifies the hash of the whole
  file afterwards; on a mismatch the partial file is deleted;
* 4xx other than 408/429 is terminal (a missing file does not appear by asking again);
* a response that averages less than ``min_rate`` bytes/s once ``slow_after`` seconds have
  passed is dropped and counts as a failed request even though it brought bytes (they are kept
  for the resume): a mirror that trickles a byte just inside every read timeout (slow loris)
  would otherwise hold the update forever;
* the limit TUF passes (the declared length, or the metadata size cap) is enforced while
  reading: a declared Content-Length beyond it fails before the body is read, and the body is
  read at most one byte past it (the endless-data attack).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class FetchSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    chunk_size: int = 64 * 1024
    user_agent: str = "urbanedge-agent"
    # Requests that made progress do not count against ``attempts``; this caps them anyway.
    max_requests: int = 64
    # Below this average (bytes/s) after ``slow_after`` s a response is given up (and counted).
    min_rate: float = 256.0
    slow_after: float = 60.0


class _Retry(Exception):
    """A failure worth another request (5xx, 408/429, a short body, a bad Content-Range)."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


class _TooSlow(_Retry):
    """A response below ``min_rate``: retried, but counted as a failure whatever it brought."""


class ResumingFetcher(FetcherInterface):
    """``FetcherInterface`` over ``http.client`` with the policy in the module docstring.

    ``partial_dir`` and ``resumable_prefix`` enable persistent resume for URLs starting with the
    prefix; other URLs (metadata, whose unversioned names change) restart from byte 0 on retry.
    """

    def __init__(self, settings: FetchSettings | None = None, *, partial_dir: Path | None = None,
                 resumable_prefix: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings or FetchSettings()
        self.partial_dir = partial_dir
        self.resumable_prefix = resumable_prefix
        self._sleep = sleep
        self._rng = random.Random()

    def partial_path(self, url: str) -> Path | None:
        if self.partial_dir is None or not self.resumable_prefix or not url.startswith(self.resumable_prefix):
            return None
        return self.partial_dir / hashlib.sha256(url.encode()).hexdigest()

    # FetcherInterface requires _fetch; download_file (below) is what TUF actually calls.
    def _fetch(self, url: str) -> Iterator[bytes]:
        with self.download_file(url, 2**62) as f:
            data = f.read()
        return iter([data])

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        partial = self.partial_path(url)
        f: IO[bytes]
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
            f = os.fdopen(fd, "r+b")
        else:
            f = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
        keep = False
        try:
            try:
                self._download_into(url, f, max_length, resume=partial is not None)
            except exceptions.DownloadHTTPError as e:
                # A content-addressed name that is gone (4xx) will not come back: start afresh.
                keep = e.status_code >= 500 or e.status_code in _RETRY_4XX
                raise
            except exceptions.DownloadLengthMismatchError:
                raise
            except exceptions.DownloadError:
                keep = True  # transport failure: the bytes so far are good for a later resume
                raise
            f.seek(0)
            yield f
            # The caller (TUF) verified length and hashes and copied the file: done with it.
        finally:
            f.close()
            if partial is not None and not keep:
                partial.unlink(missing_ok=True)

    def _download_into(self, url: str, f: IO[bytes], max_length: int, *, resume: bool) -> None:
        s = self.settings
        failures = 0
        requests = 0
        while True:
            f.seek(0, os.SEEK_END)
            offset = f.tell() if resume else 0
            if offset > max_length:
                offset = 0
            if offset == 0:
                f.seek(0)
                f.truncate()
            elif offset == max_length:
                log.info("event=download_resume_complete url=%s bytes=%d", url, offset)
                return
            requests += 1
            try:
                self._one_request(url, f, offset, max_length)
                return
            except (exceptions.DownloadHTTPError, exceptions.DownloadLengthMismatchError):
                raise
            except (_Retry, OSError, http.client.HTTPException) as e:
                f.flush()
                with contextlib.suppress(OSError):
                    os.fsync(f.fileno())
                f.seek(0, os.SEEK_END)
                progressed = resume and f.tell() > offset
                if not progressed or isinstance(e, _TooSlow):
                    failures += 1
                log.warning("event=download_retry url=%s attempt=%d failures=%d offset=%d error=%s",
                            url, requests, failures, f.tell(), _describe(e))
                if failures >= s.attempts or requests >= s.max_requests:
                    raise _give_up(url, requests, e) from e
                delay = min(s.backoff_max, s.backoff_base * 2 ** max(0, failures - 1))
                self._sleep(delay * (0.5 + self._rng.random() / 2))

    def _one_request(self, url: str, f: IO[bytes], offset: int, max_length: int) -> None:
        s = self.settings
        parts = urlsplit(url)
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.DownloadError(f"unsupported URL {url}")
        conn = conn_cls(parts.hostname, parts.port, timeout=s.connect_timeout)
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(s.read_timeout)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            headers = {"User-Agent": s.user_agent, "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            if status == 416 and offset:
                # Our partial file is not a prefix of this resource after all: start over.
                f.seek(0)
                f.truncate()
                raise _Retry("416 on resume", status)
            if status >= 400:
                if status >= 500 or status in _RETRY_4XX:
                    raise _Retry(f"HTTP {status}", status)
                raise exceptions.DownloadHTTPError(f"HTTP {status} for {url}", status)
            if status == 206 and offset:
                m = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
                if m is None or int(m.group(1)) != offset:
                    f.seek(0)
                    f.truncate()
                    raise _Retry(f"Content-Range {resp.getheader('Content-Range')!r} does not start at {offset}")
            elif status == 200:
                if offset:
                    log.info("event=download_range_ignored url=%s", url)
                    f.seek(0)
                    f.truncate()
                    offset = 0
            else:
                raise exceptions.DownloadHTTPError(f"unexpected HTTP {status} for {url}", status)
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.isdigit() and offset + int(declared) > max_length:
                raise exceptions.DownloadLengthMismatchError(
                    f"{url}: server declares {offset + int(declared)} bytes, more than the allowed {max_length}")
            f.seek(offset)
            written = offset
            started = time.monotonic()
            while True:
                # One byte past the limit is enough to know the server sends too much. read1:
                # what has arrived, so the rate is checked as bytes trickle in.
                chunk = resp.read1(min(s.chunk_size, max_length - written + 1))
                if not chunk:
                    break
                if written + len(chunk) > max_length:
                    raise exceptions.DownloadLengthMismatchError(
                        f"{url}: more than the allowed {max_length} bytes")
                f.write(chunk)
                written += len(chunk)
                elapsed = time.monotonic() - started
                if elapsed >= s.slow_after and (written - offset) / elapsed < s.min_rate:
                    raise _TooSlow(f"{(written - offset) / elapsed:.0f} B/s over {elapsed:.0f} s, "
                                   f"below {s.min_rate:g} B/s")
            f.flush()
            if declared is not None and declared.isdigit() and written != offset + int(declared):
                raise _Retry(f"connection closed after {written - offset} of {declared} bytes")
        finally:
            conn.close()


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}:{str(e).replace(' ', '_')[:120]}"


def _give_up(url: str, requests: int, e: BaseException) -> exceptions.DownloadError:
    msg = f"{url}: giving up after {requests} requests: {e}"
    if isinstance(e, _Retry) and e.status is not None:
        return exceptions.DownloadHTTPError(msg, e.status)
    if isinstance(e, TimeoutError | _TooSlow):
        return exceptions.SlowRetrievalError(msg)
    return exceptions.DownloadError(msg)
