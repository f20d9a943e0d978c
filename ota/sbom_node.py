"""CycloneDX 1.6 SBOMs of a node's MicroPython application: the build SBOM of a bundle
(SHA-256 + SHA-512 per file) and the SBOM the IOC derives from what a node reports at boot
(SHA-256 per file only: the node computes no SHA-512).

Sans-IO: documents are built from bytes and dicts handed in.

The firmware component's hashes are the ``urbanedge-tree-v1`` digests (:mod:`ota.sbom`)
over the app files the node updates and reports (``ue/…``; the loader ``main.py`` is listed
as a file component marked ``urbanedge:not-reported`` but left out of that digest), so a
build SBOM and a node report of the same files give the same SHA-256 on
``metadata.component``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from packageurl import PackageURL

from ota.sbom import (
    HASH_METHOD,
    PROP_FILES,
    PROP_HASH_METHOD,
    SbomError,
    bom_to_dict,
    parse_serial,
    tools_component,
    tree_digest,
)

NODE_APP_NAME = "urbanedge-node"
#: The MicroPython release the firmware is type-checked against (firmware/mypy.ini stubs).
DEFAULT_MP_VERSION = "1.29.0"
MAX_FILES = 256
MAX_PATH = 128
MAX_TEXT = 64
PROP_DEVICE = "urbanedge:device-id"
PROP_HW = "urbanedge:hw"
PROP_ORIGIN = "urbanedge:origin"
PROP_HASH_NOTE = "urbanedge:hash-note"
#: Marks a file the node neither updates over the air nor reports (the loader ``main.py``),
#: so its absence from a node's report is not drift.
PROP_NOT_REPORTED = "urbanedge:not-reported"
LOADER_FILES = frozenset({"main.py"})

_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_VERSION_RE = re.compile(r"v?[0-9A-Za-z][0-9A-Za-z.+\-_]*")


class NodeReportError(SbomError):
    """A node's ``sbom`` event does not have the documented shape; the message names the field."""


def file_path_ok(path: str) -> bool:
    """A relative POSIX path without ``..``, made of the characters app files use."""
    return (len(path) <= MAX_PATH and _PATH_RE.fullmatch(path) is not None
            and ".." not in path.split("/"))


