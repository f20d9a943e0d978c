"""The node's flash log (firmware/ue/flashlog.py) under the real ``micropython -X heapsize=100k``.

Each test drives MicroPython processes on a log directory in tmp_path and checks, from
CPython, what survives: restarts, a tail cut at every byte of the last record, flipped bytes,
a full ring (telemetry dropped before alarms, drops counted), and ``kill -9`` mid-append.

Node scripts print one JSON line per fact; ``DUMP`` prints every pending record.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

from tests.support.micropython import micropython_exe, mp_env, run_mp

SEG_HDR = 12
REC_HDR = 11

# Shared prelude: open the log named by argv, print its pending records.
PRELUDE = r"""
import sys, json
from binascii import hexlify
from ue.flashlog import FlashLog

def dump(log, tag="rec"):
    for seq, prio, data in log.peek(100000):
        print(json.dumps([tag, seq, prio, hexlify(data).decode()]))
    print(json.dumps(["state", log.pending(), log.dropped]))
"""


def payload(i: int) -> bytes:
    return (b"r%05d:" % i) + bytes((i * 7 + k) % 256 for k in range(i % 23))


def parse(out: str) -> tuple[dict[int, tuple[int, bytes]], list[Any]]:
    """(pending seq -> (prio, payload), [pending, dropped]) from a DUMP; other lines ignored."""
    recs: dict[int, tuple[int, bytes]] = {}
    state: list[Any] = []
    for line in out.splitlines():
        item = json.loads(line)
        if item[0] == "rec":
            assert item[1] not in recs, f"seq {item[1]} returned twice"
            recs[item[1]] = (item[2], bytes.fromhex(item[3]))
        elif item[0] == "state":
            state = item[1:]
    return recs, state


def fill_script(n: int, seg: int, nsegs: int, alarm_every: int = 0) -> str:
    return PRELUDE + f"""
log = FlashLog(sys.argv[1], {seg}, {nsegs})
for i in range({n}):
    prio = 0 if ({alarm_every} and i % {alarm_every} == 0) else 2
    data = b"r%05d:" % i + bytes((i * 7 + k) % 256 for k in range(i % 23))
    seq = log.append(prio, data)
    print(json.dumps(["appended", seq, prio]))
log.close()
"""


def dump_script(seg: int, nsegs: int) -> str:
    return PRELUDE + f"""
for d in sys.argv[1:]:
    print(json.dumps(["dir", d]))
    log = FlashLog(d, {seg}, {nsegs})
    dump(log)
    log.close()
"""


def dump_dir(d: Path, seg: int, nsegs: int) -> tuple[dict[int, tuple[int, bytes]], list[Any]]:
    return parse(run_mp(dump_script(seg, nsegs), args=[str(d)]))


def test_append_ack_restart_keeps_exactly_the_unacked(tmp_path: Path) -> None:
    d = tmp_path / "log"
    out = run_mp(fill_script(120, 1024, 4, alarm_every=10), args=[str(d)])
    appended = {json.loads(x)[1]: json.loads(x)[2] for x in out.splitlines() if '"appended"' in x}
    assert sorted(appended) == list(range(1, 121))
    # Ack every alarm out of order (they overtake telemetry), then a contiguous prefix by seq,
    # then a scattered set; restart between each step.
    alarms = [s for s, p in appended.items() if p == 0]
    scattered = [55, 56, 90, 118]
    run_mp(PRELUDE + f"""
log = FlashLog(sys.argv[1], 1024, 4)
first = log.peek(5)
print(json.dumps(["first", [r[0] for r in first]]))
print(json.dumps(["n", log.ack([r[0] for r in log.peek(1000, 0)])]))
log.close()
log = FlashLog(sys.argv[1], 1024, 4)
print(json.dumps(["n", log.ack(40)]))
log.close()
log = FlashLog(sys.argv[1], 1024, 4)
print(json.dumps(["n", log.ack({scattered!r})]))
log.close()
""", args=[str(d)])
    recs, (pending, dropped) = dump_dir(d, 1024, 4)
    expected = {s for s in range(1, 121) if s not in alarms and s > 40 and s not in scattered}
    assert set(recs) == expected
    assert pending == len(expected) and dropped == 0
    for seq, (prio, data) in recs.items():
        assert prio == 2 and data == payload(seq - 1)
    # Seqs continue after a restart, never reused, even once everything is acknowledged.
    out = run_mp(PRELUDE + """
log = FlashLog(sys.argv[1], 1024, 4)
print(json.dumps(["n", log.ack(10**6)]))
log.close()
log = FlashLog(sys.argv[1], 1024, 4)
print(json.dumps(["seq", log.append(1, b"after")]))
dump(log)
""", args=[str(d)])
    lines = [json.loads(x) for x in out.splitlines()]
    assert ["seq", 121] in lines
    recs, (pending, _) = parse(out)
    assert recs == {121: (1, b"after")} and pending == 1


def test_peek_returns_alarms_first_and_each_class_in_seq_order(tmp_path: Path) -> None:
    d = tmp_path / "log"
    out = run_mp(PRELUDE + """
