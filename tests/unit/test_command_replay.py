"""The replay window is on disk before a command runs: it survives a restart and a kill -9."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from agent.control.replay import ReplayStore


def test_an_id_is_taken_once_and_pruned_after_its_window(tmp_path: Path) -> None:
    store = ReplayStore(tmp_path / "commands.db")
    assert store.remember(b"a" * 16, keep_until=200.0, cmd="dim", now=100.0)
    assert not store.remember(b"a" * 16, keep_until=200.0, cmd="dim", now=150.0)
    assert store.remember(b"b" * 16, keep_until=300.0, cmd="on", now=150.0)
    # Past its keep_until the first id is pruned (verify refuses such old commands anyway).
    assert store.remember(b"c" * 16, keep_until=400.0, cmd="on", now=250.0)
    assert b"a" * 16 not in store and b"b" * 16 in store and len(store) == 2
    store.close()
    reopened = ReplayStore(tmp_path / "commands.db")
    assert not reopened.remember(b"b" * 16, keep_until=300.0, cmd="on", now=260.0)
    reopened.close()


CHILD = """
import os, signal, sys
from pathlib import Path
from agent.control.replay import ReplayStore
store = ReplayStore(Path(sys.argv[1]))
assert store.remember(bytes.fromhex(sys.argv[2]), keep_until=1e12, cmd="dim", now=1.0)
print("remembered", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_id_survives_kill_9_right_after_it_was_taken(tmp_path: Path) -> None:
    db, cid = tmp_path / "commands.db", bytes(range(16))
    res = subprocess.run([sys.executable, "-c", CHILD, str(db), cid.hex()], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == -signal.SIGKILL and "remembered" in res.stdout, res.stderr
    store = ReplayStore(db)
    assert not store.remember(cid, keep_until=1e12, cmd="dim", now=2.0)
    store.close()