def _version(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT or not _VERSION_RE.fullmatch(value):
        raise NodeReportError(f"field {field!r}: expected a version string of up to {MAX_TEXT} characters "
                              f"[0-9A-Za-z.+-_], got {_show(value)}")
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def mp_purl(mp_version: str) -> PackageURL:
    return PackageURL(type="github", namespace="micropython", name="micropython",
                      version="v" + mp_version.removeprefix("v"))


def _runtime(mp_version: str) -> Component:
    purl = mp_purl(mp_version)
    return Component(type=ComponentType.PLATFORM, name="micropython", version=mp_version.removeprefix("v"), purl=purl,
                     bom_ref=purl.to_string(),
                     properties=[Property(name=PROP_HASH_NOTE,
                                          value="the runtime image is flashed separately; not hashed here")])


def _file_component(path: str, hashes: list[HashType], props: list[Property] | None = None) -> Component:
    return Component(type=ComponentType.FILE, name=path, bom_ref=f"file:{path}", hashes=hashes, properties=props)


def _firmware(version: str | None, hashes: list[HashType], props: list[Property]) -> Component:
    return Component(type=ComponentType.FIRMWARE, name=NODE_APP_NAME, version=version,
                     bom_ref=f"{NODE_APP_NAME}@{version or 'unknown'}", hashes=hashes, properties=props)


def _assemble(fw: Component, runtime: Component, files: list[Component], serial: str | None) -> dict[str, Any]:
    bom = Bom(serial_number=parse_serial(serial))
    bom.metadata.component = fw
    bom.metadata.tools.components.add(tools_component())
    for c in [runtime, *files]:
        bom.components.add(c)
    bom.register_dependency(fw, [runtime, *files])
    return bom_to_dict(bom)


def node_bundle_bom(files: Mapping[str, bytes], *, version: str, hw: str, mp_version: str = DEFAULT_MP_VERSION,
                    serial: str | None = None) -> dict[str, Any]:
    """The build SBOM of a node bundle: ``files`` maps app paths (``main.py``,
    ``ue/node.py``) to their bytes."""
    _version(version, "version")
    _version(mp_version, "mp_version")
    if not files:
        raise SbomError("a node bundle needs at least one file")
    bad = [p for p in files if not file_path_ok(p)]
    if bad:
        raise SbomError(f"bad bundle file path {bad[0]!r}: expected a relative path like ue/node.py")
    h256 = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    h512 = {p: hashlib.sha512(b).hexdigest() for p, b in files.items()}
    loader = [Property(name=PROP_NOT_REPORTED, value="loader: flashed once, not updated over the air")]
    comps = [_file_component(p, [HashType(alg=HashAlgorithm.SHA_256, content=h256[p]),
                                 HashType(alg=HashAlgorithm.SHA_512, content=h512[p])],
                             loader if p in LOADER_FILES else None)
             for p in sorted(files)]
    # The firmware digest covers what the node reports (not the loader), so a report of the
    # same files gives the same SHA-256.
    ota256 = {p: h for p, h in h256.items() if p not in LOADER_FILES}
    ota512 = {p: h for p, h in h512.items() if p not in LOADER_FILES}
    fw = _firmware(version, [HashType(alg=HashAlgorithm.SHA_256, content=tree_digest(ota256, "sha256")),
                             HashType(alg=HashAlgorithm.SHA_512, content=tree_digest(ota512, "sha512"))],
                   [Property(name=PROP_HASH_METHOD, value=HASH_METHOD),
                    Property(name=PROP_FILES, value=str(len(files))),
                    Property(name=PROP_HW, value=hw), Property(name=PROP_ORIGIN, value="build")])
    return _assemble(fw, _runtime(mp_version), comps, serial)


def parse_node_report(report: object) -> tuple[str, str | None, dict[str, str]]:
    """Check a node's ``sbom`` event: ``(mp version, release or None, {path: sha256 lower
    hex})``. A node that does not know its release sends ``""``; one running frozen code
    has no files to hash and sends ``{}``. Raises :class:`NodeReportError` (and nothing
    else) for any other input."""
    if not isinstance(report, Mapping):
        raise NodeReportError(f"the report must be an object, got {type(report).__name__}")
    if report.get("event", "sbom") != "sbom":
        raise NodeReportError(f"field 'event': expected 'sbom', got {_show(report.get('event'))}")
    mp = _version(report.get("mp"), "mp")
    raw_release = report.get("release")
    release = None if raw_release == "" else _version(raw_release, "release")
    files = report.get("files")
    if not isinstance(files, Mapping):
        raise NodeReportError(f"field 'files': expected an object {{path: sha256 hex}}, got {type(files).__name__}")
    if len(files) > MAX_FILES:
        raise NodeReportError(f"field 'files': {len(files)} entries, at most {MAX_FILES}")
    out: dict[str, str] = {}
    for path, digest in files.items():
        if not isinstance(path, str) or not file_path_ok(path):
            raise NodeReportError(f"field 'files': bad path {_show(path)} (relative, [A-Za-z0-9_.-/], no '..', "
                                  f"at most {MAX_PATH} characters)")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise NodeReportError(f"field 'files'[{path!r}]: expected 64 hex digits (SHA-256), got {_show(digest)}")
        out[path] = digest.lower()
    return mp, release, out


def node_reported_bom(report: object, *, device_id: str, serial: str | None = None) -> dict[str, Any]:
    """The CycloneDX 1.6 document for what a node reported (see :func:`parse_node_report`)."""
    mp, release, files = parse_node_report(report)
    comps = [_file_component(p, [HashType(alg=HashAlgorithm.SHA_256, content=files[p])]) for p in sorted(files)]
    note = "reported by the node: SHA-256 only (no SHA-512 on the device)"
    fw = _firmware(release, [HashType(alg=HashAlgorithm.SHA_256, content=tree_digest(files, "sha256"))],
                   [Property(name=PROP_HASH_METHOD, value=HASH_METHOD),
                    Property(name=PROP_FILES, value=str(len(files))),
                    Property(name=PROP_DEVICE, value=device_id), Property(name=PROP_ORIGIN, value="node-report"),
                    Property(name=PROP_HASH_NOTE, value=note)])
    return _assemble(fw, _runtime(mp), comps, serial)
