"""CycloneDX 1.6 SBOMs of the gateway: the urbanedge application, every installed Python
distribution and the interpreter, each with SHA-256 and SHA-512 (BSI TR-03183-2 asks for a
SHA-512 per deployable component).

**Tree digest** (``urbanedge-tree-v1``), used for the application and for each distribution,
so the IOC can recompute it from a release tarball (:func:`release_digest`) or a node's file
report. For a set of files, with ``H`` one of SHA-256 / SHA-512::

    H( concat over files sorted by the UTF-8 bytes of their path of
       path + "\\0" + hex(H(file bytes)) + "\\n" )

``path`` is the POSIX relative path (``agent/app.py``; for a distribution the path its
``RECORD`` gives). Each algorithm is used end to end, so the SHA-512 digest is as strong as
SHA-512 and not bounded by the per-file SHA-256. Left out: ``__pycache__`` directories and
``*.pyc`` (the interpreter writes them), symlinks, and for a distribution the files the
installer writes per install (``RECORD``, ``INSTALLER``, ``REQUESTED``, ``direct_url.json``)
and files ``RECORD`` lists that are missing (counted in a property).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import sys
import tarfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cyclonedx.factory.license import LicenseFactory
from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.license import License
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

import urbanedge

if TYPE_CHECKING:
    from cyclonedx.validation.json import JsonStrictValidator

log = logging.getLogger("urbanedge.ota.sbom")

#: Top-level packages of a gateway release (the tarball's top level, an installed slot).
APP_PACKAGES = ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "urbanedge_config")
APP_NAME = "urbanedge"
HASH_METHOD = "urbanedge-tree-v1"
PROP_HASH_METHOD = "urbanedge:hash-method"
PROP_FILES = "urbanedge:files"
PROP_SKIPPED = "urbanedge:files-skipped"
#: Written by the installer per install, so not part of what a distribution ships.
_INSTALLER_FILES = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
_CACHE_VERSION = 1
_CHUNK = 1 << 20


class SbomError(Exception):
    """Base of the SBOM errors."""


class SbomInvalid(SbomError):
    """A document is not valid CycloneDX 1.6 JSON; ``errors`` holds one line per problem."""

    def __init__(self, errors: Iterable[str], *, where: str = "") -> None:
        self.errors = list(errors) or ["invalid"]
        self.where = where
        head = f"{where}: " if where else ""
        super().__init__(f"{head}not a valid CycloneDX 1.6 document: " + "; ".join(self.errors[:5])
                         + (f" (and {len(self.errors) - 5} more)" if len(self.errors) > 5 else ""))


class ReleaseSourceError(SbomError):
    """A release tarball or directory cannot be read or holds no application package."""


@dataclass(frozen=True, slots=True)
class TreeDigest:
    """Both tree digests of a set of files (hex), how many files went in, how many were
    listed but missing."""

    sha256: str
    sha512: str
    files: int
    skipped: int = 0


class _Tree:
    """Accumulates ``path -> (sha256, sha512)`` and gives the tree digests."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, str]] = {}
        self.skipped = 0

    def add_bytes(self, path: str, data: bytes) -> None:
        self.entries[path] = (hashlib.sha256(data).hexdigest(), hashlib.sha512(data).hexdigest())

    def add_file(self, path: str, fs_path: Path) -> None:
        h256, h512 = hashlib.sha256(), hashlib.sha512()
        with open(fs_path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h256.update(chunk)
                h512.update(chunk)
        self.entries[path] = (h256.hexdigest(), h512.hexdigest())

    def digest(self) -> TreeDigest:
        return TreeDigest(
            tree_digest({p: v[0] for p, v in self.entries.items()}, "sha256"),
            tree_digest({p: v[1] for p, v in self.entries.items()}, "sha512"),
            len(self.entries), self.skipped)


def tree_digest(file_hashes: dict[str, str], alg: str) -> str:
    """The ``urbanedge-tree-v1`` digest (hex) with ``alg`` ("sha256" or "sha512") over files
    given as ``{path: hex alg digest of the file}``."""
    h = hashlib.new(alg)
    for path in sorted(file_hashes, key=lambda p: p.encode()):
        h.update(path.encode() + b"\0" + file_hashes[path].lower().encode() + b"\n")
    return h.hexdigest()


def _ignored(parts: tuple[str, ...]) -> bool:
    return "__pycache__" in parts or parts[-1].endswith(".pyc")


def _walk_package(tree: _Tree, name: str, root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        # Sorted only to make a failure reproducible; the digest sorts anyway.
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not os.path.islink(os.path.join(dirpath, d)))
        for fn in sorted(filenames):
            full = Path(dirpath) / fn
            if fn.endswith(".pyc") or full.is_symlink() or not full.is_file():
                continue
            rel = PurePosixPath(name, *full.relative_to(root).parts)
            try:
                tree.add_file(str(rel), full)
            except OSError as exc:
                raise ReleaseSourceError(f"{full}: cannot read: {exc.strerror or exc}") from exc


def _app_dir_digest(app_dir: Path) -> TreeDigest:
    tree = _Tree()
    found = [n for n in APP_PACKAGES if (app_dir / n).is_dir()]
    if not found:
        raise ReleaseSourceError(f"{app_dir}: holds none of the packages {', '.join(APP_PACKAGES)}")
    for name in found:
        _walk_package(tree, name, app_dir / name)
    return tree.digest()


def running_app_digest() -> TreeDigest:
    """The tree digest of the packages the running code imports (checkout or install): each
    package's directory under the package's own name (``config/`` of a checkout counts as
    ``urbanedge_config/``, as installed)."""
    tree = _Tree()
    for name in APP_PACKAGES:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if locations:
            _walk_package(tree, name, Path(locations[0]))
    return tree.digest()


def _tar_member_path(name: str) -> str | None:
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if not parts or parts[0] not in APP_PACKAGES or ".." in parts or name.startswith("/"):
        return None
    if _ignored(parts):
        return None
    return "/".join(parts)


def release_digest(source: Path) -> TreeDigest:
    """The application tree digest of a gateway release: a ``.tar.gz`` (read, never
    extracted) or a directory (an unpacked release or an installed slot)."""
    if source.is_dir():
        return _app_dir_digest(source)
    tree = _Tree()
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                path = _tar_member_path(member.name)
                if path is None or not member.isreg():
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                with f:
                    tree.add_bytes(path, f.read())
    except (OSError, tarfile.TarError) as exc:
        raise ReleaseSourceError(f"{source}: cannot read the release: {exc}") from exc
    if not tree.entries:
        raise ReleaseSourceError(f"{source}: holds none of the packages {', '.join(APP_PACKAGES)}")
    return tree.digest()


# --- installed distributions ---------------------------------------------------------


def normalise_name(name: str) -> str:
    """PEP 503 normalised project name (what a ``pkg:pypi`` purl carries)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class DigestCache:
    """Per-distribution digests keyed by the ``RECORD`` file's path, mtime and size, kept in
    an optional JSON file: a reinstall rewrites ``RECORD``, so the key changes with it. A
    file edited in place behind pip's back is not noticed through the cache; build
    without a cache for an audit."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.used: set[str] = set()
        self.hits = self.misses = 0
        self._dirty = False
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                ok = isinstance(data, dict) and data.get("version") == _CACHE_VERSION
                if ok and isinstance(data.get("dists"), dict):
                    self.entries = data["dists"]
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                # A damaged cache only costs time: start over.
                log.warning("event=sbom_cache_unreadable path=%s problem=%r", path, str(exc))

    def get(self, key: str, stamp: list[int]) -> TreeDigest | None:
        self.used.add(key)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            try:
                found = TreeDigest(str(entry["sha256"]), str(entry["sha512"]),
                                   int(entry["files"]), int(entry["skipped"]))
            except (KeyError, TypeError, ValueError):
                found = None
            if found is not None:
                self.hits += 1
                return found
        self.misses += 1
        return None

    def put(self, key: str, stamp: list[int], digest: TreeDigest) -> None:
        self.used.add(key)
        self.entries[key] = {"stamp": stamp, "sha256": digest.sha256, "sha512": digest.sha512,
                             "files": digest.files, "skipped": digest.skipped}
        self._dirty = True

    def save(self) -> None:
        if self.path is None or not (self._dirty or set(self.entries) - self.used):
            return
        # Only what this run used: uninstalled distributions drop out.
        self.entries = {k: v for k, v in self.entries.items() if k in self.used}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"version": _CACHE_VERSION, "dists": self.entries}), encoding="utf-8")
        os.replace(tmp, self.path)
        self._dirty = False


