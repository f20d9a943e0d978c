"""kill -9 at random moments: no committed row is lost, no seq is ever handed out twice.

A real subprocess (``outbox_writer_proc.py``) appends and acks rows and reports each
committed seq range after ``append`` returned, and each ack before ``delete``. The test
SIGKILLs it mid-flight several times, reopening the same file each round.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.buffer.records import event
from agent.buffer.store import Outbox

WRITER = Path(__file__).with_name("outbox_writer_proc.py")
ROUNDS = 6


@dataclass
class Ledger:
    """What the writer claimed, across all rounds."""

    committed: set[int] = field(default_factory=set)
    maybe_deleted: set[int] = field(default_factory=set)
    max_printed: int = 0


def _lines(out: Path) -> list[str]:
    text = out.read_text()
    # A line cut short by the kill is not a claim.
    return text.split("\n")[:-1]


def _run_and_kill(db: Path, out: Path, seed: int, durability: str, rng: random.Random) -> None:
    with out.open("wb") as stdout, out.with_suffix(".err").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), "--seed", str(seed),
             "--durability", durability],
            stdout=stdout, stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 20
        while sum(1 for ln in _lines(out) if ln.startswith("C ")) < 5:
            assert proc.poll() is None, out.with_suffix(".err").read_text()
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
    finally:
        proc.kill()
        proc.wait(10)


def _record_round(out: Path, ledger: Ledger, context: str) -> None:
    lines = _lines(out)
    assert lines and lines[0] == "READY", context
    first_new: int | None = None
    for ln in lines[1:]:
        kind, *nums = ln.split()
        seqs = [int(n) for n in nums]
        if kind == "C":
            lo, hi = seqs
            if first_new is None:
                first_new = lo
                assert lo > ledger.max_printed, f"{context}: seq {lo} reused after restart"
            ledger.committed.update(range(lo, hi + 1))
            ledger.max_printed = max(ledger.max_printed, hi)
        else:
            assert kind == "D", ln
            ledger.maybe_deleted.update(seqs)


def _check_file(db: Path, ledger: Ledger, context: str) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context
        present = {s for (s,) in conn.execute("SELECT seq FROM outbox")}
        counts = dict(conn.execute("SELECT prio, count(*) FROM outbox GROUP BY prio").fetchall())
        depth = {int(k.split(".")[1]): v for k, v in conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'depth.%'")}
    finally:
        conn.close()
    lost = ledger.committed - ledger.maybe_deleted - present
    assert not lost, f"{context}: committed rows lost: {sorted(lost)[:20]}"
    # The depth counters are committed with the rows, so a crash can't make them drift.
    assert {p: counts.get(p, 0) for p in depth} == depth, context


def test_sigkill_never_loses_a_committed_row_nor_reuses_a_seq(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db = tmp_path / "outbox.db"
    ledger = Ledger()
    for n in range(ROUNDS):
        durability = "full" if n % 2 == 0 else "normal"
        context = f"seed={seed} round={n} durability={durability}"
        out = tmp_path / f"round{n}.out"
        _run_and_kill(db, out, seed + n, durability, rng)
        _record_round(out, ledger, context)
        _check_file(db, ledger, context)
    assert len(ledger.committed) > 100, "the writer barely ran: the test proved little"
    ob = Outbox(db, max_bytes=64 * 1024 * 1024)
    try:
        seq = ob.append([event("gw-1", 0.0, "after_crash")]).seqs
        assert seq[0] > ledger.max_printed, f"seed={seed}"
        assert ob.stats().evicted_total == 0
    finally:
        ob.close()
