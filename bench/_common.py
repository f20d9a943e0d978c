"""Shared pieces of the benchmark scripts: process figures from /proc, a subscriber that
runs in its own process, a naive read plan, and table printing.

Also runnable, for the pieces that must be separate processes::

    python bench/_common.py subscribe --port P --pki DIR   # counting subscriber (JSON lines)
    python bench/_common.py run-agent --naive-plan -c agent.toml   # agent, one request per point

Every uplink message is sealed (COSE_Sign1 in COSE_Encrypt), so the subscriber is an IOC in
miniature: it learns each gateway's certificate from the retained ``cert`` channel, opens
every message with ``ioc.verify.Opener`` (decrypt, verify the chain to the throw-away root
in ``--pki DIR``, verify the signature, decode) and counts only verified records and
readings (a reading is one value of one point: the sum of ``len(values)`` over telemetry
records). It prints a JSON status line every 100 ms and lives in its own process, so its
crypto is not charged to the process measured.
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
from ioc.verify import Opener, Rejected  # noqa: E402
from pki.throwaway import ThrowawayPki, build_throwaway_pki  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")
STATUS_PERIOD = 0.1


def naive_plan(points: Iterable[Point]) -> tuple[ReadBlock, ...]:
    """One request per point: what a per-key gateway (the baseline) sends."""
    return tuple(ReadBlock(p.table, p.address, p.width, (p,)) for p in points)


def make_pki(work: Path, gateway_ids: Sequence[str]) -> ThrowawayPki:
    """A throw-away provincial PKI under ``work/pki`` with one certificate per gateway."""
    return build_throwaway_pki(work / "pki", list(gateway_ids), province="Bench")


def seal_toml(pki: ThrowawayPki, gateway_id: str) -> str:
    """The ``[seal]`` section of an agent config for ``gateway_id`` (issued by ``make_pki``)."""
    creds = pki.devices[gateway_id]
    return (f'\n[seal]\nkey = "{creds.key}"\ncert = "{creds.chain}"\n'
            f'recipient = "{pki.ioc_recipient_cert}"\n')


def pki_args(pki: ThrowawayPki) -> list[str]:
    """Trust arguments for an IOC-side process (``_common.py subscribe``, ``urbanedge ioc``)."""
    return ["--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key),
            "--cert", str(pki.ioc_recipient_cert), "--crl", str(pki.crl)]


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
    rejected: int = 0  # messages that did not open and verify (should stay 0)
    announcements: int = 0  # certificate announcements verified
    # device_id of each alarm record → wall time it was received
    alarms: dict[str, float] = field(default_factory=dict)


class SubscriberProc:
    """The counting subscriber as a child process; ``status`` is its latest report."""

    def __init__(self, port: int, pki: ThrowawayPki, host: str = "127.0.0.1",
                 prefix: str = "urbanedge/v1", track_devices: bool = False) -> None:
        cmd = [sys.executable, str(Path(__file__)), "subscribe", "--host", host,
               "--port", str(port), "--prefix", prefix, *pki_args(pki)]
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
    """Opens every message; counts what verified. Runs on paho's network thread only."""

    def __init__(self, opener: Opener, track_devices: bool) -> None:
        self.lock = threading.Lock()
        self.s = SubStatus()
        self.track = track_devices
        self.device_ids: set[str] = set()
        self.opener = opener
        # Batches whose signer's announcement has not arrived yet; retried after each one.
        self.parked: list[bytes] = []

    def on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        channel = msg.topic.rsplit("/", 1)[-1]
        payload = bytes(msg.payload)
        if channel == "cert":
            self._announcement(payload)
        elif channel in ("telemetry", "alarm", "event"):
            self._batch(payload, time.time())

    def _announcement(self, payload: bytes) -> None:
        try:
            self.opener.learn_announcement(payload)
        except Rejected as exc:
            self._rejected(exc)
            return
        with self.lock:
            self.s.announcements += 1
        waiting, self.parked = self.parked, []
        for data in waiting:
            self._batch(data, time.time())

    def _rejected(self, exc: Rejected) -> None:
        print(f"rejected reason={exc.reason} problem={exc.problem!r}", file=sys.stderr, flush=True)
        with self.lock:
            self.s.rejected += 1

    def _batch(self, payload: bytes, now: float) -> None:
        try:
            batch = self.opener.open(payload)
        except Rejected as exc:
            if exc.reason == "unknown_certificate" and len(self.parked) < 10_000:
                self.parked.append(payload)
            else:
                self._rejected(exc)
            return
        records = batch.records
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


def _opener(args: argparse.Namespace) -> Opener:
    from cryptography.hazmat.primitives.asymmetric import ec

    from pki.keys import load_cert, load_crls, load_private_key

    key = load_private_key(args.key)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{args.key}: the IOC recipient key must be P-256")
    crls = [c for path in args.crl for c in load_crls(path)]
    return Opener(key, load_cert(args.cert), load_cert(args.root), crls=crls)


def _subscribe_main(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    counter = _Counter(_opener(args), args.track_devices)
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
    s.add_argument("--root", type=Path, required=True, help="the throw-away root certificate")
    s.add_argument("--key", type=Path, required=True, help="the IOC recipient key")
    s.add_argument("--cert", type=Path, required=True, help="the IOC recipient certificate")
    s.add_argument("--crl", type=Path, action="append", default=[])
    s.set_defaults(func=_subscribe_main)
    a = sub.add_parser("run-agent")
    a.add_argument("-c", "--config", type=Path, required=True)
    a.add_argument("--naive-plan", action="store_true")
    a.set_defaults(func=_run_agent_main)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