def dist_digest(dist: importlib.metadata.Distribution, cache: DigestCache) -> TreeDigest | None:
    files = dist.files
    if not files:
        return None
    record = next((f for f in files if f.name == "RECORD" and f.parent.name.endswith(".dist-info")), None)
    key: str | None = None
    stamp: list[int] = []
    if record is not None:
        record_path = Path(str(dist.locate_file(record)))
        try:
            st = record_path.stat()
            key, stamp = str(record_path), [st.st_mtime_ns, st.st_size]
        except OSError:
            key = None
    if key is not None and (hit := cache.get(key, stamp)) is not None:
        return hit
    tree = _Tree()
    for f in files:
        parts = f.parts
        if not parts or _ignored(parts):
            continue
        if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in _INSTALLER_FILES:
            continue
        full = Path(str(dist.locate_file(f)))
        if full.is_symlink() or not full.is_file():
            tree.skipped += 1
            continue
        try:
            tree.add_file(PurePosixPath(*parts).as_posix(), full)
        except OSError as exc:
            # One unreadable file must not stop the gateway from reporting its SBOM.
            log.warning("event=sbom_file_unreadable dist=%s path=%s problem=%r", dist.metadata["Name"], full, str(exc))
            tree.skipped += 1
    digest = tree.digest()
    if key is not None:
        cache.put(key, stamp, digest)
    return digest


