"""The latest SBOM of every device, from the ``sbom`` events in the reading store, and its
drift from the release SBOMs.

A gateway's event carries its CycloneDX document (``bom``); a node's carries
``{"mp", "release", "files": {path: sha256}}``, turned into a document here
(:func:`ota.sbom_node.node_reported_bom`). Every document is checked against the strict
CycloneDX 1.6 schema; one that fails is kept, flagged ``invalid`` with its errors.

Drift: the release SBOM is found by ``metadata.component`` name, type and version. For a
gateway the application's tree digests (``metadata.component.hashes``) must equal the
release's; for a node each file's SHA-256 must equal the bundle's file component, and the
device must hold exactly the bundle's files. Status: ``match``, ``drift``,
``unknown-release`` (no release SBOM with that name/type/version) or ``invalid``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ota.sbom import SbomError, SbomInvalid, validate_bom, validate_doc
from ota.sbom_node import PROP_NOT_REPORTED, NodeReportError, node_reported_bom

STATUSES = ("match", "drift", "unknown-release", "invalid")
_PAGE = 1000
#: Serial numbers of the documents made from node reports derive from (source, seq), so the
#: same report always gives the same document.
_SERIAL_NS = uuid.UUID("6f1c3f2e-5a7b-4c1d-9e8f-0a1b2c3d4e5f")

ReleaseKey = tuple[str, str, str]


class RecordSource(Protocol):
    """What is read of a reading store (:class:`ioc.store.ReadingStore` has it); the caller
    opens the store, so this module stays free of database I/O."""

    def stats(self) -> Mapping[str, Any]: ...

    def records(self, source: str, *, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]: ...


class ReleaseSetError(SbomError):
    """The release SBOM directory or one of its files cannot be used (names the file)."""


@dataclass(slots=True)
class DeviceSbom:
    """What the IOC knows about one device's software, from its latest ``sbom`` event."""

    device_id: str
    source: str
    seq: int
    ts: float
    kind: str  # "gateway" | "node" | "unknown"
    bom: dict[str, Any] | None
    errors: list[str] = field(default_factory=list)
    status: str = "unknown-release"
    drift: list[dict[str, Any]] = field(default_factory=list)
    release_file: str | None = None

    @property
    def release(self) -> str | None:
        comp = _component(self.bom)
        version = comp.get("version") if comp else None
        return version if isinstance(version, str) else None

    @property
    def components(self) -> int:
        comps = self.bom.get("components") if self.bom else None
        return len(comps) if isinstance(comps, list) else 0

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device_id, "source": self.source, "seq": self.seq, "ts": self.ts, "kind": self.kind,
                "release": self.release, "status": self.status, "components": self.components,
                "release_sbom": self.release_file, "errors": self.errors, "drift": self.drift}


def _component(doc: Any) -> dict[str, Any] | None:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    comp = meta.get("component") if isinstance(meta, dict) else None
    return comp if isinstance(comp, dict) else None


