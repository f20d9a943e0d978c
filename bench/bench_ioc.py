"""IOC receiver throughput: verified readings/s for one ``urbanedge ioc receive`` and for two sharing a subscription.

1. A throw-away PKI (root, issuing CA, IOC recipient, G gateway certificates) in the run's
   temp dir, and N sealed batches pre-generated before anything is timed: 60 realistic
   streetlight readings each (``bench_seal.make_records``: 5 whole polls + 5 points),
   sealed by ``BatchSealer`` as the agents do, from G gateways in turn, per-gateway
   sequence numbers without gaps.
2. Per case, a fresh Mosquitto on a free loopback port; the gateways' certificate
   announcements published retained on ``<prefix>/<site>/<gw>/cert``; the receivers
   started (``--client-id``: a persistent MQTT v5 session; ``--group``: a shared
   subscription) and waited for until each has learnt every signer; then the N batches
   published at QoS 1 by one paho client in this process.
3. Throughput = readings / (time of the last verified record - time of the first), both
   seen in the receivers' ``--out`` JSON lines (one per stored record, flushed per
   message), polled every 5 ms. Each receiver's ``--stats`` counters are checked: every
   record new exactly once, nothing rejected. Receiver CPU per reading from ``/proc``.

Cases: one receiver on SQLite; one receiver on PostgreSQL; two receivers sharing the
subscription on one PostgreSQL store (a throw-away server from ``tests/support/postgres.py``;
if no PostgreSQL server binaries are installed, each of the two on its own SQLite file,
and the table says so).

Baseline, same messages, same broker setup: a plain paho subscriber (own process) that
only counts messages: no decryption, no verification, no store, no output.

Run: ``.venv/bin/python bench/bench_ioc.py [--quick] [--messages 2000] [--gateways 4]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import make_pki, pki_args, print_table, proc_cpu_seconds, stop_process
from bench_seal import make_records, point_names

from agent.config import Seal
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from agent.uplink.topics import Topics
from pki.throwaway import ThrowawayPki
from tests.support.mosquitto import Mosquitto

PREFIX, SITE = "urbanedge/v1", "bench"
READINGS_PER_MESSAGE = 60
POLL = 0.005
THIS = Path(__file__).resolve()


@dataclass(frozen=True)
class Workload:
    announcements: list[tuple[str, bytes]]  # (topic, certificate announcement)
    messages: list[tuple[str, bytes]]  # (topic, sealed batch), gateways interleaved
    records: int
    readings: int


def build_workload(pki: ThrowawayPki, gateways: Sequence[str], n_messages: int) -> Workload:
    names = point_names()
    rng = random.Random(7)
    now = time.time()
    sealers: dict[str, BatchSealer] = {}
    for gw in gateways:
        creds = pki.devices[gw]
        loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=pki.ioc_recipient_cert), gw)
        sealers[gw] = BatchSealer(gw, loaded.sealer, loaded.chain_der)
    announcements = [(Topics(PREFIX, SITE, gw).cert, sealers[gw].announcement(ts=now)) for gw in gateways]
    next_seq = dict.fromkeys(gateways, 1)
    messages: list[tuple[str, bytes]] = []
    records = 0
    for i in range(n_messages):
        gw = gateways[i % len(gateways)]
        k = i // len(gateways)
        # Batches of one minute's polls, in the recent past: as a gateway sends after an outage.
        start = now - 3600 + k * 60.0
        recs = make_records(READINGS_PER_MESSAGE, names, rng, first_seq=next_seq[gw], start=start)
        next_seq[gw] += len(recs)
        records += len(recs)
        messages.append((Topics(PREFIX, SITE, gw).telemetry, sealers[gw].encode(recs, sent_ts=start + 60)))
    return Workload(announcements, messages, records, n_messages * READINGS_PER_MESSAGE)


# -- publisher (this process) -----------------------------------------------------------


class Publisher:
    """One paho client (MQTT v5) publishing at QoS 1 as fast as the broker acknowledges."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("publisher did not connect")

    def publish(self, items: Sequence[tuple[str, bytes]], *, retain: bool = False) -> float:
        """Publish and wait for every PUBACK; returns the seconds it took."""
        t0 = time.monotonic()
        infos = [self.client.publish(topic, data, qos=1, retain=retain) for topic, data in items]
        for info in infos:
            info.wait_for_publish(60)
        return time.monotonic() - t0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- receivers (child processes) --------------------------------------------------------


class LineWatch:
    """Counts lines appended to a file; notes when the first one appeared."""

    def __init__(self, path: Path) -> None:
        path.touch()
        self.f = path.open("rb")
        self.lines = 0
        self.first: float | None = None

    def poll(self, now: float) -> int:
        chunk = self.f.read()
        if chunk:
            self.lines += chunk.count(b"\n")
            if self.first is None:
                self.first = now
        return self.lines

    def close(self) -> None:
        self.f.close()


