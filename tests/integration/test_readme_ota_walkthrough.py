"""The README's update walkthrough, as a release engineer would run it: `urbanedge ota lab` in
one terminal, the README's commands verbatim in another. A gateway and a node take 0.2.0 and
report success; both roll back from the broken 0.3.0 by themselves and say so; the IOC holds a
valid CycloneDX SBOM per device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ota.sbom import validate_doc
from tests.support.process import stop_process
from tests.support.procs import wait_for
from tests.support.readme import shell_block

ROOT = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.slow


def test_the_readme_update_walkthrough_works(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}:/usr/sbin", "HOME": str(tmp_path / "home"),
           "LANG": "en_US.UTF-8"}
    lab_log = open(tmp_path / "lab.out", "ab")  # noqa: SIM115 - handed to the child
    lab = subprocess.Popen([sys.executable, "-m", "urbanedge", "ota", "lab", "--dir", "ota-lab",
                            "--firmware", str(ROOT / "firmware")], cwd=tmp_path, env=env, stdout=lab_log,
                           stderr=lab_log)
    lab_log.close()
    try:
        wait_for(lambda: "update lab ready" in (tmp_path / "lab.out").read_text(), 180, "the lab", step=0.2)
        script = shell_block("ota-lab-walkthrough")
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        out = res.stdout
        assert res.returncode == 0, out + res.stderr + (tmp_path / "lab.out").read_text()
        rows = [line.split() for line in out.splitlines() if line.startswith(("gw-lab ", "flood-node-01 "))]
        by_release = {(r[0], r[1]): r[2] for r in rows}
        assert by_release[("gw-lab", "0.2.0")] == "success", out
        assert by_release[("flood-node-01", "0.2.0")] == "success", out
        assert by_release[("gw-lab", "0.3.0")] == "rolled-back", out
        assert by_release[("flood-node-01", "0.3.0")] == "rolled-back", out
        # The IOC compared each device's SBOM with the release's published SBOM: no drift.
        sbom_rows = {r[0]: r for r in (line.split() for line in out.splitlines()) if len(r) >= 4 and r[2] == "0.2.0"}
        assert sbom_rows["gw-lab"][3] == "match" and sbom_rows["flood-node-01"][3] == "match", out
        for device in ("gw-lab", "flood-node-01"):
            doc = json.loads((tmp_path / "ota-lab" / "sboms" / f"{device}.cdx.json").read_text())
            validate_doc(doc)
        gw = json.loads((tmp_path / "ota-lab" / "sboms" / "gw-lab.cdx.json").read_text())
        # After the roll-back the gateway runs 0.2.0 again, and its latest SBOM says so.
        assert gw["metadata"]["component"]["version"] == "0.2.0"
    finally:
        stop_process(lab, grace=30)