def _licenses(meta: Any) -> list[License]:
    factory = LicenseFactory()
    for field_name in ("License-Expression", "License"):
        value = meta.get(field_name)
        # Some projects put the whole licence text in License: not a name.
        if isinstance(value, str) and value.strip() and len(value) <= 100 and "\n" not in value.strip():
            try:
                return [factory.make_from_string(value.strip())]
            except ValueError:
                return []
    return []


def _hashes(d: TreeDigest) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=d.sha256),
            HashType(alg=HashAlgorithm.SHA_512, content=d.sha512)]


def _file_hashes(path: Path) -> list[HashType]:
    tree = _Tree()
    tree.add_file(path.name, path)
    h256, h512 = tree.entries[path.name]
    return [HashType(alg=HashAlgorithm.SHA_256, content=h256), HashType(alg=HashAlgorithm.SHA_512, content=h512)]


def _distributions() -> Iterator[importlib.metadata.Distribution]:
    seen: set[str] = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        norm = normalise_name(name)
        # The first one on sys.path is the one imports get.
        if norm in seen or norm == APP_NAME:
            continue
        seen.add(norm)
        yield dist


def _dist_component(dist: importlib.metadata.Distribution, cache: DigestCache) -> Component:
    name, version = dist.metadata["Name"], dist.version
    purl = PackageURL(type="pypi", name=normalise_name(name), version=version)
    digest = dist_digest(dist, cache)
    props = [Property(name=PROP_HASH_METHOD, value=HASH_METHOD + " over the files RECORD lists")]
    if digest is not None:
        props += [Property(name=PROP_FILES, value=str(digest.files)),
                  Property(name=PROP_SKIPPED, value=f"{digest.skipped} missing or unreadable; *.pyc, __pycache__ and "
                                                       "installer-written RECORD/INSTALLER/REQUESTED/direct_url.json "
                                                       "excluded")]
    else:
        props.append(Property(name=PROP_SKIPPED, value="no RECORD: no hashes"))
    return Component(type=ComponentType.LIBRARY, name=name, version=version, purl=purl, bom_ref=purl.to_string(),
                     hashes=_hashes(digest) if digest is not None else None, licenses=_licenses(dist.metadata),
                     properties=props)


