"""The README's "Commands in the demo", as a user runs it: the demo in one shell, the README's
commands verbatim in another. A signed dim command is done and the streetlight's own verified
reading confirms the level; the same bytes replayed are refused, and the demo's IOC shows the
sealed result and security event. Then the schedule walkthrough: a signed schedule, the
gateway's uplink cut while its steps pass, and the readings taken meanwhile reach the IOC showing
the levels the gateway set on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.process import stop_process
from tests.support.procs import wait_for
from tests.support.readme import shell_block

pytestmark = pytest.mark.slow


def demo_records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]


def clock_time(text: str, line_prefix: str, started: float) -> float:
    """The Unix time of ``<line_prefix> HH:MM:SS`` in ``text`` (printed by `date +%T` today)."""
    hms = next(line for line in text.splitlines() if line.startswith(line_prefix)).split()[-1]
    day = datetime.fromtimestamp(started)
    t = datetime.combine(day.date(), datetime.strptime(hms, "%H:%M:%S").time()).timestamp()
    return t + 86400 if t < started - 3600 else t  # the walkthrough crossed midnight


def test_the_readme_demo_commands_work(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path / "home")}
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # What ./scripts/demo.sh --workdir demo runs once the venv exists (--json: records on stdout).
        demo = subprocess.Popen([sys.executable, "-m", "urbanedge", "demo", "--workdir", "demo", "--json",
                                 "--interval", "1"], cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        wait_for(lambda: "send signed commands" in err_path.read_text(), 60, "the demo", step=0.2)
        wait_for(lambda: any(r.get("device_id") == "streetlight-1" for r in demo_records(out_path)), 60,
                 "the first verified streetlight reading", step=0.2)
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", shell_block("demo-commands-walkthrough")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
        log = res.stdout + res.stderr + err_path.read_text()
        assert res.returncode == 0, log
        assert "demo-gw-1: dim done" in res.stdout, log
        reading = next(line for line in res.stdout.splitlines() if line.startswith("streetlight-1"))
        assert "dim_level=40" in reading.split(), log
        assert "demo-gw-1: dim rejected (replayed)" in res.stdout, log
        wait_for(lambda: any(r.get("event") == "security" and r.get("reason") == "replayed"
                             for r in demo_records(out_path)), 30, "the security event at the IOC")
        assert "demo-gw-1: read-now done" in res.stdout and "demo-gw-1: valve done" in res.stdout, log
        results = [(r["cmd"], r["state"], r.get("reason")) for r in demo_records(out_path)
                   if r.get("event") == "command_result"]
        assert results == [("dim", "accepted", None), ("dim", "done", None), ("dim", "rejected", "replayed"),
                           ("read-now", "accepted", None), ("read-now", "done", None),
                           ("valve", "accepted", None), ("valve", "done", None)], results

        started = time.time()
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", shell_block("demo-schedule-walkthrough")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)
        log = res.stdout + res.stderr + err_path.read_text()
        assert res.returncode == 0, log
        cut, back = clock_time(res.stdout, "uplink cut at", started), clock_time(res.stdout, "uplink back at", started)
        # The IOC holds readings stamped inside the outage, with the levels the schedule set then.
        during = [r for r in demo_records(out_path) if r.get("device_id") == "streetlight-1"
                  and r.get("type") == "telemetry" and cut <= float(r["ts"]) <= back + 1]  # type: ignore[arg-type]
        levels = [r["values"]["dim_level"] for r in during]  # type: ignore[index]
        assert 30 in levels and 70 in levels and levels.index(30) < levels.index(70), levels
        changes = [(r["level"], r["reason"]) for r in demo_records(out_path)
                   if r.get("event") == "lighting" and r.get("device_id") == "streetlight-1"
                   and cut <= float(r["ts"]) <= back]  # type: ignore[arg-type]
        assert changes == [(30, "schedule"), (70, "schedule")], changes
        assert " dim_level=70" in res.stdout and " dim_level=30" in res.stdout, log
        # The technician's view on site names the last command and the local lighting control.
        seen = [""]

        def status() -> str:
            r = subprocess.run([sys.executable, "-m", "urbanedge", "status", "-c", "demo/demo.toml"], cwd=tmp_path,
                               env=env, capture_output=True, text=True, timeout=60)
            seen[0] = r.stdout + r.stderr
            return seen[0]
        try:
            wait_for(lambda: "last command: schedule done" in status(), 30, "the last command in urbanedge status")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; urbanedge status said:\n{seen[0]}") from None
        assert "lighting: auto, schedule " in seen[0]
        # Remote configuration: a good one is kept, one that cuts the uplink is rolled back by the
        # gateway, and the IOC sees both outcomes.
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", shell_block("demo-config-walkthrough")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        log = res.stdout + res.stderr + err_path.read_text()
        assert res.returncode == 0, log
        assert "demo-gw-1: config applied" in res.stdout and "demo-gw-1: config rolled-back (uplink)" in res.stdout, log
        statuses = [line.split() for line in res.stdout.splitlines() if " config_status " in line]
        assert [next(f for f in row if f.startswith("state=")) for row in statuses] == \
            ["state=applied", "state=rolled-back"], res.stdout
        assert "interval = 5.0" in (tmp_path / "demo" / "demo.toml").read_text()  # the kept one is live
        # Nothing lost on the way: every record the gateway sealed reached the IOC once, in one run of seqs.
        seqs = sorted(int(r["seq"]) for r in demo_records(out_path) if r.get("source") == "demo-gw-1")  # type: ignore[call-overload]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gaps or duplicates at the IOC"
    finally:
        stop_process(demo, grace=30)
    assert demo.returncode == 0, err_path.read_text()
