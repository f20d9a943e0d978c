"""``urbanedge ota add-node-bundle | node-manifest | node-key-hex``: node (ESP32) releases.

- ``add-node-bundle`` copies the app (``FIRMWARE_DIR/ue/*.py``; never ``main.py``, the loader
  that is not updated) to ``REPO/node/<hw>/<version>/ue/`` as plain files any static server serves.
- ``node-manifest`` signs ``REPO/nodes/<node>.manifest`` (ota/node_manifest.py) listing that
  bundle's files with their lengths and SHA-256.
- ``node-key-hex`` prints the public key to put in node.json ``ota.keys``.

Exit codes: 0 success, 1 runtime failure (I/O), 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from ota.node_manifest import (
    ManifestError,
    ManifestRejected,
    NodeManifest,
    check_files,
    load_private_key,
    public_key_hex,
    sign_manifest,
)
from ota.repo import atomic_write

log = logging.getLogger("ota.node")

_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,31}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BadInput(ValueError):
    """Bad arguments or input files: exit code 2."""


def _check_name(what: str, value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value) or ".." in value:
        raise BadInput(f"{what} {value!r}: letters, digits and . _ + - only")
    return value


def bundle_dir(repo: Path, hw: str, version: str) -> Path:
    return repo / "node" / hw / version


def add_node_bundle(repo: Path, firmware_dir: Path, version: str, hw: str) -> list[str]:
    """Copy FIRMWARE_DIR/ue/*.py into the repository; returns the bundle's paths (``ue/x.py``)."""
    _check_name("version", version, _VERSION)
    _check_name("hw", hw, _NAME)
    src = firmware_dir / "ue"
    if not src.is_dir():
        raise BadInput(f"{src}: no such folder (FIRMWARE_DIR must hold ue/)")
    sources = sorted(p for p in src.glob("*.py") if p.is_file())
    if not sources:
        raise BadInput(f"{src}: no .py files")
    dest = bundle_dir(repo, hw, version)
    entries = []
    for p in sources:
        data = p.read_bytes()
        entries.append((f"ue/{p.name}", len(data), hashlib.sha256(data).digest()))
    try:
        check_files(entries)
    except ManifestRejected as e:
        raise BadInput(f"{src}: the node would refuse this app: {e}") from e
    for p in sources:
        atomic_write(dest / "ue" / p.name, p.read_bytes())
    atomic_write(dest / "bundle.cdx.json", _bundle_sbom(firmware_dir, version, hw).encode())
    log.info("event=node_bundle_added hw=%s version=%s files=%d dir=%s", hw, version, len(sources), dest)
    return [e[0] for e in entries]


def _bundle_sbom(firmware_dir: Path, version: str, hw: str) -> str:
    """The bundle's build SBOM, published beside it: the IOC checks what nodes report against it
    (``urbanedge ioc sbom --releases REPO``)."""
    from ota.sbom import SbomError, dumps, validate_doc
    from ota.sbom_cli import node_bundle_files
    from ota.sbom_node import node_bundle_bom

    try:
        doc = node_bundle_bom(node_bundle_files(firmware_dir), version=version, hw=hw)
        validate_doc(doc, where="node bundle SBOM")
    except SbomError as exc:
        raise BadInput(str(exc)) from exc
    return dumps(doc)


def bundle_files(repo: Path, hw: str, version: str) -> tuple[tuple[str, int, bytes], ...]:
    folder = bundle_dir(repo, hw, version) / "ue"
    if not folder.is_dir():
        raise BadInput(f"{folder}: no bundle for hw {hw} version {version} (run add-node-bundle first)")
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in (".py", ".mpy"):
            data = p.read_bytes()
            out.append((f"ue/{p.name}", len(data), hashlib.sha256(data).digest()))
    return tuple(out)


def write_node_manifest(repo: Path, key_pem: Path, node: str, hw: str, version: str, counter: int,
                        expires_hours: float = 72.0, now: int | None = None) -> Path:
    _check_name("node", node, _NAME)
    _check_name("hw", hw, _NAME)
    _check_name("version", version, _VERSION)
    if counter < 0:
        raise BadInput(f"counter {counter}: must be >= 0")
    if expires_hours <= 0:
        raise BadInput(f"expires-hours {expires_hours}: must be > 0")
    try:
        pem = key_pem.read_bytes()
    except OSError as e:
        raise BadInput(f"{key_pem}: cannot read the node-release key: {e.strerror}") from e
    try:
        key = load_private_key(pem, str(key_pem))
    except ManifestError as e:
        raise BadInput(str(e)) from e
    issued = int(time.time()) if now is None else now
    manifest = NodeManifest(node=node, hw=hw, version=version, counter=counter, issued=issued,
                            expires=issued + int(expires_hours * 3600), base=f"node/{hw}/{version}/",
                            files=bundle_files(repo, hw, version))
    try:
        data = sign_manifest(manifest, key)
    except ManifestError as e:
        raise BadInput(str(e)) from e
    out = repo / "nodes" / f"{node}.manifest"
    atomic_write(out, data)
    log.info("event=node_manifest_written node=%s hw=%s version=%s counter=%d files=%d path=%s",
             node, hw, version, counter, len(manifest.files), out)
    return out


def _run(fn: Any) -> int:
    try:
        fn()
    except BadInput as e:
        log.error("event=ota_node_bad_input problem=%r", str(e))
        print(f"error: {e}")
        return 2
    except OSError as e:
        log.error("event=ota_node_failed problem=%r", str(e))
        print(f"error: {e}")
        return 1
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    def go() -> None:
        paths = add_node_bundle(Path(args.repo), Path(args.dir), args.version, args.hw)
        print(f"{len(paths)} files in {bundle_dir(Path(args.repo), args.hw, args.version)}")
    return _run(go)


def _cmd_manifest(args: argparse.Namespace) -> int:
    def go() -> None:
        out = write_node_manifest(Path(args.repo), Path(args.key), args.node, args.hw, args.version,
                                  args.counter, args.expires_hours)
        print(out)
    return _run(go)


def _cmd_key_hex(args: argparse.Namespace) -> int:
    def go() -> None:
        path = Path(args.key)
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise BadInput(f"{path}: cannot read: {e.strerror}") from e
        try:
            print(public_key_hex(load_private_key(pem, str(path))))
        except ManifestError as e:
            raise BadInput(str(e)) from e
    return _run(go)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("add-node-bundle", help="copy a node app (ue/*.py) into the release repository")
    p.add_argument("--repo", required=True, help="release repository directory")
    p.add_argument("--dir", required=True, help="firmware directory holding ue/")
    p.add_argument("--version", required=True)
    p.add_argument("--hw", default="esp32")
    p.set_defaults(func=_cmd_bundle)

    p = sub.add_parser("node-manifest", help="sign the per-node manifest nodes/<ID>.manifest")
    p.add_argument("--repo", required=True)
    p.add_argument("--key", required=True, help="node-release key (ECDSA P-256, PKCS#8 PEM)")
    p.add_argument("--node", required=True)
    p.add_argument("--hw", default="esp32")
    p.add_argument("--version", required=True)
    p.add_argument("--counter", required=True, type=int, help="release counter (anti-rollback)")
    p.add_argument("--expires-hours", type=float, default=72.0)
    p.set_defaults(func=_cmd_manifest)

    p = sub.add_parser("node-key-hex", help="print the node-release public key for node.json ota.keys")
    p.add_argument("--key", required=True)
    p.set_defaults(func=_cmd_key_hex)
