"""The gateway's view of the release repository: verified metadata, rollouts, releases, files.

A thin layer over python-tuf's ``ngclient.Updater`` (which does the TUF client workflow:
root rotation, freshness, rollback and mix-and-match protection, hashes) that

* speaks through ``ResumingFetcher`` (bounded retries, resume, length limits),
* turns TUF's exceptions into the agent's three outcomes: ``UpdateRejected(reason)`` for a
  verification failure, ``UpdateUnavailable`` for a transport failure, ``InsufficientSpace``,
* reads the urbanedge custom metadata into ``ReleaseInfo`` and rollout pointers into ``Rollout``.

Synchronous and blocking: the agent runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tuf.api import exceptions
from tuf.api.metadata import TargetFile  # type: ignore[attr-defined]  # re-exported without __all__
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from agent.update import errors
from agent.update.errors import InsufficientSpace, UpdateError, UpdateRejected, UpdateUnavailable
from agent.update.fetch import FetchSettings, ResumingFetcher
from ota.release_meta import (
    BadReleaseMetadata,
    ReleaseInfo,
    ReleaseRejected,
    Rollout,
    Verdict,
    check_release,
    parse_custom,
    parse_rollout,
)

log = logging.getLogger(__name__)

_SIGNED_BY = re.compile(r"signed by (\d+)/(\d+) keys")
DEFAULT_SPACE_MARGIN = 4 * 1024 * 1024


def rollout_target(kind: str) -> str:
    """The target path of the rollout pointer for ``kind`` (``gateway`` or ``node-<hw>``)."""
    return f"rollouts/{kind}.json"


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Translate python-tuf's exceptions into ``UpdateRejected`` / ``UpdateUnavailable``."""
    try:
        yield
    except exceptions.UnsignedMetadataError as e:
        m = _SIGNED_BY.search(str(e))
        reason = errors.BELOW_THRESHOLD if m and 0 < int(m.group(1)) < int(m.group(2)) else errors.BAD_SIGNATURE
        raise _rejected(what, reason, e) from e
    except exceptions.ExpiredMetadataError as e:
        raise _rejected(what, errors.EXPIRED, e) from e
    except exceptions.BadVersionNumberError as e:
        raise _rejected(what, errors.REPLAYED, e) from e
    except exceptions.LengthOrHashMismatchError as e:
        raise _rejected(what, errors.TAMPERED, e) from e
    except exceptions.RepositoryError as e:
        raise _rejected(what, errors.BAD_METADATA, e) from e
    except exceptions.DownloadLengthMismatchError as e:
        raise _rejected(what, errors.TOO_LONG, e) from e
    except exceptions.DownloadError as e:
        log.warning("event=update_unavailable what=%s error=%s", what, type(e).__name__)
        raise UpdateUnavailable(f"{what}: {e}") from e


def _rejected(what: str, reason: str, e: Exception) -> UpdateRejected:
    log.warning("event=update_rejected what=%s reason=%s error=%s", what, reason, type(e).__name__)
    return UpdateRejected(reason, f"{what}: {e}")