def _records(store: RecordSource, source: str) -> Iterator[dict[str, Any]]:
    after = -1
    while True:
        page = store.records(source, after_seq=after, limit=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = int(page[-1]["seq"])


def _sortkey(record: Mapping[str, Any]) -> tuple[float, int]:
    ts, seq = record.get("ts"), record.get("seq")
    return (float(ts) if isinstance(ts, int | float) else 0.0, seq if isinstance(seq, int) else -1)


def device_sbom(source: str, record: Mapping[str, Any]) -> DeviceSbom:
    """The checked SBOM of one stored ``sbom`` event (never raises for a bad event)."""
    device_id, seq = str(record.get("device_id")), record.get("seq")
    ts, _ = _sortkey(record)
    base = DeviceSbom(device_id, source, seq if isinstance(seq, int) else -1, ts, "unknown", None)
    if "bom" in record:
        base.kind = "gateway"
        bom = record["bom"]
        if not isinstance(bom, dict):
            base.status, base.errors = "invalid", [f"field 'bom': expected an object, got {type(bom).__name__}"]
            return base
        base.bom = bom
        try:
            validate_doc(bom)
        except SbomInvalid as exc:
            base.status, base.errors = "invalid", exc.errors
        return base
    if "files" in record:
        base.kind = "node"
        serial = str(uuid.uuid5(_SERIAL_NS, f"{source}:{base.seq}"))
        try:
            base.bom = node_reported_bom(record, device_id=device_id, serial=serial)
            validate_doc(base.bom)
        except NodeReportError as exc:
            base.status, base.errors = "invalid", [str(exc)]
        except SbomInvalid as exc:
            base.status, base.errors = "invalid", exc.errors
        return base
    base.status, base.errors = "invalid", ["an sbom event needs 'bom' (gateway) or 'files' (node)"]
    return base


def latest_sboms(store: RecordSource) -> dict[str, DeviceSbom]:
    """Per device, its latest (by ts, then seq) ``sbom`` event across all sources, checked.

    Reads every stored record of every source: meant for an operator or a periodic job,
    not a request path."""
    latest: dict[str, tuple[tuple[float, int], str, dict[str, Any]]] = {}
    for source in sorted(store.stats()):
        for record in _records(store, source):
            if record.get("type") != "event" or record.get("event") != "sbom":
                continue
            device_id = record.get("device_id")
            if not isinstance(device_id, str):
                continue
            key = _sortkey(record)
            if device_id not in latest or key > latest[device_id][0]:
                latest[device_id] = (key, source, record)
    return {dev: device_sbom(source, record) for dev, (_, source, record) in sorted(latest.items())}


# --- release SBOMs and drift ------------------------------------------------------------


def release_key(doc: Any) -> ReleaseKey | None:
    comp = _component(doc)
    if comp is None:
        return None
    parts = (comp.get("name"), comp.get("type"), comp.get("version"))
    if not all(isinstance(p, str) for p in parts):
        return None
    return (str(parts[0]), str(parts[1]), str(parts[2]))


def load_releases(directory: Path) -> dict[ReleaseKey, list[tuple[str, dict[str, Any]]]]:
    """The ``*.cdx.json`` files of ``directory``, by metadata.component name, type and
    version (several per key: node bundles of one version for different hardware)."""
    if not directory.is_dir():
        raise ReleaseSetError(f"{directory}: not a directory")
    out: dict[ReleaseKey, list[tuple[str, dict[str, Any]]]] = {}
    for path in sorted(directory.rglob("*.cdx.json")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReleaseSetError(f"{path}: cannot read: {exc}") from exc
        try:
            validate_bom(text, where=str(path))
        except SbomInvalid as exc:
            raise ReleaseSetError(str(exc)) from exc
        doc = json.loads(text)
        key = release_key(doc)
        if key is None:
            raise ReleaseSetError(f"{path}: metadata.component needs name, type and version")
        out.setdefault(key, []).append((str(path), doc))
    return out


def _hashes(comp: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    hashes = comp.get("hashes") if comp else None
    for h in hashes if isinstance(hashes, list) else []:
        if isinstance(h, dict) and isinstance(h.get("alg"), str) and isinstance(h.get("content"), str):
            out[h["alg"]] = h["content"].lower()
    return out


def _file_sha256(doc: Mapping[str, Any]) -> tuple[dict[str, str | None], set[str]]:
    """``{path: sha256}`` of the file components, and the paths marked not reported."""
    files: dict[str, str | None] = {}
    quiet: set[str] = set()
    comps = doc.get("components")
    for c in comps if isinstance(comps, list) else []:
        if isinstance(c, dict) and c.get("type") == "file" and isinstance(c.get("name"), str):
            files[c["name"]] = _hashes(c).get("SHA-256")
            props = c.get("properties")
            if isinstance(props, list) and any(isinstance(p, dict) and p.get("name") == PROP_NOT_REPORTED
                                               for p in props):
                quiet.add(c["name"])
    return files, quiet


def app_drift(reported: Mapping[str, Any], release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Drift of a gateway: its application's digests against the release's."""
    mine, theirs = _hashes(_component(reported)), _hashes(_component(release))
    name = str((_component(release) or {}).get("name"))
    common = sorted(set(mine) & set(theirs))
    if not common:
        return [{"component": name, "alg": None, "expected": sorted(theirs), "actual": sorted(mine),
                 "problem": "no hash algorithm in common"}]
    return [{"component": name, "alg": alg, "expected": theirs[alg], "actual": mine[alg]}
            for alg in common if mine[alg] != theirs[alg]]


def files_drift(reported: Mapping[str, Any], release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Drift of a node: each file's SHA-256 against the bundle's; files missing or extra."""
    (mine, _), (theirs, quiet) = _file_sha256(reported), _file_sha256(release)
    # A file the node never reports (its loader) is compared only when it is reported.
    paths = set(mine) | (set(theirs) - quiet)
    return [{"path": p, "expected": theirs.get(p), "actual": mine.get(p)}
            for p in sorted(paths) if mine.get(p) != theirs.get(p)]


def check_drift(device: DeviceSbom, releases: Mapping[ReleaseKey, list[tuple[str, dict[str, Any]]]]) -> DeviceSbom:
    """Set ``device.status``, ``drift`` and ``release_file`` against the release SBOMs."""
    if device.status == "invalid" or device.bom is None:
        device.status = "invalid"
        return device
    key = release_key(device.bom)
    candidates = releases.get(key, []) if key is not None else []
    if not candidates:
        device.status, device.drift, device.release_file = "unknown-release", [], None
        return device
    compare = files_drift if device.kind == "node" else app_drift
    # Several bundles share a version (one per hardware): the device runs the closest one.
    best = min(((compare(device.bom, doc), where) for where, doc in candidates), key=lambda c: len(c[0]))
    device.drift, device.release_file = best
    device.status = "drift" if device.drift else "match"
    return device


def render_table(devices: list[DeviceSbom]) -> str:
    """One line per device, then its drift or errors indented below."""
    rows = [("DEVICE", "KIND", "RELEASE", "STATUS", "COMPONENTS", "DRIFT")]
    rows += [(d.device_id, d.kind, d.release or "-", d.status, str(d.components), str(len(d.drift))) for d in devices]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines: list[str] = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            continue
        d = devices[i - 1]
        for line in d.drift:
            what = f"path {line['path']}" if "path" in line else f"component {line['component']} {line.get('alg')}"
            lines.append(f"    drift {what}: expected {line['expected']} actual {line['actual']}")
        lines.extend(f"    error {e}" for e in d.errors[:10])
    return "\n".join(lines) + "\n"


def out_name(device_id: str) -> str:
    """A file name for a device's document that stays inside the output directory."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in device_id).lstrip(".")
    if safe != device_id:
        # Two ids that escape alike must not share a file.
        safe = f"{safe or '_'}-{hashlib.sha256(device_id.encode()).hexdigest()[:8]}"
    return f"{safe}.cdx.json"
