"""A small static HTTP/1.1 file server with Range support, for the lab and the tests.

Any static server publishes a release repository; this one exists so the lab script and the
tests need nothing else, and so tests can make it misbehave on purpose (``Faults``): cut a
response after N bytes, answer an error status, append bytes past the end of a file, trickle
a body a few bytes at a time (slow loris). The
faults are off unless a test sets them; the request counters are always kept.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Faults:
    """Misbehaviour a test switches on per URL path (``/targets/gateway/<hash>.x.tar.gz``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cut: dict[str, list[int | None]] = {}
        self._status: dict[str, int] = {}
        self._extra: dict[str, bytes] = {}
        self._trickle: dict[str, tuple[int, float]] = {}
        self._requests: collections.Counter[str] = collections.Counter()
        self._sent: collections.Counter[str] = collections.Counter()
        self._ranges: dict[str, list[str]] = collections.defaultdict(list)

    def cut(self, path: str, after: int, times: int | None = 1) -> None:
        """Close the connection after ``after`` body bytes of the next ``times`` responses (None: all)."""
        with self._lock:
            self._cut[path] = [after, times]

    def fail(self, path: str, status: int) -> None:
        """Answer ``status`` (and no file) for every request of ``path``."""
        with self._lock:
            self._status[path] = status

    def append(self, path: str, data: bytes) -> None:
        """Serve ``path`` with ``data`` appended (and a Content-Length that says so)."""
        with self._lock:
            self._extra[path] = data

    def trickle(self, path: str, step: int, pause: float) -> None:
        """Send the body of ``path`` ``step`` bytes at a time, ``pause`` seconds apart."""
        with self._lock:
            self._trickle[path] = (step, pause)

    def clear(self) -> None:
        """Switch every fault off (counters are kept)."""
        with self._lock:
            self._cut.clear()
            self._status.clear()
            self._extra.clear()
            self._trickle.clear()

    def count(self, path: str) -> int:
        """Requests seen for ``path``."""
        with self._lock:
            return self._requests[path]

    def sent(self, path: str) -> int:
        """Body bytes sent for ``path``."""
        with self._lock:
            return self._sent[path]

    def ranges(self, path: str) -> list[str]:
        """The Range headers of the requests for ``path``, in order."""
        with self._lock:
            return list(self._ranges[path])

    # --- used by the handler --------------------------------------------------------------

    def _on_request(self, path: str, range_header: str | None
                    ) -> tuple[int | None, bytes, int | None, tuple[int, float] | None]:
        with self._lock:
            self._requests[path] += 1
            if range_header is not None:
                self._ranges[path].append(range_header)
            cut_after: int | None = None
            cut = self._cut.get(path)
            if cut is not None:
                after, times = cut
                cut_after = after
                if times is not None:
                    if times <= 1:
                        del self._cut[path]
                    else:
                        cut[1] = times - 1
            return self._status.get(path), self._extra.get(path, b""), cut_after, self._trickle.get(path)

    def _on_sent(self, path: str, n: int) -> None:
        with self._lock:
            self._sent[path] += n


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http_request client=%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        url_path = unquote(urlsplit(self.path).path)
        range_header = self.headers.get("Range")
        status, extra, cut_after, trickle = self.server.faults._on_request(url_path, range_header)
        if status is not None:
            self._simple(status)
            return
        file = self._resolve(url_path)
        if file is None:
            self._simple(HTTPStatus.NOT_FOUND)
            return
        content = file.read_bytes() + extra
        size = len(content)
        start, end = 0, size - 1
        code = HTTPStatus.OK
        if range_header is not None:
            m = _RANGE.match(range_header.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = HTTPStatus.PARTIAL_CONTENT
        payload = content[start:end + 1]
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload)))
        if code == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        if cut_after is not None and cut_after < len(payload):
            payload = payload[:cut_after]
            self.close_connection = True
        with contextlib.suppress(ConnectionError):
            if trickle is None:
                self.wfile.write(payload)
                self.wfile.flush()
            else:
                step, pause = trickle
                for i in range(0, len(payload), step):
                    self.wfile.write(payload[i:i + step])
                    self.wfile.flush()
                    self.server.faults._on_sent(url_path, len(payload[i:i + step]))
                    time.sleep(pause)
                payload = b""  # counted piece by piece above
        self.server.faults._on_sent(url_path, len(payload))

    def _simple(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _resolve(self, url_path: str) -> Path | None:
        root = self.server.root
        parts = [p for p in url_path.split("/") if p]
        if any(p in (".", "..") or "\\" in p for p in parts):
            return None
        candidate = root.joinpath(*parts)
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not resolved.is_file() or not resolved.is_relative_to(root):
            return None
        return resolved


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], root: Path, faults: Faults) -> None:
        self.root = root
        self.faults = faults
        super().__init__(addr, _Handler)


class StaticServer:
    """Serve ``root`` on ``host:port`` (0: a free port) in a background thread.

    ``with StaticServer(repo) as srv: ... srv.url ... srv.faults.cut(...)``.
    """

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.faults = Faults()
        self._httpd = _Server((host, port), self.root, self.faults)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> StaticServer:
        # A short poll interval: shutdown() waits up to one interval (tests stop many servers).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="ota-static-server",
                                        daemon=True)
        self._thread.start()
        log.info("event=static_server_started url=%s root=%s", self.url, self.root)
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop serving (from another thread than the one in ``serve_forever``)."""
        self._httpd.shutdown()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
