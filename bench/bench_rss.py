"""Agent memory with 500 devices: RSS of ``urbanedge run`` after it has polled them all.

Real processes on 127.0.0.1: Mosquitto, 4 streetlight simulators x 125 units (one Modbus
TCP bus each), the agent (sealing every batch, with a throw-away PKI made in the run's temp
dir), and a subscriber that opens and verifies every message and notes which devices'
telemetry arrived.
Once telemetry of all 500 devices has been delivered, the agent keeps running for
``--settle`` seconds while its RSS is sampled; the table shows the last and the highest
sample and the kernel's peak (VmHWM).

Baseline, same script: a bare ``python -c`` that imports the same libraries (paho,
aiomqtt, pymodbus, pydantic, sqlite3, asyncio, and for sealing cryptography and cbor2) and
nothing of ours, and ``python -c pass``.

Run: ``.venv/bin/python bench/bench_rss.py [--quick] [--interval 60]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from _common import SubscriberProc, make_pki, mib, print_table, proc_rss_bytes, seal_toml, stop_process

from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import SimProc

SIMS, UNITS = 4, 125
GATEWAY = "gw-bench"
TARGET = 60 * 1024 * 1024
LIBS = ("import asyncio, sqlite3, paho.mqtt.client, aiomqtt, pymodbus.client, pydantic, cbor2, "
        "cryptography.x509, cryptography.hazmat.primitives.ciphers.aead")
_SHOW_RSS = ("; print(*[l.split()[1] for l in open('/proc/self/status')"
             " if l.startswith(('VmRSS', 'VmHWM'))])")


def write_config(path: Path, broker_port: int, sim_ports: list[int], interval: float,
                 seal: str) -> Path:
    text = f"""
log_level = "info"
[identity]
gateway_id = "{GATEWAY}"
site = "bench"
[broker]
host = "127.0.0.1"
port = {broker_port}
[buffer]
path = "outbox.db"
max_bytes = "300MB"
durability = "full"
{seal}"""
    for b, port in enumerate(sim_ports):
        text += f'\n[[buses]]\nname = "lan{b}"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
        for u in range(1, UNITS + 1):
            text += (f'[[buses.devices]]\nid = "sl-{b}-{u}"\nprofile = "streetlight"\n'
                     f"unit = {u}\ninterval = {interval}\n")
    path.write_text(text)
    return path


def bare_rss(code: str) -> tuple[int, int]:
    """(RSS, peak) in bytes of a fresh interpreter that ran ``code``."""
    out = subprocess.run([sys.executable, "-c", code + _SHOW_RSS], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split()
    return int(out[0]) * 1024, int(out[1]) * 1024


def agent_rss(interval: float, settle: float) -> tuple[int, int, int, float]:
    """(last RSS, highest sampled RSS, VmHWM, seconds until all devices were delivered)."""
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        pki = make_pki(work, [GATEWAY])
        broker = Mosquitto(work)
        broker.start()
        stack.callback(broker.stop)
        ports = [free_port() for _ in range(SIMS)]
        for i, port in enumerate(ports):
            sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}",
                                "--units", f"1-{UNITS}", "--seed", str(i + 1))
            stack.callback(sim.stop)
        sub = SubscriberProc(broker.port, pki, track_devices=True)
        stack.callback(sub.stop)
        cfg = write_config(work / "agent.toml", broker.port, ports, interval, seal_toml(pki, GATEWAY))
        log = open(work / "agent.log", "wb")  # noqa: SIM115 - handed to the child
        stack.callback(log.close)
        t0 = time.monotonic()
        agent = subprocess.Popen([sys.executable, "-m", "urbanedge", "run", "-c", str(cfg)],
                                 stdout=log, stderr=log)
        stack.callback(stop_process, agent, 20.0)
        sub.wait_for(lambda s: s.devices >= SIMS * UNITS, 60 + 2 * interval)
        all_in = time.monotonic() - t0
        highest = 0
        end = time.monotonic() + settle
        while time.monotonic() < end:
            highest = max(highest, proc_rss_bytes(agent.pid)[0])
            time.sleep(0.5)
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited: {(work / 'agent.log').read_text()[-2000:]}")
        if sub.snapshot().rejected:
            raise RuntimeError(f"subscriber rejected {sub.snapshot().rejected} sealed messages")
        rss, hwm = proc_rss_bytes(agent.pid)
        return rss, max(highest, rss), hwm, all_in


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="interval 5 s, settle 3 s")
    parser.add_argument("--interval", type=float, default=60.0, help="poll interval (s)")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds of sampling after every device was delivered")
    args = parser.parse_args()
    if args.quick:
        args.interval, args.settle = 5.0, 3.0
    rss, highest, hwm, all_in = agent_rss(args.interval, args.settle)
    libs, libs_peak = bare_rss(LIBS)
    bare, bare_peak = bare_rss("pass")
    print_table(
        f"RSS with {SIMS * UNITS} streetlights on {SIMS} Modbus TCP buses, interval "
        f"{args.interval:g}s (all delivered after {all_in:.1f}s, then sampled {args.settle:g}s)",
        ["process", "RSS", "highest sample", "peak (VmHWM)"],
        [["agent (urbanedge run)", mib(rss), mib(highest), mib(hwm)],
         ["baseline: python -c 'import <same libraries>'", mib(libs), "", mib(libs_peak)],
         ["python -c pass", mib(bare), "", mib(bare_peak)]],
    )
    print(f"\nagent above the bare imports: {mib(rss - libs)}; "
          f"target <= 60 MB: {mib(highest)} highest ({'met' if highest <= TARGET else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