class ReleaseClient:
    """The device's client of one release repository (``repo_url`` serves ``metadata/`` and
    ``targets/``).

    ``bootstrap_root``: the root metadata the device was provisioned with (``1.root.json``
    bytes); ``None`` trusts the root already cached in ``metadata_dir``. ``download_dir`` holds
    verified downloads (``targets/``) and resumable partial downloads (``partial/``).
    """

    def __init__(self, metadata_dir: Path, repo_url: str, *, bootstrap_root: bytes | None,
                 download_dir: Path, fetch_settings: FetchSettings | None = None,
                 space_margin: int = DEFAULT_SPACE_MARGIN) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.download_dir = Path(download_dir)
        base = repo_url.rstrip("/")
        self.metadata_url = f"{base}/metadata/"
        self.targets_url = f"{base}/targets/"
        self.space_margin = space_margin
        self._bootstrap = bootstrap_root
        self.fetcher = ResumingFetcher(fetch_settings, partial_dir=self.download_dir / "partial",
                                       resumable_prefix=self.targets_url)
        self._updater: Updater | None = None

    def refresh(self) -> None:
        """Fetch and verify fresh top-level metadata (root → timestamp → snapshot → targets)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        (self.download_dir / "targets").mkdir(parents=True, exist_ok=True)
        if self._bootstrap is None and not (self.metadata_dir / "root.json").exists():
            raise UpdateError(f"no trusted root: {self.metadata_dir / 'root.json'} missing and no bootstrap root given")
        with mapped_errors("refresh"):
            updater = Updater(str(self.metadata_dir), self.metadata_url,
                              target_dir=str(self.download_dir / "targets"), target_base_url=self.targets_url,
                              fetcher=self.fetcher, config=UpdaterConfig(prefix_targets_with_hash=True),
                              bootstrap=self._bootstrap)
            updater.refresh()
        self._updater = updater
        log.info("event=update_metadata_refreshed repo=%s", self.metadata_url)

    def _ensure(self) -> Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None
        return self._updater

    def target_info(self, target_path: str) -> TargetFile | None:
        """The verified ``TargetFile`` of ``target_path``, ``None`` if the repository has none."""
        updater = self._ensure()
        with mapped_errors(target_path):
            return updater.get_targetinfo(target_path)

    def fetch_target(self, target_path: str) -> Path:
        """Download (or find already downloaded) the verified file of any target."""
        info = self.target_info(target_path)
        if info is None:
            raise UpdateRejected(errors.UNKNOWN_TARGET, f"{target_path} is not in the signed targets")
        return self._download(info)

    def rollout(self, kind: str) -> Rollout | None:
        """The current rollout pointer for ``kind`` (``gateway``, ``node-<hw>``), if any."""
        path = rollout_target(kind)
        info = self.target_info(path)
        if info is None:
            return None
        data = self._download(info).read_bytes()
        try:
            return parse_rollout(data)
        except BadReleaseMetadata as e:
            raise UpdateRejected(errors.BAD_METADATA, f"{path}: {e}") from e

    def release(self, target_path: str) -> ReleaseInfo:
        """The release metadata of ``target_path`` (signed custom metadata, length, hashes)."""
        info = self.target_info(target_path)
        if info is None:
            raise UpdateRejected(errors.UNKNOWN_TARGET, f"{target_path} is not in the signed targets")
        try:
            return parse_custom(info.path, info.custom, info.length, info.hashes)
        except BadReleaseMetadata as e:
            raise UpdateRejected(errors.BAD_METADATA, f"{target_path}: {e}") from e

    @staticmethod
    def check(info: ReleaseInfo, *, committed_counter: int, hw: str, agent_version: str) -> Verdict:
        """``check_release`` with its rejections as ``UpdateRejected`` (one exception family)."""
        try:
            return check_release(info, committed_counter=committed_counter, hw=hw, agent_version=agent_version)
        except ReleaseRejected as e:
            log.warning("event=update_rejected what=%s reason=%s", info.path, e.reason)
            raise UpdateRejected(e.reason, e.detail) from e

    def download(self, info: ReleaseInfo) -> Path:
        """Download the release's file, verified against the signed length and hashes."""
        target = self.target_info(info.path)
        if target is None:
            raise UpdateRejected(errors.UNKNOWN_TARGET, f"{info.path} is not in the signed targets")
        if target.length != info.length or dict(target.hashes) != dict(info.hashes):
            # The metadata changed since ``release()``: the caller judged another file.
            raise UpdateRejected(errors.BAD_METADATA, f"{info.path} changed since it was checked")
        return self._download(target)

    def destination(self, target_path: str) -> Path:
        return self.download_dir / "targets" / quote(target_path, "")

    def _download(self, info: TargetFile) -> Path:
        updater = self._ensure()
        dest = self.destination(info.path)
        cached = updater.find_cached_target(info, str(dest))
        if cached is not None:
            return Path(cached)
        self._check_space(info)
        log.info("event=download_start target=%s length=%d", info.path, info.length)
        with mapped_errors(info.path):
            path = updater.download_target(info, str(dest))
        log.info("event=download_done target=%s length=%d", info.path, info.length)
        return Path(path)

    def _check_space(self, info: TargetFile) -> None:
        hashes = list(info.hashes.values())
        dirname, sep, basename = info.path.rpartition("/")
        url = f"{self.targets_url}{dirname}{sep}{hashes[0]}.{basename}"
        partial = self.fetcher.partial_path(url)
        have = partial.stat().st_size if partial is not None and partial.exists() else 0
        # The rest of the download, plus the verified copy TUF makes of it, plus a margin.
        need = max(0, info.length - have) + info.length + self.space_margin
        free = shutil.disk_usage(self.download_dir).free
        if free < need:
            log.warning("event=download_no_space target=%s need=%d free=%d", info.path, need, free)
            raise InsufficientSpace(need, free)
