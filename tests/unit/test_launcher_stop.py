"""``urbanedge launch --supervise`` stopped while it starts an agent (the moment after an
update's exit 75) stops that agent too, instead of waiting on it forever (and leaving it behind
when killed). The real ``supervise`` loop in its own process; the agent is a small script that
exits 75 the first time (an update restart) and then runs until signalled; the stop is sent
exactly while the second agent is being started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

DRIVER = r"""
import os, signal, subprocess, sys
from pathlib import Path
from agent.update import launcher
from agent.update.slotstore import SlotStore

work = Path(sys.argv[1])
child = ("import sys, time, pathlib; p = pathlib.Path(sys.argv[1]); n = int(p.read_text() or 0) + 1 "
         "if p.exists() else 1; p.write_text(str(n)); sys.exit(75) if n == 1 else time.sleep(3600)")
launcher.agent_command = lambda cfg: [sys.executable, "-c", child, str(work / "runs")]
real_popen = subprocess.Popen
starts = []

def popen(*a, **kw):
    if len(starts) == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the stop lands while agent 2 is being started
    proc = real_popen(*a, **kw)
    starts.append(proc.pid)
    return proc

launcher.subprocess.Popen = popen
code = launcher.supervise(SlotStore(work / "slots"), work / "agent.toml", 2)
print("supervise returned", code, "starts", len(starts))
print("pids", *starts)
"""


def test_a_stop_while_an_agent_starts_stops_that_agent(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the agent it waits on: nothing left
        proc.communicate()
        raise AssertionError("the launcher did not stop: it waits on the agent it started") from None
    assert proc.returncode == 0, out
    assert "supervise returned 0 starts 2" in out, out
    pids = [int(p) for p in out.split("pids", 1)[1].split()]
    assert len(pids) == 2
    for pid in pids:  # neither agent is still running
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
