"""Shared pieces of the benchmark scripts: process figures from /proc, a subscriber that
runs in its own process, a naive read plan, and table printing.

Also runnable, for the pieces that must be separate processes::

    python bench/_common.py subscribe --port P        # counting subscriber (JSON lines)
    python bench/_common.py run-agent --naive-plan -c agent.toml   # agent, one request per point

The subscriber counts records and readings (a reading is one value of one point: the sum
of ``len(values)`` over telemetry records) and prints a JSON status line every 100 ms.
It lives in its own process so its JSON decoding is not charged to the process measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # tests.support (Mosquitto, simulators) is not installed; it lives in the source tree.
    sys.path.insert(0, str(ROOT))

from drivers.modbus.plan import ReadBlock  # noqa: E402
from drivers.profiles import Point  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")
STATUS_PERIOD = 0.1


def naive_plan(points: Iterable[Point]) -> tuple[ReadBlock, ...]:
    """One request per point: what a per-key gateway (the baseline) sends."""
    return tuple(ReadBlock(p.table, p.address, p.width, (p,)) for p in points)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces; fields after it are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_bytes(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in bytes."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(rest.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A GitHub-style table, so the output can be pasted into bench/README.md."""
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


# -- subscriber (parent side) ----------------------------------------------------------


@dataclass
class SubStatus:
    records: int = 0
    readings: int = 0
    messages: int = 0
    first: float | None = None
    last: float | None = None
    devices: int = 0  # distinct device ids seen in telemetry (with --track-devices)
    # device_id of each alarm record → wall time it was received
    alarms: dict[str, float] = field(default_factory=dict)


class SubscriberProc:
    """The counting subscriber as a child process; ``status`` is its latest report."""

    def __init__(self, port: int, host: str = "127.0.0.1", prefix: str = "urbanedge/v1",
                 track_devices: bool = False) -> None:
        cmd = [sys.executable, str(Path(__file__)), "subscribe", "--host", host,
               "--port", str(port), "--prefix", prefix]
        if track_devices:
            cmd.append("--track-devices")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.status = SubStatus()
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"subscriber did not start: {line!r}")
        self._reader = threading.Thread(target=self._read, name="sub-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            doc = json.loads(line)
            with self._lock:
                self.status = SubStatus(**doc)

    def snapshot(self) -> SubStatus:
        with self._lock:
            return self.status

    def wait_for(self, pred: Callable[[SubStatus], bool], timeout: float) -> SubStatus:
        """Wait until ``pred`` holds for a report; raise TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if pred(snap):
                return snap
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError(f"subscriber condition not met after {timeout}s: {snap}")
            time.sleep(STATUS_PERIOD / 2)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only this process, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- subscriber (child side) ----------------------------------------------------------


class _Counter:
    def __init__(self, track_devices: bool) -> None:
        self.lock = threading.Lock()
        self.s = SubStatus()
        self.track = track_devices
        self.device_ids: set[str] = set()

    def on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        channel = msg.topic.rsplit("/", 1)[-1]
        if channel not in ("telemetry", "alarm", "event"):
            return
        records = json.loads(msg.payload)["records"]
        readings = sum(len(r.get("values", ())) for r in records if r.get("type") == "telemetry")
        with self.lock:
            s = self.s
            s.messages += 1
            s.records += len(records)
            s.readings += readings
            s.first = now if s.first is None else s.first
            s.last = now
            for r in records:
                if r.get("type") == "alarm":
                    s.alarms[str(r["device_id"])] = now
                elif self.track and r.get("type") == "telemetry":
                    self.device_ids.add(str(r["device_id"]))
            s.devices = len(self.device_ids)

    def report(self) -> str:
        with self.lock:
            return json.dumps(self.s.__dict__)


def _subscribe_main(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counter = _Counter(args.track_devices)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    subscribed = threading.Event()
    client.on_message = counter.on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda cl, *a: cl.subscribe(f"{args.prefix}/#", qos=1)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            print("subscribe failed", flush=True)
            return 1
        print("ready", flush=True)
        while True:
            time.sleep(STATUS_PERIOD)
            print(counter.report(), flush=True)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        client.loop_stop()
        client.disconnect()


def _run_agent_main(args: argparse.Namespace) -> int:
    if args.naive_plan:
        import agent.poll.readers as readers

        # The baseline agent differs in exactly one thing: every point is its own request.
        setattr(readers, "plan_reads", naive_plan)  # noqa: B010 - a deliberate monkeypatch
    from urbanedge.cli import main

    return main(["run", "-c", str(args.config)])


def main() -> int:
    import signal

    # SIGTERM → KeyboardInterrupt so the subscriber's finally runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--prefix", default="urbanedge/v1")
    s.add_argument("--track-devices", action="store_true")
    s.set_defaults(func=_subscribe_main)
    a = sub.add_parser("run-agent")
    a.add_argument("-c", "--config", type=Path, required=True)
    a.add_argument("--naive-plan", action="store_true")
    a.set_defaults(func=_run_agent_main)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
