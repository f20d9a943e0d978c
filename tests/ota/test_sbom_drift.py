"""The IOC's drift rules (ioc.sbom), sans store: what counts as drift for a node and a
gateway, and that no stored event, however malformed, breaks the report."""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ioc.sbom import check_drift, device_sbom
from ota.sbom_node import node_bundle_bom

FILES = {"main.py": b"import ue.app\n", "ue/__init__.py": b"", "ue/node.py": b"print('node')\n"}


def bundle(files: dict[str, bytes] = FILES, version: str = "0.2.0", hw: str = "esp32") -> dict[str, Any]:
    return node_bundle_bom(files, version=version, hw=hw, mp_version="1.24.1")


def report(files: dict[str, bytes], release: str = "0.2.0") -> dict[str, Any]:
    return {"seq": 9, "type": "event", "device_id": "n-1", "ts": 1.0, "event": "sbom", "mp": "1.24.1",
            "release": release, "files": {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}}


def ota_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {p: b for p, b in files.items() if p.startswith("ue/")}


def releases(*docs: dict[str, Any]) -> dict[tuple[str, str, str], list[tuple[str, dict[str, Any]]]]:
    out: dict[tuple[str, str, str], list[tuple[str, dict[str, Any]]]] = {}
    for i, doc in enumerate(docs):
        c = doc["metadata"]["component"]
        out.setdefault((c["name"], c["type"], c["version"]), []).append((f"r{i}.cdx.json", doc))
    return out


def test_the_unreported_loader_is_not_drift() -> None:
    dev = check_drift(device_sbom("n-1", report(ota_files(FILES))), releases(bundle()))
    assert (dev.status, dev.drift) == ("match", [])


def test_changed_missing_and_extra_files_are_drift() -> None:
    files = {**ota_files(FILES), "ue/node.py": b"patched\n", "ue/extra.py": b"x"}
    del files["ue/__init__.py"]
    dev = check_drift(device_sbom("n-1", report(files)), releases(bundle()))
    assert dev.status == "drift"
    assert dev.drift == [
        {"path": "ue/__init__.py", "expected": hashlib.sha256(b"").hexdigest(), "actual": None},
        {"path": "ue/extra.py", "expected": None, "actual": hashlib.sha256(b"x").hexdigest()},
        {"path": "ue/node.py", "expected": hashlib.sha256(FILES["ue/node.py"]).hexdigest(),
         "actual": hashlib.sha256(b"patched\n").hexdigest()},
    ]
    # A loader the node does report is compared like any file.
    dev = check_drift(device_sbom("n-1", report({**ota_files(FILES), "main.py": b"other"})), releases(bundle()))
    assert [d["path"] for d in dev.drift] == ["main.py"]


def test_the_closest_bundle_of_a_version_is_the_reference() -> None:
    s3 = {**FILES, "ue/node.py": b"print('s3')\n"}
    both = releases(bundle(), bundle(s3, hw="esp32s3"))
    dev = check_drift(device_sbom("n-1", report(ota_files(s3))), both)
    assert (dev.status, dev.release_file) == ("match", "r1.cdx.json")
    assert check_drift(device_sbom("n-1", report(ota_files(FILES), release="0.3.0")), both).status == "unknown-release"


records = st.fixed_dictionaries(
    {"seq": st.integers(0, 10), "type": st.just("event"), "device_id": st.text(min_size=1, max_size=5),
     "ts": st.floats(0, 1e9), "event": st.just("sbom")},
    optional={"bom": st.recursive(st.none() | st.text(max_size=5) | st.integers(),
                                  lambda s: st.lists(s, max_size=3) | st.dictionaries(
                                      st.sampled_from(["bomFormat", "specVersion", "metadata", "component",
                                                       "components", "version", "name", "type", "hashes"]),
                                      s, max_size=4), max_leaves=12),
              "files": st.dictionaries(st.text(max_size=8), st.text(max_size=64), max_size=3) | st.integers(),
              "mp": st.text(max_size=6), "release": st.text(max_size=6)},
)


@settings(max_examples=150, deadline=None)
@given(record=records)
def test_no_stored_event_breaks_the_report(record: dict[str, Any]) -> None:
    dev = check_drift(device_sbom("src", record), releases(bundle()))
    assert dev.status in ("match", "drift", "unknown-release", "invalid")
    assert dev.as_dict()["device"] == record["device_id"]
    if dev.status == "invalid":
        assert dev.errors
