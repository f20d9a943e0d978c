"""End-to-end throughput and agent CPU per reading: simulators → agent → Mosquitto → subscriber.

Every component is a real process on 127.0.0.1: S streetlight simulators
(``urbanedge sim streetlight --tcp ... --units 1-U``, one Modbus TCP bus each), the agent
(``urbanedge run``; outbox ``durability = "full"``; every batch sealed: COSE_Sign1 by the
gateway inside COSE_Encrypt to the IOC, with a throw-away PKI made in the run's temp dir),
Mosquitto (QoS 1) and a subscriber that opens and verifies every message (``ioc.verify``)
and counts the verified readings (one value of one point: the sum of ``len(values)``).

After a warm-up, the script samples the subscriber's count and the agent's CPU time
(``/proc/<pid>/stat``, all threads) over a window and prints readings/s delivered and
agent CPU µs per delivered reading, the agent's RSS, the outbox backlog growth (polled
faster than sent?) and the CPU of the other processes (where the machine's time went).

Baselines, run in the same script with the same setup (``--baseline``):
* ``naive`` (default): the agent with a one-request-per-point read plan (what a per-key
  gateway does; 12 requests per streetlight instead of 3). Same agent code otherwise,
  started through ``_common.py run-agent --naive-plan``.
* ``unbatched``: ``batch_max_records = 1``, one MQTT message per record.
* ``none``: skip the baseline.

Run: ``.venv/bin/python bench/bench_e2e.py [--quick] [--sims 4 --units 125 --interval 0.1]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from _common import (
    ROOT,
    SubscriberProc,
    make_pki,
    mib,
    print_table,
    proc_cpu_seconds,
    proc_rss_bytes,
    seal_toml,
    stop_process,
)

from agent.buffer.store import Outbox
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import SimProc

COMMON = ROOT / "bench" / "_common.py"
GATEWAY = "gw-bench"


@dataclass(frozen=True)
class Options:
    sims: int
    units: int
    interval: float
    warmup: float
    window: float
    inflight: int
    batch_max_records: int


@dataclass(frozen=True)
class Figures:
    label: str
    readings_per_s: float
    records_per_s: float
    messages_per_s: float  # sealed MQTT messages; each carries one envelope (~250 B, ~150 us)
    agent_us_per_reading: float
    agent_cpu_share: float
    agent_rss: int
    backlog_per_s: float
    others_cpu: dict[str, float]


def write_config(path: Path, broker_port: int, sim_ports: list[int], o: Options,
                 batch_max_records: int, seal: str) -> Path:
    text = f"""