log = FlashLog(sys.argv[1], 2048, 3)
for i in range(30):
    log.append((2, 1, 2, 0)[i % 4], b"x%d" % i)
print(json.dumps(["peek", [(s, p) for s, p, _ in log.peek(12)]]))
print(json.dumps(["events", [s for s, p, _ in log.peek(100, 1)]]))
""", args=[str(d)])
    lines = {json.loads(x)[0]: json.loads(x)[1] for x in out.splitlines()}
    alarms = [s for s in range(1, 31) if (s - 1) % 4 == 3]
    events = [s for s in range(1, 31) if (s - 1) % 4 == 1]
    assert lines["peek"] == [[s, 0] for s in alarms] + [[s, 1] for s in events[:12 - len(alarms)]]
    assert lines["events"] == events


def _record_offsets(seg_file: Path) -> list[tuple[int, int]]:
    """(start, end) of every record in a segment file, read by the documented layout."""
    data = seg_file.read_bytes()
    off, spans = SEG_HDR, []
    while off + REC_HDR <= len(data):
        plen = struct.unpack_from("<H", data, off)[0]
        spans.append((off, off + REC_HDR + plen))
        off += REC_HDR + plen
    return spans


def test_tail_cut_at_every_byte_recovers_every_earlier_record(tmp_path: Path) -> None:
    base = tmp_path / "base"
    run_mp(fill_script(40, 4096, 4), args=[str(base)])
    segs = sorted(base.glob("s*"), key=lambda p: int(p.name[1:]))
    last = segs[-1]
    spans = _record_offsets(last)
    start, end = spans[-1]
    total_before = 39  # records 1..39 stay intact whatever happens to record 40
    dirs = []
    for cut in range(start, end + 1):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(base, d)
        (d / last.name).write_bytes(last.read_bytes()[:cut])
        dirs.append((cut, d))
    # Open every cut copy, append one record, reopen: earlier records, the new one, nothing else.
    out = run_mp(PRELUDE + """
for d in sys.argv[1:]:
    print(json.dumps(["dir", d]))
    log = FlashLog(d, 4096, 4)
    seq = log.append(2, b"new")
    log.close()
    log = FlashLog(d, 4096, 4)
    print(json.dumps(["new", seq]))
    dump(log)
    log.close()
""", args=[str(d) for _, d in dirs], timeout=120)
    chunks = out.split('["dir", ')[1:]
    assert len(chunks) == len(dirs)
    for (cut, _), chunk in zip(dirs, chunks, strict=True):
        body = "\n".join(chunk.splitlines()[1:])
        recs, (pending, dropped) = parse(body)
        complete = cut == end
        survivors = total_before + (1 if complete else 0)
        new_seq = json.loads(body.splitlines()[0])[1]
        # A torn record 40 was never reported appended, so its seq may be taken again; a
        # complete one must not be.
        assert new_seq == survivors + 1, f"cut at {cut}: new record got seq {new_seq}"
        assert sorted(recs) == list(range(1, survivors + 2)), f"cut at {cut}"
        for s in range(1, survivors + 1):
            assert recs[s] == (2, payload(s - 1))
        assert recs[new_seq] == (2, b"new") and pending == survivors + 1 and dropped == 0


def test_flipped_bytes_in_the_tail_cut_there_and_never_raise(tmp_path: Path) -> None:
    base = tmp_path / "base"
    run_mp(fill_script(60, 8192, 3), args=[str(base)])
    last = sorted(base.glob("s*"), key=lambda p: int(p.name[1:]))[-1]
    spans = _record_offsets(last)
    tail_start = spans[-5][0]
    rng = random.Random(4)
    cases = []
    for i in range(60):
        data = bytearray(last.read_bytes())
        where = sorted(rng.sample(range(tail_start, len(data)), rng.randint(1, 3)))
        for w in where:
            data[w] ^= rng.randint(1, 255)
        d = tmp_path / f"flip{i}"
        shutil.copytree(base, d)
        (d / last.name).write_bytes(bytes(data))
        first_bad = next(k for k, (s, e) in enumerate(spans) if s <= where[0] < e)
        # Records in the last segment are seqs 60-len(spans)+1 .. 60.
        cases.append((d, 60 - len(spans) + first_bad))
    out = run_mp(dump_script(8192, 3), args=[str(d) for d, _ in cases], timeout=120)
    chunks = out.split('["dir", ')[1:]
    assert len(chunks) == len(cases)
    for (d, good), chunk in zip(cases, chunks, strict=True):
        recs, (pending, _) = parse("\n".join(chunk.splitlines()[1:]))
        assert sorted(recs) == list(range(1, good + 1)), d.name
        assert all(recs[s] == (2, payload(s - 1)) for s in recs) and pending == good


def test_a_corrupt_ack_file_resends_rather_than_loses(tmp_path: Path) -> None:
    d = tmp_path / "log"
    run_mp(fill_script(30, 1024, 4), args=[str(d)])
    run_mp(PRELUDE + "log = FlashLog(sys.argv[1], 1024, 4)\nlog.ack([3, 5, 7])\nlog.ack(2)\n", args=[str(d)])
    recs, _ = dump_dir(d, 1024, 4)
    assert sorted(recs) == [4, 6, *range(8, 31)]
    ack = d / "ack"
    ack.write_bytes(ack.read_bytes()[:-1] + bytes([ack.read_bytes()[-1] ^ 0x40]))
    recs, _ = dump_dir(d, 1024, 4)
    assert set(range(4, 31)) - {5, 7} <= set(recs)  # the acks may come back, the rest is all there


def test_full_ring_drops_telemetry_before_alarms_and_counts(tmp_path: Path) -> None:
    d = tmp_path / "log"
    n = 400
    out = run_mp(fill_script(n, 512, 3, alarm_every=25), args=[str(d)])
    appended = {json.loads(x)[1]: json.loads(x)[2] for x in out.splitlines() if '"appended"' in x}
    alarms = {s for s, p in appended.items() if p == 0}
    recs, (pending, dropped) = dump_dir(d, 512, 3)
    assert alarms <= set(recs), "an alarm was dropped while telemetry could go instead"
    assert dropped > 0 and pending == len(recs) and pending + dropped == n
    # Whatever telemetry is left is the newest, intact.
    tele = sorted(s for s in recs if s not in alarms)
    assert tele == [s for s in range(tele[0], n + 1) if s not in alarms]
    assert all(recs[s][1] == payload(s - 1) for s in recs)
    assert len(list(d.glob("s*"))) <= 3
    # The counter persists across a restart and keeps counting.
    out = run_mp(PRELUDE + """
