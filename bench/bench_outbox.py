"""Outbox figures (printed, not asserted): insert and drain rates, size on disk.

    .venv/bin/python bench/bench_outbox.py            # full run: 1.44 M records for the size
    .venv/bin/python bench/bench_outbox.py --quick    # a few seconds
    .venv/bin/python bench/bench_outbox.py --records 500000 --dir /mnt/sdcard

Insert: batches of 100 per ``append`` with durability FULL and NORMAL, against the
naive baseline of one row per commit with FULL (one fsync per record). Drain:
``fetch(limit=500)`` then ``delete`` of what was fetched, as the forwarder does after a
PUBACK. Size: the database file after N flood-sensor telemetry records (4 values each),
for the 48 h x 500 devices x 1/min sizing target (1.44 M records within 300 MB).
Run with ``--dir`` on the gateway's real storage: fsync there is what FULL pays for.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from agent.buffer.records import NewRecord, Priority, telemetry
from agent.buffer.store import Outbox

TARGET_RECORDS = 1_440_000
TARGET_BYTES = 300 * 1000 * 1000
BIG = 4 * 1024**3  # a limit the benchmarks never reach: no eviction skews the figures


def flood_records(n: int, seed: int = 1) -> Iterator[NewRecord]:
    """Telemetry as 500 flood sensors polled once a minute would produce it."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    for i in range(n):
        yield telemetry(
            f"flood-{i % 500:04d}", "flood_sensor", t0 + (i // 500) * 60 + rng.random(),
            {"level_cm": round(rng.uniform(0, 400), 1), "rain_mm": round(rng.uniform(0, 50), 1),
             "battery_v": round(rng.uniform(3.3, 4.2), 2), "temp_c": round(rng.uniform(10, 40), 1)},
        )


def batches(n: int, size: int) -> Iterator[list[NewRecord]]:
    batch: list[NewRecord] = []
    for rec in flood_records(n):
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fresh(folder: Path, name: str, durability: Literal["full", "normal"]) -> Outbox:
    path = folder / name
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return Outbox(path, max_bytes=BIG, durability=durability)


def insert_rate(
    folder: Path, n: int, batch: int, durability: Literal["full", "normal"]
) -> float:
    work = list(batches(n, batch))  # built first: time the outbox, not the JSON encoder
    ob = fresh(folder, f"insert-{durability}-{batch}.db", durability)
    start = time.perf_counter()
    for b in work:
        ob.append(b)
    elapsed = time.perf_counter() - start
    ob.close()
    return n / elapsed


def drain_rate(folder: Path, n: int, durability: Literal["full", "normal"]) -> float:
    ob = fresh(folder, f"drain-{durability}.db", durability)
    for b in batches(n, 1000):
        ob.append(b)
    start = time.perf_counter()
    drained = 0
    while rows := ob.fetch(Priority.TELEMETRY, 0, 500):
        drained += ob.delete([r.seq for r in rows])
    elapsed = time.perf_counter() - start
    ob.close()
    return drained / elapsed


def size_on_disk(folder: Path, n: int) -> tuple[int, float, int]:
    ob = fresh(folder, "size.db", "normal")
    body = 0
    for b in batches(n, 500):
        body += sum(len(r.body) for r in b)
        ob.append(b)
    evicted = ob.stats().evicted_total
    ob.close()  # checkpoints the WAL: the file is then all there is
    size = (folder / "size.db").stat().st_size
    return size, body / n, evicted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=TARGET_RECORDS, help="records for the size run")
    ap.add_argument("--quick", action="store_true", help="small counts, a few seconds in all")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    n_batch, n_naive, n_drain = (5_000, 500, 20_000) if args.quick else (100_000, 5_000, 200_000)
    n_size = min(args.records, 100_000) if args.quick else args.records

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"# outbox benchmark in {folder}")
        print("insert, records/s:")
        print(f"  batch 100, FULL      {insert_rate(folder, n_batch, 100, 'full'):>10,.0f}")
        print(f"  batch 100, NORMAL    {insert_rate(folder, n_batch, 100, 'normal'):>10,.0f}")
        naive = insert_rate(folder, n_naive, 1, "full")
        print(f"  baseline: 1 row per commit, FULL (naive) {naive:>10,.0f}")
        print("drain (fetch 500 + delete), records/s:")
        print(f"  FULL                 {drain_rate(folder, n_drain, 'full'):>10,.0f}")
        print(f"  NORMAL               {drain_rate(folder, n_drain, 'normal'):>10,.0f}")
        size, avg_body, evicted = size_on_disk(folder, n_size)
        per_row = size / n_size
        projected = per_row * TARGET_RECORDS
        print(f"size: {n_size:,} telemetry records (body {avg_body:.0f} B avg, 4 values)")
        print(f"  file {size / 1e6:,.1f} MB = {per_row:.1f} B/record, evicted {evicted}")
        verdict = "within" if projected <= TARGET_BYTES else "OVER"
        print(f"  for {TARGET_RECORDS:,} records: {projected / 1e6:,.1f} MB "
              f"({verdict} the {TARGET_BYTES / 1e6:.0f} MB target)")


if __name__ == "__main__":
    main()
