"""Recovering from a 48 h uplink outage: outbox size, drain rate, and alarm latency meanwhile.

1. Fill an outbox directly (``Outbox.append`` in batches of 5,000, durability ``full``)
   with ``--records`` flood-sensor telemetry records (default 1,440,000 = 500 devices
   polled once a minute for 48 h; 4 readings each) and report its size on disk.
2. Start Mosquitto, a subscriber (own process) that opens and verifies every sealed
   message, and the Forwarder in this process over an ``AsyncOutbox`` (the agent's
   uplink, default settings: batches of 200 records, 16 in flight, QoS 1, rows deleted on
   PUBACK; every batch sealed with a gateway certificate from a throw-away PKI made in the
   run's temp dir). Measure the time until the subscriber has every record verified:
   records/s and readings/s.
3. While it drains, append an alarm at 25 %, 50 % and 75 % of the backlog and measure
   append → received by the subscriber.

Baseline, in the same run: the latency the same alarms would have in a FIFO queue (no
priorities): the records still ahead of each alarm when it was appended, divided by the
measured drain rate.

Run: ``.venv/bin/python bench/bench_outage.py [--quick | --records N]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from _common import SubscriberProc, make_pki, mib, print_table

from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, alarm, telemetry
from agent.buffer.store import Outbox
from agent.config import Seal
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from agent.uplink.forwarder import Forwarder, UplinkSettings
from agent.uplink.topics import Topics
from pki.throwaway import ThrowawayPki
from tests.support.mosquitto import Mosquitto

DEVICES = 500
POLL_PERIOD = 60.0
FILL_BATCH = 5000
MAX_BYTES = 1024 * 1024 * 1024  # the outbox must not evict: we measure what 48 h costs
READINGS_PER_RECORD = 4
ALARM_AT = (0.25, 0.50, 0.75)
GATEWAY = "gw-bench"


def flood_record(i: int, start: float, rng: random.Random) -> NewRecord:
    dev = i % DEVICES
    level = round(rng.uniform(-5, 120), 1)
    values = {"water_level": level, "distance": int(3000 - level * 10),
              "rainfall": round(rng.uniform(0, 900), 1), "battery": round(rng.uniform(3.4, 4.1), 3)}
    # Polls are staggered over the minute, so timestamps carry milliseconds as real ones do.
    ts = start + (i // DEVICES) * POLL_PERIOD + dev * (POLL_PERIOD / DEVICES) + rng.random() / 10
    return telemetry(f"flood-{dev:03d}", "flood-sensor", ts, values)


@dataclass(frozen=True)
class Filled:
    seconds: float
    file_bytes: int  # database + WAL on disk
    wal_bytes: int
    used_bytes: int  # pages holding data, as the outbox counts against max_bytes


def fill(db: Path, n: int) -> Filled:
    rng = random.Random(1)
    start = time.time() - n / DEVICES * POLL_PERIOD
    box = Outbox(db, max_bytes=MAX_BYTES, durability="full")
    t0 = time.monotonic()
    try:
        for first in range(0, n, FILL_BATCH):
            batch = [flood_record(i, start, rng) for i in range(first, min(n, first + FILL_BATCH))]
            result = box.append(batch)
            if result.evicted or result.dropped:
                raise RuntimeError(f"outbox shed records while filling: {result}")
        elapsed = time.monotonic() - t0
        stats = box.stats()
        wal = db.with_name(db.name + "-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
    finally:
        box.close()
    if stats.records != n:
        raise RuntimeError(f"outbox holds {stats.records} records, expected {n}")
    return Filled(elapsed, stats.file_bytes, wal_bytes, stats.used_bytes)


@dataclass
class Drain:
    seconds: float = 0.0
    # per alarm: (fraction of backlog, records still ahead when appended, measured latency)
    alarms: list[tuple[float, int, float]] = field(default_factory=list)


def batch_sealer(pki: ThrowawayPki) -> BatchSealer:
    """What the gateway seals with, loaded as the agent loads its ``[seal]`` section."""
    creds = pki.devices[GATEWAY]
    loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=pki.ioc_recipient_cert),
                              GATEWAY)
    return BatchSealer(GATEWAY, loaded.sealer, loaded.chain_der)


def settings(port: int, sealer: BatchSealer) -> UplinkSettings:
    return UplinkSettings(host="127.0.0.1", port=port, client_id=GATEWAY,
                          topics=Topics("urbanedge/v1", "bench", GATEWAY), source=GATEWAY,
                          sealer=sealer)


async def drain(db: Path, port: int, sub: SubscriberProc, n: int, sealer: BatchSealer) -> Drain:
    out = Drain()
    box = await AsyncOutbox.open(db, max_bytes=MAX_BYTES, durability="full")
    injected: dict[str, tuple[float, float, int]] = {}
    deadline = time.monotonic() + 120 + n / 2000
    t0 = time.time()
    task = asyncio.create_task(Forwarder(box, settings(port, sealer)).run(), name="forwarder")
    try:
        while True:
            snap = sub.snapshot()
            done = snap.records - len(snap.alarms)
            for k, frac in enumerate(ALARM_AT):
                name = f"probe-{k}"
                if name not in injected and done >= frac * n:
                    t = time.time()
                    await box.append([alarm(name, "flood-sensor", t, "flood_danger", "raised",
                                            "danger", "water_level", 231.5, 200)])
                    injected[name] = (frac, t, n - done)
            if done >= n and len(snap.alarms) == len(ALARM_AT):
                out.seconds = (snap.last or time.time()) - t0
                break
            if time.monotonic() > deadline or task.done() or snap.rejected:
                raise RuntimeError(f"drain incomplete: {done} of {n} records received, "
                                   f"{snap.rejected} messages rejected")
            await asyncio.sleep(0.02)
        for name, (frac, t, ahead) in injected.items():
            out.alarms.append((frac, ahead, snap.alarms[name] - t))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await box.close()
    return out


def report(n: int, f: Filled, d: Drain) -> None:
    rate = n / d.seconds
    size = f.file_bytes
    print_table(
        f"48 h backlog: {n:,} flood-sensor records ({READINGS_PER_RECORD} readings each), "
        "sealed on the way out",
        ["figure", "value", "target"],
        [["fill time (append, batches of 5,000)", f"{f.seconds:.1f} s ({n / f.seconds:,.0f} records/s)", ""],
         ["outbox size on disk (db + WAL)", f"{mib(size)} = {size / 1e6:.1f} MB ({size / n:.0f} B/record)",
          "<= 300 MB" + (f" (scaled: {size / n * 1_440_000 / 1e6:.0f} MB for 1.44 M)" if n != 1_440_000 else "")],
         ["of which WAL / pages in use", f"{mib(f.wal_bytes)} / {mib(f.used_bytes)}", ""],
         ["drain time", f"{d.seconds:.1f} s", ""],
         ["drain rate", f"{rate:,.0f} records/s = {rate * READINGS_PER_RECORD:,.0f} readings/s",
          ">= 20,000 readings/s"]],
    )
    print_table(
        "Alarm appended while draining: latency append -> received",
        ["appended at", "records ahead (FIFO)", "measured (alarms first)", "baseline: FIFO"],
        [[f"{frac:.0%} drained", f"{ahead:,}", f"{lat * 1000:.0f} ms", f"{ahead / rate:.1f} s"]
         for frac, ahead, lat in d.alarms],
    )
    worst = max(lat for _, _, lat in d.alarms)
    print(f"\nworst alarm latency {worst * 1000:.0f} ms (target < 1 s: "
          f"{'met' if worst < 1 else 'not met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_440_000)
    parser.add_argument("--quick", action="store_true", help="100,000 records")
    args = parser.parse_args()
    n = 100_000 if args.quick else args.records
    with tempfile.TemporaryDirectory(prefix="bench-outage-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        pki = make_pki(work, [GATEWAY])
        db = work / "outbox.db"
        print(f"filling {n:,} records ...", flush=True)
        filled = fill(db, n)
        broker = Mosquitto(work)
        broker.start()
        stack.callback(broker.stop)
        sub = SubscriberProc(broker.port, pki)
        stack.callback(sub.stop)
        print("draining ...", flush=True)
        result = asyncio.run(drain(db, broker.port, sub, n, batch_sealer(pki)))
    report(n, filled, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