def _interpreter_component() -> Component:
    version = platform.python_version()
    purl = PackageURL(type="generic", name="cpython", version=version)
    exe = Path(sys.executable).resolve()
    hashes = _file_hashes(exe) if exe.is_file() else None
    return Component(type=ComponentType.PLATFORM, name="cpython", version=version, purl=purl, bom_ref=purl.to_string(),
                     hashes=hashes,
                     properties=[Property(name="urbanedge:executable", value=str(exe)),
                                 Property(name=PROP_HASH_METHOD, value="plain file digest of the executable")])


def parse_serial(serial: str | None) -> uuid.UUID:
    if serial is None:
        return uuid.uuid4()
    text = serial.removeprefix("urn:uuid:")
    try:
        return uuid.UUID(text)
    except ValueError:
        raise SbomError(f"serial {serial!r} is not a UUID (urn:uuid:… or plain)") from None


def tools_component() -> Component:
    return Component(type=ComponentType.APPLICATION, name=APP_NAME, version=urbanedge.__version__)


def bom_to_dict(bom: Bom) -> dict[str, Any]:
    text = make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string()
    out: dict[str, Any] = json.loads(text)
    return out


def gateway_bom(*, app_dir: Path | None = None, release: str | None = None, serial: str | None = None,
                cache_file: Path | None = None) -> dict[str, Any]:
    """The gateway environment SBOM as a CycloneDX 1.6 JSON object (see the module doc)."""
    started = time.monotonic()
    app_digest = _app_dir_digest(app_dir) if app_dir is not None else running_app_digest()
    app = Component(
        type=ComponentType.APPLICATION, name=APP_NAME, version=release or urbanedge.__version__,
        bom_ref=f"{APP_NAME}-app", hashes=_hashes(app_digest),
        properties=[Property(name=PROP_HASH_METHOD, value=HASH_METHOD),
                    Property(name=PROP_FILES, value=str(app_digest.files)),
                    Property(name="urbanedge:packages", value=" ".join(APP_PACKAGES))])
    bom = Bom(serial_number=parse_serial(serial))
    bom.metadata.component = app
    bom.metadata.tools.components.add(tools_component())
    cache = DigestCache(cache_file)
    deps = [_dist_component(d, cache) for d in _distributions()]
    deps.append(_interpreter_component())
    for c in deps:
        bom.components.add(c)
    bom.register_dependency(app, deps)
    try:
        cache.save()
    except OSError as exc:
        log.warning("event=sbom_cache_not_saved path=%s problem=%r", cache_file, str(exc))
    log.info("event=sbom_gateway_built components=%d cache_hits=%d cache_misses=%d seconds=%.3f",
             len(deps), cache.hits, cache.misses, time.monotonic() - started)
    return bom_to_dict(bom)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def gateway_bom_json(*, app_dir: Path | None = None, release: str | None = None, serial: str | None = None,
                     cache_file: Path | None = None) -> str:
    return dumps(gateway_bom(app_dir=app_dir, release=release, serial=serial, cache_file=cache_file))


@functools.cache
def _validator() -> JsonStrictValidator:
    # Imported on first use: the schema's format checkers take most of a second to load,
    # which `ota sbom gateway` (no validation) should not pay.
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_6)


def validate_bom(json_text: str, *, where: str = "") -> None:
    """Check ``json_text`` against the strict CycloneDX 1.6 JSON schema; raises
    :class:`SbomInvalid` with every error found."""
    try:
        json.loads(json_text)
    except ValueError as exc:
        raise SbomInvalid([f"not JSON: {exc}"], where=where) from None
    result = _validator().validate_str(json_text, all_errors=True)
    if result is None:
        return
    errors = [result] if not isinstance(result, Iterable) else list(result)
    raise SbomInvalid([_error_line(e) for e in errors], where=where)


def _error_line(error: Any) -> str:
    data = getattr(error, "data", None)
    message = getattr(data, "message", None) or str(error)
    path = getattr(data, "json_path", None) or "/".join(str(p) for p in getattr(data, "absolute_path", []) or [])
    return f"{path}: {message}" if path else str(message)


def validate_doc(doc: Any, *, where: str = "") -> None:
    """:func:`validate_bom` for an already parsed document."""
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError) as exc:
        raise SbomInvalid([f"not JSON-serialisable: {exc}"], where=where) from None
    validate_bom(text, where=where)