@dataclass
class ReceiverProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stats: Path
    out: LineWatch

    def learnt(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("event=ioc_signer_learnt")
        except OSError:
            return 0

    def counters(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.stats.read_text())
        return doc


def start_receiver(work: Path, name: str, port: int, pki: ThrowawayPki, store: str,
                   stack: ExitStack) -> ReceiverProc:
    log, stats, out = work / f"{name}.log", work / f"{name}.stats.json", work / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "urbanedge", "ioc", "receive", "--broker", f"127.0.0.1:{port}",
           *pki_args(pki), "--store", store, "--out", str(out), "--client-id", f"bench-{name}",
           "--group", "bench", "--duration", "600", "--stats", str(stats)]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=f, cwd=work)
    stack.callback(stop_process, proc, 15.0)
    rx = ReceiverProc(name, proc, log, stats, LineWatch(out))
    stack.callback(rx.out.close)
    return rx


def wait_until(pred: Any, timeout: float, what: str, procs: Sequence[subprocess.Popen[Any]] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: a process exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class CaseResult:
    label: str
    store: str
    seconds: float  # first to last verified record
    readings: int
    publish_seconds: float
    cpu_us_per_reading: float  # receivers' CPU (all of them) per reading
    split: str  # records stored by each receiver

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


def _case(stack: ExitStack, case: Path, load: Workload) -> tuple[Path, Mosquitto, Publisher]:
    """A fresh broker for one case, with the retained announcements already on it."""
    case.mkdir()
    broker = Mosquitto(case)
    broker.start()
    stack.callback(broker.stop)
    pub = Publisher(broker.port)
    stack.callback(pub.close)
    pub.publish(load.announcements, retain=True)
    return case, broker, pub


def run_receivers(label: str, store_label: str, stores: Sequence[str], work: Path, pki: ThrowawayPki,
                  load: Workload, n_gateways: int) -> CaseResult:
    with ExitStack() as stack:
        case, broker, pub = _case(stack, work / label.replace(" ", "-"), load)
        rxs = [start_receiver(case, f"rx{i + 1}", broker.port, pki, store, stack) for i, store in enumerate(stores)]
        # Each receiver subscribes to the cert and data filters in one SUBSCRIBE: once the
        # retained announcements have been learnt, its data subscription is in place.
        wait_until(lambda: all(r.learnt() >= n_gateways for r in rxs), 60, "receivers to learn every signer",
                   [r.proc for r in rxs])
        cpu0 = sum(proc_cpu_seconds(r.proc.pid) for r in rxs)
        done: dict[str, float] = {}
        publish_seconds: list[float] = []
        sender = threading.Thread(target=lambda: publish_seconds.append(pub.publish(load.messages)),
                                  name="publisher", daemon=True)
        sender.start()
        deadline = time.monotonic() + 60 + len(load.messages) / 50
        while True:
            now = time.time()
            total = sum(r.out.poll(now) for r in rxs)
            if total >= load.records:
                done["last"] = now
                break
            if time.monotonic() > deadline or any(r.proc.poll() is not None for r in rxs):
                raise RuntimeError(f"{label}: {total} of {load.records} records verified; logs in {case}")
            time.sleep(POLL)
        cpu1 = sum(proc_cpu_seconds(r.proc.pid) for r in rxs)
        sender.join(60)
        for r in rxs:
            stop_process(r.proc, 15.0)
        counters = [r.counters() for r in rxs]
        new = sum(int(c["records_new"]) for c in counters)
        rejected = {k: v for c in counters for k, v in c["rejected"].items() if v}
        if new != load.records or rejected:
            raise RuntimeError(f"{label}: stored {new} of {load.records} records, rejected {rejected}")
        first = min(r.out.first for r in rxs if r.out.first is not None)
        return CaseResult(label, store_label, done["last"] - first, load.readings,
                          publish_seconds[0] if publish_seconds else float("nan"),
                          (cpu1 - cpu0) * 1e6 / load.readings,
                          " / ".join(f"{int(c['records_new']):,}" for c in counters))


def run_baseline(work: Path, load: Workload) -> CaseResult:
    with ExitStack() as stack:
        _, broker, pub = _case(stack, work / "baseline", load)
        proc = subprocess.Popen([sys.executable, str(THIS), "count-sub", "--port", str(broker.port),
                                 "--expect", str(len(load.messages))], stdout=subprocess.PIPE, text=True)
        stack.callback(stop_process, proc, 10.0)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("baseline subscriber did not start")
        cpu0 = proc_cpu_seconds(proc.pid)
        seconds = pub.publish(load.messages)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("baseline subscriber ended without a result")
        doc = json.loads(line)
        cpu1 = float(doc["cpu"])
        return CaseResult("baseline: plain paho subscriber, counts messages", "none",
                          doc["last"] - doc["first"], load.readings, seconds,
                          (cpu1 - cpu0) * 1e6 / load.readings, f"{doc['messages']:,} messages")


def _count_sub_main(args: argparse.Namespace) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    state: dict[str, Any] = {"n": 0, "first": None, "last": None}
    finished = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        with lock:
            state["n"] += 1
            state["first"] = state["first"] or now
            state["last"] = now
            if state["n"] >= args.expect:
                finished.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-count-sub", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda cl, *a: cl.subscribe(f"{PREFIX}/+/+/telemetry", qos=1)
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            return 1
        print("ready", flush=True)
        if not finished.wait(args.timeout):
            return 1
        with lock:
            print(json.dumps({"messages": state["n"], "first": state["first"], "last": state["last"],
                              "cpu": time.process_time()}), flush=True)
        return 0
    finally:
        client.disconnect()
        client.loop_stop()


@contextlib.contextmanager
def postgres_dsns(n: int) -> Iterator[list[str] | None]:
    """``n`` fresh databases on one throw-away PostgreSQL server, or None if none can be started."""
    try:
        from tests.support.postgres import PostgresNotFound, postgres_server
    except ImportError as exc:
        print(f"PostgreSQL not available ({exc}): using SQLite", file=sys.stderr)
        yield None
        return
    try:
        with postgres_server() as server:
            yield [server.create_database(f"ioc_bench_{i}") for i in range(n)]
    except PostgresNotFound as exc:
        print(f"PostgreSQL not available ({exc}): using SQLite", file=sys.stderr)
        yield None


def report(results: list[CaseResult], load: Workload, n_gateways: int, pg_fallback: bool) -> None:
    print_table(
        f"IOC receiver: {len(load.messages):,} sealed messages x {READINGS_PER_MESSAGE} readings "
        f"({load.records:,} records, {load.readings:,} readings) from {n_gateways} gateways, Mosquitto, QoS 1",
        ["run", "store", "verified readings/s", "first -> last record", "receivers' CPU us/reading",
         "records per receiver", "publisher done after"],
        [[r.label, r.store, f"{r.rate:,.0f}", f"{r.seconds:.2f} s", f"{r.cpu_us_per_reading:.1f}", r.split,
          f"{r.publish_seconds:.2f} s"] for r in results],
    )
    one = [r for r in results if r.label.startswith("1 receiver")]
    two = [r for r in results if r.label.startswith("2 receivers")]
    base = [r for r in results if r.label.startswith("baseline")]
    if one and two:
        ref = one[-1]
        print(f"\n2 receivers vs 1 on the same kind of store ({ref.store}): {two[0].rate / ref.rate:.2f}x")
    if one and base:
        print(f"1 receiver vs the plain counting subscriber: {one[0].rate / base[0].rate:.2f}x its rate")
    if pg_fallback:
        print("note: PostgreSQL was not available; the two receivers each used their own SQLite file")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("count-sub", help="(internal) the baseline subscriber")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--expect", type=int, required=True)
    c.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="400 messages")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--gateways", type=int, default=4)
    args = parser.parse_args()
    if args.cmd == "count-sub":
        return _count_sub_main(args)
    n = 400 if args.quick else args.messages
    gateways = [f"gw-{i + 1:02d}" for i in range(args.gateways)]
    with tempfile.TemporaryDirectory(prefix="bench-ioc-") as tmp:
        work = Path(tmp)
        pki = make_pki(work, gateways)
        t0 = time.process_time()
        load = build_workload(pki, gateways, n)
        print(f"sealed {n:,} messages in {time.process_time() - t0:.1f} s CPU", flush=True)
        results = [run_baseline(work, load)]
        results.append(run_receivers("1 receiver", "SQLite", [f"sqlite:{work / 'one.db'}"], work, pki, load,
                                     len(gateways)))
        with postgres_dsns(2) as dsns:
            fallback = dsns is None
            if dsns is not None:
                results.append(run_receivers("1 receiver (PostgreSQL)", "PostgreSQL", [dsns[0]], work, pki, load,
                                             len(gateways)))
                two = [dsns[1], dsns[1]]
                label = "PostgreSQL (one, shared)"
            else:
                two = [f"sqlite:{work / 'two-a.db'}", f"sqlite:{work / 'two-b.db'}"]
                label = "SQLite (one file each)"
            results.append(run_receivers("2 receivers, shared subscription", label, two, work, pki, load,
                                         len(gateways)))
    report(results, load, len(gateways), fallback)
    return 0


if __name__ == "__main__":
    sys.exit(main())
