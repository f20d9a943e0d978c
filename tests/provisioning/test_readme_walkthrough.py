"""The README's provisioning walkthrough, run as a new technician would: `urbanedge provision
lab` in one terminal, then the README's commands, verbatim, in another. It must end with the
IOC showing the new node's verified readings, the inventory holding the record, and the IOC
refusing the node once it is decommissioned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.process import stop_process
from tests.support.procs import wait_for
from tests.support.readme import shell_block

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_readme_provisioning_walkthrough_works(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}:/usr/sbin", "HOME": str(tmp_path / "home"),
           "LANG": "en_US.UTF-8"}
    env.pop("XDG_DATA_HOME", None)
    env.pop("XDG_STATE_HOME", None)
    lab_log = open(tmp_path / "lab.out", "ab")  # noqa: SIM115 - handed to the child
    lab = subprocess.Popen([sys.executable, "-m", "urbanedge", "provision", "lab", "--dir", "field-lab",
                            "--firmware", str(ROOT / "firmware")], cwd=tmp_path, env=env, stdout=lab_log,
                           stderr=lab_log)
    lab_log.close()
    try:
        wait_for(lambda: "field lab ready" in (tmp_path / "lab.out").read_text(), 90, "the lab")
        script = shell_block("field-lab-walkthrough")
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=240, check=False)
        out = res.stdout
        assert res.returncode == 0, out + res.stderr
        assert "Done" in out and "flood-node-01" in out, out
        assert '"source":"flood-node-01"' in out and '"verified"' in out, out  # tail of the IOC's readings
        # The inventory's CSV row for the provisioning (the decommission is recorded after it).
        assert re.search(r",provision,node,flood-node-01,SN-0001,canal-7,[0-9A-F]+,[0-9a-f]{64},.*,ok,", out), out
        assert int(out.strip().splitlines()[-1]) >= 1, out  # the IOC refused the revoked node
    finally:
        stop_process(lab, grace=20)
