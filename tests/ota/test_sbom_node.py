"""Node SBOMs: the build SBOM of the real firmware/ bundle and the document made from a
node's boot report, including any garbage a node (or an attacker holding its key) sends."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ota.sbom import SbomError, tree_digest, validate_bom
from ota.sbom_cli import node_bundle_files
from ota.sbom_node import MAX_FILES, NodeReportError, node_bundle_bom, node_reported_bom, parse_node_report

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


@pytest.fixture(scope="module")
def firmware_files() -> dict[str, bytes]:
    files = node_bundle_files(FIRMWARE)
    assert "main.py" in files and "ue/node.py" in files
    return files


def hashes_of(component: dict[str, Any]) -> dict[str, str]:
    return {h["alg"]: h["content"] for h in component.get("hashes", [])}


def report_of(files: dict[str, bytes], release: str = "0.2.0") -> dict[str, Any]:
    return {"event": "sbom", "mp": "1.24.1", "release": release,
            "files": {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}}


def test_bundle_bom_of_the_real_firmware_validates(firmware_files: dict[str, bytes]) -> None:
    doc = node_bundle_bom(firmware_files, version="0.2.0", hw="esp32", mp_version="1.24.1",
                          serial="urn:uuid:0b3c9a4e-8f7e-4a53-9b0e-3f2d2c1b0a99")
    validate_bom(json.dumps(doc))
    fw = doc["metadata"]["component"]
    assert (fw["type"], fw["name"], fw["version"]) == ("firmware", "urbanedge-node", "0.2.0")
    assert {"name": "urbanedge:hw", "value": "esp32"} in fw["properties"]
    runtime = [c for c in doc["components"] if c["name"] == "micropython"]
    assert [c["purl"] for c in runtime] == ["pkg:github/micropython/micropython@v1.24.1"]
    files = {c["name"]: hashes_of(c) for c in doc["components"] if c["type"] == "file"}
    assert set(files) == {"main.py", *(f"ue/{p.name}" for p in (FIRMWARE / "ue").glob("*.py"))}
    for path, hashes in files.items():
        data = (FIRMWARE / path).read_bytes()
        assert hashes == {"SHA-256": hashlib.sha256(data).hexdigest(), "SHA-512": hashlib.sha512(data).hexdigest()}
    # The firmware digest covers what OTA updates and the node reports: not the loader.
    ota = {p: h for p, h in files.items() if p != "main.py"}
    assert hashes_of(fw) == {
        "SHA-256": tree_digest({p: h["SHA-256"] for p, h in ota.items()}, "sha256"),
        "SHA-512": tree_digest({p: h["SHA-512"] for p, h in ota.items()}, "sha512"),
    }
    loader = next(c for c in doc["components"] if c["name"] == "main.py")
    assert loader["properties"][0]["name"] == "urbanedge:not-reported"


def test_reported_bom_matches_the_build_sbom(firmware_files: dict[str, bytes]) -> None:
    built = node_bundle_bom(firmware_files, version="0.2.0", hw="esp32", mp_version="1.24.1")
    # What firmware/ue/ota.py reports: ue/*.py, not the loader.
    reported = {p: b for p, b in firmware_files.items() if p.startswith("ue/")}
    doc = node_reported_bom(report_of(reported), device_id="fl-node-07")
    validate_bom(json.dumps(doc))
    fw = doc["metadata"]["component"]
    assert (fw["type"], fw["name"], fw["version"]) == ("firmware", "urbanedge-node", "0.2.0")
    # Same files, same tree SHA-256; the node has no SHA-512 and the document says so.
    assert hashes_of(fw) == {"SHA-256": hashes_of(built["metadata"]["component"])["SHA-256"]}
    props = {p["name"]: p["value"] for p in fw["properties"]}
    assert props["urbanedge:device-id"] == "fl-node-07"
    assert "SHA-256 only" in props["urbanedge:hash-note"]
    for c in doc["components"]:
        if c["type"] == "file":
            assert set(hashes_of(c)) == {"SHA-256"}
    assert [c["purl"] for c in doc["components"] if c["name"] == "micropython"] == [
        "pkg:github/micropython/micropython@v1.24.1"]


@pytest.mark.parametrize(("report", "field"), [
    ([], "must be an object"),
    ({"event": "sbom", "mp": 1, "release": "0.2.0", "files": {"main.py": "a" * 64}}, "'mp'"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2 0", "files": {"main.py": "a" * 64}}, "'release'"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": ["main.py"]}, "'files'"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"main.py": "g" * 64}}, "64 hex digits"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"main.py": "a" * 63}}, "64 hex digits"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"main.py": 7}}, "64 hex digits"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"../boot.py": "a" * 64}}, "bad path"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"/main.py": "a" * 64}}, "bad path"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0", "files": {"x" * 200: "a" * 64}}, "bad path"),
    ({"event": "sbom", "mp": "1.24", "release": "0.2.0",
      "files": {f"ue/m{i}.py": "a" * 64 for i in range(MAX_FILES + 1)}}, "at most"),
    ({"event": "other", "mp": "1.24", "release": "0.2.0", "files": {"main.py": "a" * 64}}, "'event'"),
])
def test_bad_reports_name_the_problem(report: Any, field: str) -> None:
    with pytest.raises(NodeReportError, match=field.replace("(", r"\(")):
        node_reported_bom(report, device_id="n")


def test_unknown_release_and_frozen_code_are_valid_reports() -> None:
    doc = node_reported_bom({"event": "sbom", "mp": "1.29.0", "release": "", "files": {}}, device_id="n-1")
    validate_bom(json.dumps(doc))
    assert "version" not in doc["metadata"]["component"]
    assert [c["name"] for c in doc["components"]] == ["micropython"]


def test_uppercase_hex_is_accepted_and_normalised() -> None:
    _, _, files = parse_node_report({"mp": "1.24.1", "release": "0.2.0", "files": {"main.py": "AB" * 32}})
    assert files == {"main.py": "ab" * 32}


def test_bundle_bom_refuses_bad_input(firmware_files: dict[str, bytes]) -> None:
    with pytest.raises(SbomError, match="'version'"):
        node_bundle_bom(firmware_files, version="", hw="esp32")
    with pytest.raises(SbomError, match="bad bundle file path"):
        node_bundle_bom({"../x.py": b""}, version="1", hw="esp32")
    with pytest.raises(SbomError, match="at least one file"):
        node_bundle_bom({}, version="1", hw="esp32")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)
paths = st.one_of(st.text(max_size=40), st.sampled_from(["main.py", "ue/node.py", "ue/../x", "", "ue//a.py"]))
good_digests = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)
digests = st.one_of(json_values, good_digests, st.text(alphabet="0123456789abcdefxyz", min_size=63, max_size=65))
good_paths = st.from_regex(r"(ue/)?[a-z_][a-z0-9_]{0,12}\.py", fullmatch=True)
reports = st.fixed_dictionaries(
    {},
    optional={
        "event": st.one_of(st.just("sbom"), json_values),
        "mp": st.one_of(st.sampled_from(["1.24.1", "v1.29.0"]), json_values),
        "release": st.one_of(st.sampled_from(["0.2.0", "0.2.0-rc1"]), json_values),
        "files": st.one_of(st.dictionaries(paths, digests, max_size=6), json_values),
    },
)
# Mostly well-formed reports with one part off, so the accepting path is exercised too.
near_misses = st.fixed_dictionaries({
    "event": st.just("sbom"),
    "mp": st.one_of(st.sampled_from(["1.24.1", "v1.29.0", "1.29.0-preview"]), st.text(max_size=8)),
    "release": st.one_of(st.sampled_from(["0.2.0", "0.2.0+build.5"]), st.text(max_size=8)),
    "files": st.dictionaries(st.one_of(good_paths, paths), st.one_of(good_digests, digests), max_size=8),
})


@settings(max_examples=300, deadline=None)
@given(report=st.one_of(reports, near_misses, json_values))
def test_garbage_reports_raise_only_the_documented_error(report: Any) -> None:
    try:
        doc = node_reported_bom(report, device_id="node-x")
    except NodeReportError as exc:
        assert str(exc)
        event("rejected")
        return
    event("accepted")
    # Whatever got through gives a valid document listing exactly the reported files.
    validate_bom(json.dumps(doc))
    names = {c["name"] for c in doc["components"] if c["type"] == "file"}
    assert names == set(report["files"])