log = FlashLog(sys.argv[1], 512, 3)
before = log.dropped
for i in range(40):
    log.append(2, b"y" * 30)
print(json.dumps(["drops", before, log.dropped, log.pending()]))
""", args=[str(d)])
    (_, before, after, pending_after), = (json.loads(x) for x in out.splitlines() if '"drops"' in x)
    assert before == dropped and after > dropped and pending_after + after == n + 40


def test_more_alarms_than_fit_are_dropped_and_counted_too(tmp_path: Path) -> None:
    d = tmp_path / "log"
    out = run_mp(PRELUDE + """
log = FlashLog(sys.argv[1], 512, 2)
for i in range(200):
    log.append(0, b"alarm%03d" % i)
dump(log)
""", args=[str(d)])
    recs, (pending, dropped) = parse(out)
    assert dropped > 0 and pending + dropped == 200
    assert all(p == 0 and data == b"alarm%03d" % (s - 1) for s, (p, data) in recs.items())


def test_kill_9_mid_append_loses_nothing_reported_appended(tmp_path: Path) -> None:
    d = tmp_path / "log"
    script = tmp_path / "writer.py"
    # Appends forever; acknowledges in steps; prints after each call returned.
    script.write_text(PRELUDE + """
log = FlashLog(sys.argv[1], 2048, 4)
i = 0
while True:
    prio = 0 if i % 13 == 0 else 2
    seq = log.append(prio, b"k%06d" % i + b"." * (i % 40))
    print(json.dumps(["a", seq]))
    if i % 20 == 19:
        upto = seq - 10
        print(json.dumps(["k?", upto]))
        log.ack(upto)
        print(json.dumps(["k", upto]))
    i += 1
""")
    rng = random.Random(9)
    reported: set[int] = set()
    acked_upto = 0  # confirmed: ack() returned
    maybe_acked = 0  # ack() may have run
    top = 0
    for _round in range(6):
        proc = subprocess.Popen([str(micropython_exe()), "-X", "heapsize=100k", str(script), str(d)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mp_env())
        assert proc.stdout is not None
        lines = []
        want = rng.randint(30, 600)
        for line in proc.stdout:
            lines.append(line)
            if len(lines) >= want:
                break
        os.kill(proc.pid, signal.SIGKILL)
        # read(), not communicate(): communicate reads the pipe's fd directly and would skip
        # the lines the iteration above already buffered.
        rest = proc.stdout.read()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, err
        # MicroPython's print writes the text, then the newline: the kill may fall between
        # them. The text is one short write to a pipe (atomic), so a line without its newline
        # was still reported in full.
        for line in [*lines, *rest.splitlines(keepends=True)]:
            kind, value = json.loads(line)
            if kind == "a":
                assert value > top, "a seq was reused after a kill"
                top = value
                reported.add(value)
            elif kind == "k?":
                maybe_acked = max(maybe_acked, value)
            else:
                acked_upto = max(acked_upto, value)
        recs, (pending, dropped) = dump_dir(d, 2048, 4)
        must = {s for s in reported if s > maybe_acked}
        assert must <= set(recs), f"round {_round}: lost {sorted(must - set(recs))[:10]}"
        assert not {s for s in recs if s <= acked_upto}, "an acknowledged record came back"
        assert dropped == 0 and pending == len(recs)
