"""``urbanedge ota sbom …`` as a real process: files written, validation, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from urbanedge.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"


def ue(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UE_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "urbanedge", "ota", "sbom", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def bad_input(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> str:
    """In process (the wiring is covered by the subprocess runs): exit 2, a message, no traceback."""
    rc = main(["ota", "sbom", *map(str, args)])
    err = capsys.readouterr().err
    assert rc == 2, f"{args}: rc={rc} {err}"
    assert "Traceback" not in err
    return err


def test_node_bundle_written_and_validated(tmp_path: Path) -> None:
    out = tmp_path / "bundle.cdx.json"
    done = ue("node-bundle", "--dir", FIRMWARE, "--version", "0.2.0", "--hw", "esp32", "--mp-version", "1.24.1",
              "-o", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    names = {c["name"] for c in doc["components"]}
    assert "main.py" in names and "ue/node.py" in names and "micropython" in names
    checked = ue("validate", out, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"{out}: valid CycloneDX 1.6" in checked.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_validate_names_the_file_and_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle.cdx.json"
    assert main(["ota", "sbom", "node-bundle", "--dir", str(FIRMWARE), "--version", "0.2.0", "--hw", "esp32",
                 "-o", str(out)]) == 0
    doc = json.loads(out.read_text())
    doc["components"][1]["hashes"][0]["alg"] = "CRC-32"
    bad = tmp_path / "tampered.cdx.json"
    bad.write_text(json.dumps(doc))
    err = bad_input("validate", bad, capsys=capsys)
    assert f"{bad}: invalid CycloneDX 1.6" in err
    assert "$.components[1].hashes[0].alg" in err and "CRC-32" in err
    not_json = tmp_path / "x.cdx.json"
    not_json.write_text("<bom/>")
    assert "not JSON" in bad_input("validate", not_json, capsys=capsys)
    assert "error:" in bad_input("validate", tmp_path / "missing.json", capsys=capsys)


def test_gateway_sbom_of_a_slot(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    (slot / "agent").mkdir(parents=True)
    (slot / "agent/__init__.py").write_text("")
    out = tmp_path / "gw.cdx.json"
    done = ue("gateway", "--app-dir", slot, "--release", "0.2.0", "--cache", tmp_path / "cache.json", "-o", out,
              "--serial", "3e671687-395b-41f5-a30f-a58921a69b79", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["metadata"]["component"]["version"] == "0.2.0"
    assert doc["serialNumber"] == "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79"
    assert json.loads((tmp_path / "cache.json").read_text())["dists"]
    assert ue("validate", out, cwd=tmp_path).returncode == 0


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a directory" in bad_input("gateway", "--app-dir", tmp_path / "nope", capsys=capsys)
    (tmp_path / "empty").mkdir()
    assert "holds none of the packages" in bad_input("gateway", "--app-dir", tmp_path / "empty", capsys=capsys)
    assert "no main.py" in bad_input("node-bundle", "--dir", tmp_path / "empty", "--version", "1", "--hw", "esp32",
                                     capsys=capsys)
    assert "'version'" in bad_input("node-bundle", "--dir", FIRMWARE, "--version", "1 0", "--hw", "esp32",
                                    capsys=capsys)
