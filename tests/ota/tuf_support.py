"""Helpers for the TUF repository and client tests: a real repository on disk, served over HTTP."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from agent.update.fetch import FetchSettings
from agent.update.tuf_client import ReleaseClient
from ota.repo import Repo, add_gateway

# Quick retries so the fault tests stay fast; the policy (counts, Range) is what they check.
FAST = FetchSettings(connect_timeout=2.0, read_timeout=5.0, backoff_base=0.001, backoff_max=0.01)


def gateway_tarball(path: Path, version: str, size: int = 300_000, counter: int = 2) -> Path:
    """A release tarball with RELEASE.json and ``size`` bytes of incompressible payload."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("RELEASE.json", json.dumps({"version": version, "release_counter": counter}).encode()),
                           ("agent/blob.bin", os.urandom(size))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def publish_gateway(repo: Repo, tmp: Path, version: str, counter: int, *, hw: tuple[str, ...] = ("gateway-linux",),
                    rollout_percent: int | None = 100) -> str:
    tb = gateway_tarball(tmp / f"gw-{version}.tar.gz", version, counter=counter)
    target = add_gateway(repo, tb, version=version, counter=counter, hw=hw, min_agent_version="0.1.0")
    if rollout_percent is not None:
        repo.set_rollout("gateway", target.path, rollout_percent, rollout_id=f"r-{version}")
    repo.publish()
    return target.path


def target_url_path(repo: Repo, target_path: str) -> str:
    """The URL path a consistent-snapshot client requests for ``target_path``."""
    t = repo.target_files()[target_path]
    dirname, sep, base = target_path.rpartition("/")
    return f"/targets/{dirname}{sep}{t.hashes['sha256']}.{base}"


def target_file(repo: Repo, target_path: str) -> Path:
    return repo.repo_dir / target_url_path(repo, target_path).lstrip("/")


def client(repo: Repo, url: str, state: Path, settings: FetchSettings = FAST, **kw: object) -> ReleaseClient:
    return ReleaseClient(state / "metadata", url, bootstrap_root=repo.bootstrap_root_path.read_bytes(),
                         download_dir=state / "downloads", fetch_settings=settings, **kw)  # type: ignore[arg-type]
