"""``urbanedge ota sbom gateway|node-bundle|validate``: write and check CycloneDX 1.6 SBOMs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

#: Node app files: what the node loads from flash.
NODE_APP_GLOBS = ("main.py", "ue/*.py")


def add_parsers(sub: Any) -> None:
    sbom = sub.add_parser("sbom", help="CycloneDX 1.6 SBOMs of the gateway and of node bundles")
    ssub = sbom.add_subparsers(dest="sbom_command", metavar="KIND", required=True)

    gw = ssub.add_parser("gateway", help="SBOM of the gateway: application, Python distributions, interpreter")
    gw.add_argument("--app-dir", type=Path, help="an installed release slot (agent/ drivers/ …) to hash "
                    "instead of the running code")
    gw.add_argument("--release", help="application version to record (default: the running urbanedge version)")
    gw.add_argument("--serial", help="serial number (urn:uuid:… or UUID; default: a random one)")
    gw.add_argument("--cache", type=Path, help="digest cache file, so unchanged distributions are not rehashed")
    gw.add_argument("-o", "--output", default="-", help="output file ('-' = stdout)")
    gw.set_defaults(func=cmd_gateway)

    nb = ssub.add_parser("node-bundle", help="build SBOM of a node bundle (main.py and ue/*.py)")
    nb.add_argument("--dir", type=Path, required=True, help="the firmware directory (holding main.py, ue/)")
    nb.add_argument("--version", required=True, help="bundle version")
    nb.add_argument("--hw", required=True, help="hardware the bundle is for, e.g. esp32")
    nb.add_argument("--mp-version", help="MicroPython version the bundle runs on")
    nb.add_argument("--serial", help="serial number (urn:uuid:… or UUID; default: a random one)")
    nb.add_argument("-o", "--output", default="-", help="output file ('-' = stdout)")
    nb.set_defaults(func=cmd_node_bundle)

    vd = ssub.add_parser("validate", help="check a file against the strict CycloneDX 1.6 JSON schema")
    vd.add_argument("file", type=Path)
    vd.set_defaults(func=cmd_validate)


def _write(text: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(text)
        return
    path = Path(output)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_gateway(args: argparse.Namespace) -> int:
    from ota.sbom import SbomError, gateway_bom_json, validate_bom

    if args.app_dir is not None and not args.app_dir.is_dir():
        return _error(f"--app-dir {args.app_dir}: not a directory")
    try:
        text = gateway_bom_json(app_dir=args.app_dir, release=args.release, serial=args.serial, cache_file=args.cache)
        # What leaves here is checked against the strict 1.6 schema: never report a document
        # the IOC would have to reject.
        validate_bom(text, where="gateway SBOM")
    except SbomError as exc:
        return _error(str(exc))
    try:
        _write(text, args.output)
    except OSError as exc:
        return _error(f"{args.output}: {exc.strerror}")
    return 0


def node_bundle_files(firmware_dir: Path) -> dict[str, bytes]:
    """The app files of a node bundle under ``firmware_dir``: ``{relative path: bytes}``."""
    files: dict[str, bytes] = {}
    for pattern in NODE_APP_GLOBS:
        for path in sorted(firmware_dir.glob(pattern)):
            if path.is_file():
                files[path.relative_to(firmware_dir).as_posix()] = path.read_bytes()
    return files


def cmd_node_bundle(args: argparse.Namespace) -> int:
    from ota.sbom import SbomError, dumps, validate_doc
    from ota.sbom_node import DEFAULT_MP_VERSION, node_bundle_bom

    if not args.dir.is_dir():
        return _error(f"--dir {args.dir}: not a directory")
    try:
        files = node_bundle_files(args.dir)
    except OSError as exc:
        return _error(f"--dir {args.dir}: {exc}")
    if "main.py" not in files:
        return _error(f"--dir {args.dir}: no main.py (expected a node firmware directory)")
    try:
        doc = node_bundle_bom(files, version=args.version, hw=args.hw, mp_version=args.mp_version or DEFAULT_MP_VERSION,
                              serial=args.serial)
        validate_doc(doc, where="node bundle SBOM")
    except SbomError as exc:
        return _error(str(exc))
    try:
        _write(dumps(doc), args.output)
    except OSError as exc:
        return _error(f"{args.output}: {exc.strerror}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ota.sbom import SbomInvalid, validate_bom

    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _error(f"{args.file}: {getattr(exc, 'strerror', None) or exc}")
    try:
        validate_bom(text, where=str(args.file))
    except SbomInvalid as exc:
        print(f"{args.file}: invalid CycloneDX 1.6 ({len(exc.errors)} errors)", file=sys.stderr)
        for line in exc.errors:
            print(f"{args.file}: {line}", file=sys.stderr)
        return 2
    doc = json.loads(text)
    comp = (doc.get("metadata") or {}).get("component") or {}
    print(f"{args.file}: valid CycloneDX 1.6, {len(doc.get('components') or [])} components, "
          f"{comp.get('name', '?')} {comp.get('version', '?')}")
    return 0
