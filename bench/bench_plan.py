"""Modbus requests and RTU bus time per poll cycle: the read planner vs one request per point.

1. On paper, for every shipped Modbus profile: requests per cycle and bus time at
   9,600 baud, 11 bits per character (1 start + 8 data + parity or second stop + 1 stop:
   Modbus RTU's 8E1, or 8N2 when there is no parity), for
   * planned  — ``plan_reads`` (sum of ``rtu_bus_chars``),
   * naive    — one request per point (the baseline: a per-key gateway),
   * minimum  — the fewest requests the limits allow, carrying only the points' own
     registers/bits (no gap registers): a lower bound no plan can beat.
2. Measured: real cycles over a 9,600-baud line made by ``throttled_serial.py`` between
   two socat pty pairs, simulator (``Simulator.serve_rtu``) on one side and
   ``ModbusBus.rtu`` + ``read_device`` on the other; median cycle time vs theory.

Run: ``.venv/bin/python bench/bench_plan.py [--quick] [--cycles N] [--baud B]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from _common import naive_plan, print_table, stop_process

from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import (
    GAP_REGISTER_CHARS,
    REQUEST_OVERHEAD_CHARS,
    ReadBlock,
    plan_reads,
    rtu_bus_chars,
)
from drivers.profiles import Profile, builtin_profiles
from drivers.sim.server import Simulator
from tests.support.socat import PtyPair, open_pty_pair

BITS_PER_CHAR = 11  # 8N2 (= 8E1 in time): start + 8 data + 2 stop
# A pty rejects parity settings (EINVAL), so the measured line is 8N2.
PARITY, STOPBITS = "N", 2
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Cost:
    requests: int
    chars: int

    def seconds(self, baud: int) -> float:
        return self.chars * BITS_PER_CHAR / baud


def plan_cost(blocks: Sequence[ReadBlock]) -> Cost:
    return Cost(len(blocks), sum(rtu_bus_chars(b) for b in blocks))


def minimum_cost(profile: Profile) -> Cost:
    """Fewest requests the size limits allow (gaps bridged for free), each carrying only
    the addresses the points themselves occupy."""
    fewest = plan_reads(profile.points, max_gap_registers=1 << 16, max_gap_bits=1 << 16)
    chars = REQUEST_OVERHEAD_CHARS * len(fewest)
    for table in {b.table for b in fewest}:
        own = {a for p in profile.points if p.table == table for a in range(p.address, p.end)}
        is_bit = table in ("coil", "discrete_input")
        chars += (len(own) + 7) // 8 if is_bit else GAP_REGISTER_CHARS * len(own)
    return Cost(len(fewest), chars)


def modbus_profiles() -> list[Profile]:
    return [p for p in builtin_profiles().values() if p.protocol == "modbus"]


def paper_table(baud: int) -> None:
    rows = []
    for prof in modbus_profiles():
        planned = plan_cost(plan_reads(prof.points))
        naive = plan_cost(naive_plan(prof.points))
        least = minimum_cost(prof)

        def ms(c: Cost) -> str:
            return f"{c.seconds(baud) * 1000:.1f}"

        rows.append([
            prof.name, len(prof.points),
            f"{planned.requests} / {naive.requests} / {least.requests}",
            f"{planned.chars} / {naive.chars} / {least.chars}",
            f"{ms(planned)} / {ms(naive)} / {ms(least)}",
            f"{naive.chars / planned.chars:.2f}x",
            f"{(planned.chars / least.chars - 1) * 100:+.1f} %",
        ])
    print_table(
        f"Per poll cycle, on paper ({baud} baud, {BITS_PER_CHAR} bits/char); "
        "planned / naive (1 request per point) / theoretical minimum",
        ["profile", "points", "requests", "bus chars", "bus ms", "naive÷planned", "planned vs min"],
        rows,
    )


# -- measured ---------------------------------------------------------------------------


async def time_cycles(bus: ModbusBus, blocks: Sequence[ReadBlock], cycles: int) -> list[float]:
    await bus.read_device(1, blocks)  # warm-up: connection, first-request paths
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        values, failed = await bus.read_device(1, blocks)
        times.append(time.perf_counter() - t0)
        if failed or not values:
            raise RuntimeError(f"cycle failed: values={len(values)} failed={failed}")
    return times


async def measure(pairs: tuple[PtyPair, PtyPair], baud: int, cycles: int) -> None:
    dev, master = pairs
    bus = ModbusBus.rtu(str(master.b), baudrate=baud, parity=PARITY, stopbits=STOPBITS, bytesize=8,
                        timeout=3.0)
    rows = []
    try:
        for prof in modbus_profiles():
            sim = Simulator(prof, units=[1], seed=1)
            await sim.serve_rtu(str(dev.a), baudrate=baud, parity=PARITY, stopbits=STOPBITS)
            try:
                for label, blocks in (("planned", plan_reads(prof.points)),
                                      ("naive", naive_plan(prof.points))):
                    theory = plan_cost(blocks).seconds(baud)
                    times = await time_cycles(bus, blocks, cycles)
                    med = statistics.median(times)
                    rows.append([prof.name, label, len(blocks), f"{theory * 1000:.1f}",
                                 f"{med * 1000:.1f}", f"{min(times) * 1000:.1f}",
                                 f"{max(times) * 1000:.1f}", f"{(med / theory - 1) * 100:+.1f} %"])
            finally:
                await sim.stop()
    finally:
        await bus.close()
    print_table(
        f"Measured poll cycle over a throttled {baud}-baud line ({cycles} cycles, median)",
        ["profile", "plan", "requests", "theory ms", "median ms", "min ms", "max ms", "vs theory"],
        rows,
    )


def run_measured(baud: int, cycles: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp, ExitStack() as stack:
        dev = open_pty_pair(Path(tmp), "dev")
        stack.callback(dev.close)
        master = open_pty_pair(Path(tmp), "master")
        stack.callback(master.close)
        relay = subprocess.Popen(
            [sys.executable, str(HERE / "throttled_serial.py"), str(dev.b), str(master.a),
             "--baud", str(baud), "--bits-per-char", str(BITS_PER_CHAR)],
            stdout=subprocess.PIPE, text=True,
        )
        stack.callback(stop_process, relay)
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "relay ready":
            raise RuntimeError("throttled relay did not start")
        asyncio.run(measure((dev, master), baud, cycles))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 cycles per plan")
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--baud", type=int, default=9600)
    args = parser.parse_args()
    cycles = 3 if args.quick else args.cycles
    paper_table(args.baud)
    run_measured(args.baud, cycles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
