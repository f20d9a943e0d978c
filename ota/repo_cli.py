"""``urbanedge ota init|build-gateway|add-gateway|add-file|set-rollout|timestamp|list|serve``.

Exit codes: 0 success, 2 bad input (a missing or malformed file, an existing repository, a bad
version or target path) with a one-line message naming the file or field, 1 a runtime failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from ota import repo as repo_mod
from ota.repo import GATEWAY_HW, ROOT_WARN_BEFORE, Repo, RepoError
from ota.static_server import StaticServer

log = logging.getLogger(__name__)
Command = Callable[[argparse.Namespace], int]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("init", help="create a TUF release repository and its keys")
    _repo_args(p)
    p.add_argument("--timestamp-hours", type=float, default=24.0,
                   help="timestamp expiry in hours (default 24; re-sign with `ota timestamp` before then)")
    p.set_defaults(func=_guard(cmd_init))

    p = sub.add_parser("build-gateway", help="build a gateway release tarball from a source tree")
    p.add_argument("--source", required=True, type=Path, help="source tree holding agent/, drivers/, …, config/")
    p.add_argument("--version", required=True, help="release version, e.g. 0.2.0")
    p.add_argument("--counter", required=True, type=int,
                   help="release counter, written into RELEASE.json (give add-gateway the same)")
    p.add_argument("--out", required=True, type=Path, help="tarball to write")
    p.add_argument("--sbom-out", type=Path,
                   help="also write the release's CycloneDX SBOM (publish it with add-gateway --sbom)")
    p.set_defaults(func=_guard(cmd_build_gateway))

    p = sub.add_parser("add-gateway", help="publish a gateway release tarball as a signed target")
    _repo_args(p)
    p.add_argument("--tarball", required=True, type=Path)
    p.add_argument("--version", required=True)
    p.add_argument("--counter", required=True, type=int, help="release counter (devices refuse lower ones)")
    p.add_argument("--hw", action="append", help=f"hardware class (repeatable; default {GATEWAY_HW})")
    p.add_argument("--min-agent-version", help="oldest agent version able to install it")
    p.add_argument("--sbom", type=Path, help="CycloneDX JSON SBOM of the release (published as a target too)")
    p.set_defaults(func=_guard(cmd_add_gateway))

    p = sub.add_parser("add-file", help="publish any file as a signed target")
    _repo_args(p)
    p.add_argument("--path", required=True, help="target path, e.g. node/esp32/0.2.0/ue/node.py")
    p.add_argument("--file", required=True, type=Path)
    p.add_argument("--custom", help="custom metadata (a JSON object)")
    p.set_defaults(func=_guard(cmd_add_file))

    p = sub.add_parser("set-rollout", help="point a device class at a release, for a share of devices")
    _repo_args(p)
    p.add_argument("--kind", required=True, help="gateway or node-<hw>")
    p.add_argument("--release", required=True, help="target path of the release")
    p.add_argument("--percent", required=True, type=int, help="share of devices 0..100")
    p.add_argument("--site", action="append", help="only devices at this site (repeatable; default all sites)")
    p.add_argument("--state", choices=["active", "halted"], default="active")
    p.add_argument("--id", help="rollout id (default: a new r-<random>); devices bucket by it")
    p.set_defaults(func=_guard(cmd_set_rollout))

    p = sub.add_parser("timestamp", help="re-sign a fresh timestamp (run from cron)")
    _repo_args(p)
    p.add_argument("--hours", type=float, help="expiry in hours (default: as set at init)")
    p.set_defaults(func=_guard(cmd_timestamp))

    p = sub.add_parser("list", help="list targets with their custom metadata")
    p.add_argument("--repo", required=True, type=Path, help="repository directory")
    p.add_argument("--keys", type=Path, help="keys directory (not needed to list)")
    p.set_defaults(func=_guard(cmd_list))

    p = sub.add_parser("serve", help="serve a repository over HTTP until SIGTERM (lab use)")
    p.add_argument("--repo", required=True, type=Path, help="repository directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.set_defaults(func=_guard(cmd_serve))


def _repo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, type=Path, help="repository directory (publish this)")
    p.add_argument("--keys", required=True, type=Path, help="keys directory (keep offline, files 0600)")


def _guard(fn: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except RepoError as e:
            print(f"urbanedge ota: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"urbanedge ota: {e}", file=sys.stderr)
            return 1
    return run


def cmd_init(args: argparse.Namespace) -> int:
    if args.timestamp_hours <= 0:
        raise RepoError(f"--timestamp-hours {args.timestamp_hours}: must be positive")
    repo = Repo.create(args.repo, args.keys, timestamp_expiry=timedelta(hours=args.timestamp_hours))
    print(f"repository: {repo.repo_dir}")
    print(f"keys: {repo.keys_dir} (keep offline; root keys especially)")
    print(f"bootstrap root for gateways: {repo.bootstrap_root_path}")
    print(f"node-release public key: {repo.repo_dir / repo_mod.NODE_RELEASE_PUB}")
    return 0


def cmd_build_gateway(args: argparse.Namespace) -> int:
    release = repo_mod.build_gateway(args.source, args.version, args.out, counter=args.counter)
    print(f"{args.out}: urbanedge {release['version']}, {len(release['files'])} files")
    if args.sbom_out is not None:
        _release_sbom(args.out, args.version, args.sbom_out)
        print(f"{args.sbom_out}: CycloneDX 1.6 SBOM of the release")
    return 0


def _release_sbom(tarball: Path, version: str, out: Path) -> None:
    """The release as built: its application digest over exactly the files of the tarball
    (the IOC compares each gateway's running code with it), and the Python environment of the
    build machine, where the release was built and tested."""
    import tarfile
    import tempfile

    from ota.sbom import SbomError, gateway_bom_json, validate_bom

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball, "r:gz") as tar:
        tar.extractall(tmp, filter="data")
        text = gateway_bom_json(app_dir=Path(tmp), release=version)
    try:
        validate_bom(text, where=str(out))
    except SbomError as exc:
        raise RepoError(str(exc)) from exc
    repo_mod.atomic_write(out, text.encode())


def cmd_add_gateway(args: argparse.Namespace) -> int:
    repo = Repo.open(args.repo, args.keys)
    target = repo_mod.add_gateway(repo, args.tarball, version=args.version, counter=args.counter,
                                  hw=args.hw or [GATEWAY_HW], min_agent_version=args.min_agent_version,
                                  sbom=args.sbom)
    repo.publish()
    print(f"{target.path}: {target.length} bytes sha256 {target.hashes['sha256']} "
          f"(targets v{repo.targets.signed.version})")
    return 0


def cmd_add_file(args: argparse.Namespace) -> int:
    custom: Any = None
    if args.custom is not None:
        try:
            custom = json.loads(args.custom)
        except json.JSONDecodeError as e:
            raise RepoError(f"--custom: not JSON ({e})") from None
        if not isinstance(custom, dict):
            raise RepoError("--custom: must be a JSON object")
    target = repo_mod.add_target(args.repo, args.keys, args.path, Path(args.file), custom)
    print(f"{target.path}: {target.length} bytes sha256 {target.hashes['sha256']}")
    return 0


def cmd_set_rollout(args: argparse.Namespace) -> int:
    repo = Repo.open(args.repo, args.keys)
    rollout = repo.set_rollout(args.kind, args.release, args.percent, sites=args.site, state=args.state,
                               rollout_id=args.id)
    repo.publish()
    print(json.dumps({"target": repo_mod.rollout_target(args.kind), **rollout.to_dict()}))
    return 0


def cmd_timestamp(args: argparse.Namespace) -> int:
    repo = Repo.open(args.repo, args.keys)
    if args.hours is not None and args.hours <= 0:
        raise RepoError(f"--hours {args.hours}: must be positive")
    renewed = repo.renew()
    if renewed:
        print(f"renewed {', '.join(renewed)} (near expiry): targets v{repo.targets.signed.version}, "
              f"snapshot v{repo.snapshot.signed.version}")
    if not renewed or args.hours is not None:
        repo.refresh_timestamp(timedelta(hours=args.hours) if args.hours is not None else None)
    print(f"timestamp v{repo.timestamp.signed.version} expires {repo.timestamp.signed.expires.isoformat()}")
    if repo.root.signed.expires - datetime.now(UTC) < ROOT_WARN_BEFORE:
        print(f"warning: root metadata expires {repo.root.signed.expires.isoformat()}: "
              "re-sign it with the offline root keys", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    repo = Repo.open_unsigned(args.repo)
    for path, target in sorted(repo.target_files().items()):
        custom = json.dumps(target.custom, sort_keys=True) if target.custom is not None else "-"
        print(f"{path}\t{target.length}\tsha256:{target.hashes.get('sha256', '?')}\t{custom}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if not (args.repo / "metadata" / "timestamp.json").is_file():
        raise RepoError(f"{args.repo}: not a repository (no metadata/timestamp.json)")
    server = StaticServer(args.repo, host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with server:
        print(server.url, flush=True)
        stop.wait()
    return 0
