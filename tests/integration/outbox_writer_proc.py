"""Crash-test helper: appends and acks outbox rows until it is killed.

Usage: ``python outbox_writer_proc.py DB --seed N --durability full|normal``

Protocol on stdout, one line each, flushed:
  ``READY``          the outbox is open
  ``C first last``   rows first..last are committed (printed only after ``append`` returned)
  ``D seq seq ...``  these rows are about to be deleted (printed *before* ``delete``, so a
                     kill in between leaves them present or absent, never wrongly claimed)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Literal

from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, Priority, alarm, event, telemetry

MAX_BYTES = 64 * 1024 * 1024  # far above what a round writes: no row leaves by eviction


def _record(rng: random.Random, i: int) -> NewRecord:
    roll = rng.random()
    if roll < 0.05:
        return alarm("flood-1", "flood_sensor", i, "high_water", "raised", "major", "level", i)
    if roll < 0.15:
        return event("gw-1", i, "device_offline", device=f"flood-{i % 7}")
    return telemetry(f"flood-{i % 50}", "flood_sensor", i, {"level_cm": i % 400, "rain": 0.2})


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _appender(ob: AsyncOutbox, rng: random.Random) -> None:
    i = 0
    while True:
        batch = [_record(rng, i + k) for k in range(rng.randint(1, 40))]
        i += len(batch)
        seqs = (await ob.append(batch)).seqs
        if seqs != list(range(seqs[0], seqs[-1] + 1)):
            raise AssertionError(f"non-contiguous seqs in one batch: {seqs}")
        _say(f"C {seqs[0]} {seqs[-1]}")
        await asyncio.sleep(0)


async def _acker(ob: AsyncOutbox, rng: random.Random) -> None:
    while True:
        for prio in Priority:
            rows = await ob.fetch(prio, 0, 60)
            acked = [r.seq for r in rows if rng.random() < 0.5]
            if acked:
                _say("D " + " ".join(map(str, acked)))
                await ob.delete(acked)
        await asyncio.sleep(rng.random() * 0.005)


async def _main(path: Path, seed: int, durability: Literal["full", "normal"]) -> None:
    rng = random.Random(seed)
    ob = await AsyncOutbox.open(path, max_bytes=MAX_BYTES, durability=durability)
    _say("READY")
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_appender(ob, rng), name="appender")
        tg.create_task(_acker(ob, rng), name="acker")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--durability", choices=("full", "normal"), default="full")
    args = ap.parse_args()
    asyncio.run(_main(args.db, args.seed, args.durability))


if __name__ == "__main__":
    main()
