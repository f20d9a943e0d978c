"""``urbanedge ioc sbom``: the latest SBOM per device from a real SQLite reading store,
drift against release SBOMs, the documents it writes and its exit codes.

Node reports come from the real firmware code (``ue.ota.app_files`` under the MicroPython
unix port), so the IOC is checked against what a node actually sends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ioc.sbom import out_name
from ioc.store import open_store
from ota.sbom import gateway_bom, validate_bom
from ota.sbom_cli import node_bundle_files
from ota.sbom_node import node_bundle_bom
from tests.support.micropython import FIRMWARE, run_mp
from urbanedge.cli import main

ROOT = Path(__file__).resolve().parents[2]
T0 = 1764000000.0

# What the node itself sends (ue/node.py sbom_body hashes the ue package it runs from).
NODE_REPORT_SCRIPT = """
import json
from ue import node
print(json.dumps(node.sbom_body("0.2.0")))
"""


def event(seq: int, device: str, **body: Any) -> dict[str, Any]:
    return {"seq": seq, "type": "event", "device_id": device, "ts": T0 + seq, **body}


def make_slot(root: Path, app_text: bytes = b"print('agent')\n") -> Path:
    for path, data in {"agent/__init__.py": b"", "agent/app.py": app_text,
                       "urbanedge/__init__.py": b"__version__ = '0.2.0'\n"}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def node_report() -> dict[str, Any]:
    """What a node running firmware/ue reports, computed by the node's own code."""
    report: dict[str, Any] = json.loads(run_mp(NODE_REPORT_SCRIPT, heap="2m"))
    assert report["files"] and all(p.startswith("ue/") for p in report["files"])
    return report


@pytest.fixture
def world(tmp_path: Path, node_report: dict[str, Any]) -> dict[str, Path]:
    cache = tmp_path / "digests.json"
    slot = make_slot(tmp_path / "slot")
    tampered = make_slot(tmp_path / "tampered", b"print('patched in the field')\n")
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "urbanedge-0.2.0.cdx.json").write_text(
        json.dumps(gateway_bom(app_dir=slot, release="0.2.0", cache_file=cache)))
    (releases / "node-esp32-0.2.0.cdx.json").write_text(
        json.dumps(node_bundle_bom(node_bundle_files(FIRMWARE), version="0.2.0", hw="esp32",
                                   mp_version=node_report["mp"])))

    changed = dict(node_report["files"])
    changed["ue/node.py"] = "0" * 64
    bad_gateway = gateway_bom(app_dir=slot, release="0.2.0", cache_file=cache)
    bad_gateway["components"][0]["type"] = "wheel"

    store_path = tmp_path / "ioc.db"
    with open_store(f"sqlite:{store_path}") as store:
        store.accept("gw-1", [event(1, "gw-1", event="agent_started", version="0.2.0"),
                              event(2, "gw-1", event="sbom", bom=gateway_bom(app_dir=slot, release="0.2.0",
                                                                             cache_file=cache))], received_at=T0)
        store.accept("gw-2", [event(1, "gw-2", event="sbom", bom=gateway_bom(app_dir=tampered, release="0.2.0",
                                                                             cache_file=cache))], received_at=T0)
        store.accept("gw-3", [event(4, "gw-3", event="sbom", bom=bad_gateway)], received_at=T0)
        store.accept("n-1", [event(1, "n-1", **node_report)], received_at=T0)
        store.accept("n-2", [event(1, "n-2", **{**node_report, "files": changed})], received_at=T0)
        # n-3 drifted once, then was repaired: only its latest report counts.
        store.accept("n-3", [event(1, "n-3", **{**node_report, "files": changed}),
                             {"seq": 2, "type": "telemetry", "device_id": "n-3", "ts": T0 + 2, "values": {"x": 1}},
                             event(3, "n-3", **node_report)], received_at=T0)
        store.accept("n-4", [event(1, "n-4", **{**node_report, "release": "0.9.0"})], received_at=T0)
    return {"store": store_path, "releases": releases, "tmp": tmp_path}