log_level = "warning"
[identity]
gateway_id = "{GATEWAY}"
site = "bench"
[broker]
host = "127.0.0.1"
port = {broker_port}
max_inflight = {o.inflight}
batch_max_records = {batch_max_records}
batch_max_bytes = 256000
[buffer]
path = "outbox.db"
max_bytes = "512MB"
durability = "full"
{seal}"""
    for b, port in enumerate(sim_ports):
        text += f'\n[[buses]]\nname = "lan{b}"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        text += "timeout = 2.0\n"
        for u in range(1, o.units + 1):
            text += (f'[[buses.devices]]\nid = "sl-{b}-{u}"\nprofile = "streetlight"\n'
                     f"unit = {u}\ninterval = {o.interval}\n")
    path.write_text(text)
    return path


def outbox_records(db: Path) -> int:
    box = Outbox.open_readonly(db)
    if box is None:
        return 0
    try:
        return box.stats().records
    finally:
        box.close()


def cpu_of(procs: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(proc_cpu_seconds(p) for p in pids) for name, pids in procs.items()}


def run_case(label: str, o: Options, *, naive: bool, batch_max_records: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        pki = make_pki(work, [GATEWAY])
        broker = Mosquitto(work)
        broker.start()
        stack.callback(broker.stop)
        ports = [free_port() for _ in range(o.sims)]
        sims = []
        for i, port in enumerate(ports):
            sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}",
                                "--units", f"1-{o.units}", "--seed", str(i + 1))
            stack.callback(sim.stop)
            sims.append(sim)
        sub = SubscriberProc(broker.port, pki)
        stack.callback(sub.stop)
        cfg = write_config(work / "agent.toml", broker.port, ports, o, batch_max_records,
                           seal_toml(pki, GATEWAY))
        log = open(work / "agent.log", "wb")  # noqa: SIM115 - handed to the child
        stack.callback(log.close)
        cmd = [sys.executable, str(COMMON), "run-agent", "-c", str(cfg)]
        agent = subprocess.Popen([*cmd, "--naive-plan"] if naive else cmd, stdout=log, stderr=log)
        stack.callback(stop_process, agent, 20.0)
        sub.wait_for(lambda s: s.readings > 0, 30)
        time.sleep(o.warmup)
        others = {"simulators": [s.proc.pid for s in sims], "mosquitto": [broker.proc.pid]
                  if broker.proc else [], "subscriber": [sub.proc.pid]}
        s0, c0, b0, o0, t0 = (sub.snapshot(), proc_cpu_seconds(agent.pid),
                              outbox_records(work / "outbox.db"), cpu_of(others), time.monotonic())
        time.sleep(o.window)
        s1, c1, b1, o1, t1 = (sub.snapshot(), proc_cpu_seconds(agent.pid),
                              outbox_records(work / "outbox.db"), cpu_of(others), time.monotonic())
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited: {(work / 'agent.log').read_text()[-2000:]}")
        if s1.rejected:
            raise RuntimeError(f"subscriber rejected {s1.rejected} sealed messages")
        rss, _peak = proc_rss_bytes(agent.pid)
        dt, readings = t1 - t0, s1.readings - s0.readings
        return Figures(
            label, readings / dt, (s1.records - s0.records) / dt, (s1.messages - s0.messages) / dt,
            (c1 - c0) * 1e6 / max(1, readings), (c1 - c0) / dt, rss, (b1 - b0) / dt,
            {k: (o1[k] - o0[k]) / dt for k in o0},
        )


def report(figs: list[Figures], o: Options) -> None:
    print_table(
        f"End to end: {o.sims} simulators x {o.units} streetlights (12 points), interval "
        f"{o.interval}s, window {o.window}s, durability=full, sealing on",
        ["run", "readings/s delivered", "records/s", "readings/message", "agent CPU us/reading",
         "agent CPU (cores)",
         "agent RSS", "outbox backlog growth rec/s", "other CPU (cores)"],
        [[f.label, f"{f.readings_per_s:,.0f}", f"{f.records_per_s:,.0f}",
          f"{f.readings_per_s / max(f.messages_per_s, 1e-9):.1f}",
          f"{f.agent_us_per_reading:.1f}", f"{f.agent_cpu_share:.2f}", mib(f.agent_rss),
          f"{f.backlog_per_s:+,.0f}",
          ", ".join(f"{k} {v:.2f}" for k, v in f.others_cpu.items())] for f in figs],
    )
    main = figs[0]
    print(f"\ntarget >= 20,000 readings/s: {main.readings_per_s:,.0f} "
          f"({main.readings_per_s / 20000 * 100:.0f} % of target)")
    print(f"target <= 50 us CPU/reading: {main.agent_us_per_reading:.1f} us "
          f"({'met' if main.agent_us_per_reading <= 50 else 'not met'})")
    for f in figs[1:]:
        print(f"{f.label}: {f.agent_us_per_reading / main.agent_us_per_reading:.2f}x the CPU per "
              f"reading, {f.readings_per_s / main.readings_per_s:.2f}x the throughput of the agent")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 sims x 50 units, short window")
    parser.add_argument("--sims", type=int, default=4)
    parser.add_argument("--units", type=int, default=125)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--warmup", type=float, default=12.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--batch-max-records", type=int, default=200)
    parser.add_argument("--baseline", choices=("naive", "unbatched", "none"), default="naive")
    args = parser.parse_args()
    if args.quick:
        args.sims, args.units, args.warmup, args.window = 2, 50, 4.0, 4.0
    o = Options(args.sims, args.units, args.interval, args.warmup, args.window, args.inflight,
                args.batch_max_records)
    figs = [run_case("agent (planned reads, batched)", o, naive=False,
                     batch_max_records=o.batch_max_records)]
    if args.baseline == "naive":
        figs.append(run_case("baseline: one request per point", o, naive=True,
                             batch_max_records=o.batch_max_records))
    elif args.baseline == "unbatched":
        figs.append(run_case("baseline: one message per record", o, naive=False,
                             batch_max_records=1))
    report(figs, o)
    return 0


if __name__ == "__main__":
    sys.exit(main())