def ioc_sbom(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "urbanedge", "ioc", "sbom", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_drift_and_invalid_are_reported_and_alarm(world: dict[str, Path], node_report: dict[str, Any]) -> None:
    out = world["tmp"] / "out"
    done = ioc_sbom("--store", f"sqlite:{world['store']}", "--releases", world["releases"], "--json", "--out", out)
    assert done.returncode == 1, done.stderr
    rows = {r["device"]: r for r in json.loads(done.stdout)}
    assert {d: r["status"] for d, r in rows.items()} == {
        "gw-1": "match", "gw-2": "drift", "gw-3": "invalid",
        "n-1": "match", "n-2": "drift", "n-3": "match", "n-4": "unknown-release"}
    assert rows["n-2"]["drift"] == [{"path": "ue/node.py", "expected": node_report["files"]["ue/node.py"],
                                     "actual": "0" * 64}]
    assert rows["n-3"]["seq"] == 3
    gw_drift = rows["gw-2"]["drift"]
    assert {d["alg"] for d in gw_drift} == {"SHA-256", "SHA-512"}
    assert all(d["component"] == "urbanedge" and d["expected"] != d["actual"] for d in gw_drift)
    assert any("$.components[0].type" in e for e in rows["gw-3"]["errors"])
    assert rows["n-1"]["release"] == "0.2.0" and rows["n-1"]["components"] == len(node_report["files"]) + 1
    assert rows["gw-1"]["release_sbom"].endswith("urbanedge-0.2.0.cdx.json")

    # Every valid device's document is written and validates; the invalid one is not.
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(out_name(d) for d in rows if d != "gw-3")
    for path in out.iterdir():
        validate_bom(path.read_text(), where=str(path))
    n2 = json.loads((out / "n-2.cdx.json").read_text())
    assert n2["metadata"]["component"]["version"] == "0.2.0"

    table = ioc_sbom("--store", f"sqlite:{world['store']}", "--releases", world["releases"])
    assert table.returncode == 1
    assert "drift path ue/node.py: expected" in table.stdout
    n1_line = next(line for line in table.stdout.splitlines() if line.startswith("n-1 "))
    assert n1_line.split()[:4] == ["n-1", "node", "0.2.0", "match"]


def test_one_device_and_no_releases(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    store = f"sqlite:{world['store']}"
    assert main(["ioc", "sbom", "--store", store, "--releases", str(world["releases"]), "--device", "n-1",
                 "--json"]) == 0
    assert [r["device"] for r in json.loads(capsys.readouterr().out)] == ["n-1"]
    assert main(["ioc", "sbom", "--store", store, "--device", "nobody"]) == 1
    assert "no sbom event from device 'nobody'" in capsys.readouterr().err
    # Without release SBOMs nothing can drift; the invalid document still alarms.
    assert main(["ioc", "sbom", "--store", store, "--json"]) == 1
    statuses = {r["device"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert set(statuses.values()) == {"unknown-release", "invalid"} and statuses["gw-3"] == "invalid"
    assert main(["ioc", "sbom", "--store", store, "--device", "gw-1"]) == 0


def test_bad_arguments_exit_2(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    missing = world["tmp"] / "no-such.db"
    assert main(["ioc", "sbom", "--store", f"sqlite:{missing}"]) == 2
    assert "no such store file" in capsys.readouterr().err
    assert not missing.exists()
    broken = world["tmp"] / "broken-releases"
    shutil.copytree(world["releases"], broken)
    (broken / "bad.cdx.json").write_text('{"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 0}')
    assert main(["ioc", "sbom", "--store", f"sqlite:{world['store']}", "--releases", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "bad.cdx.json" in err and "$.version" in err
    not_store = world["tmp"] / "plain.txt"
    not_store.write_text("hello")
    assert main(["ioc", "sbom", "--store", str(not_store)]) == 2
    assert "error:" in capsys.readouterr().err
