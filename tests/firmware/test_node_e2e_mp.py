"""The node agent end to end (firmware/main.py, ue/node.py) under the real
``micropython -X heapsize=100k``:

pymodbus flood-sensor simulator --socat pty--> node (key made on the node, certificate issued
from its own CSR by the provincial issuing CA) --MQTT over TLS, client certificate--> a real
Mosquitto that requires client certificates --> the IOC receiver (``urbanedge ioc receive``),
which verifies every batch with only the provincial root and stores it.

Then the failures the node must survive: SIGKILL at random moments (with a torn write left at
the end of its flash log), and a broker outage; nothing the flash log accepted is lost.
"""

from __future__ import annotations

import json
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.throwaway import ThrowawayPki
from tests.provisioning.node_on_pty import provision_over, start_node
from tests.support import testpki
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env, run_mp
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port, wait_port
from tests.support.process import stop_process
from tests.support.procs import SimProc, wait_for
from tests.support.socat import PtyPair, open_pty_pair
from tests.support.tls_broker import TlsMaterial, make_tls_material

NODE_ID = "flood-node-01"
RUNTIME_HEAP = 100 * 1024

# The heap the node runs with: 100 KB for its data plus what its code occupies once loaded.
# On the ESP32 the code is frozen into the firmware or deployed to the ROMFS partition and runs
# in place from flash (docs/firmware.md); the unix port can do neither and loads bytecode into
# the heap, so the test gives that back, measured, and the node's *data* must fit in 100 KB.
CODE_FOOTPRINT_SCRIPT = """
import gc
gc.collect()
base = gc.mem_alloc()
import asyncio, json
from ue import node, identity, hal
gc.collect()
print(gc.mem_alloc() - base)
"""


def _node_heap() -> str:
    global _HEAP
    if _HEAP is None:
        code = int(run_mp(CODE_FOOTPRINT_SCRIPT, heap="1m").strip())
        _HEAP = f"{(RUNTIME_HEAP + code + 1023) // 1024}k"
    return _HEAP


_HEAP: str | None = None
SITE = "canal-7"
FLOOD_POINTS = {"water_level", "distance", "rainfall", "battery"}


@dataclass
class Rig:
    tmp: Path
    storage: Path
    broker: Mosquitto
    tls_port: int
    pty: PtyPair
    sim: SimProc
    pki: ThrowawayPki
    tls: TlsMaterial
    receiver: subprocess.Popen[bytes] | None = None
    node: subprocess.Popen[bytes] | None = None
    node_runs: int = 0

    # -- the node ----------------------------------------------------------------------------
    @property
    def node_log(self) -> Path:
        return self.tmp / "node.log"

    def start_node(self) -> None:
        out = open(self.node_log, "ab")  # noqa: SIM115 - handed to the child
        self.node = subprocess.Popen(
            [str(micropython_exe()), "-X", f"heapsize={_node_heap()}", str(FIRMWARE / "main.py")],
            env={**mp_env(), "UE_STORAGE": str(self.storage)}, stdout=out, stderr=out)
        out.close()
        self.node_runs += 1

    def kill_node(self) -> None:
        if self.node is not None and self.node.poll() is None:
            self.node.send_signal(signal.SIGKILL)
            self.node.wait(10)
        self.node = None

    def log_text(self) -> str:
        return self.node_log.read_text(errors="replace") if self.node_log.exists() else ""

    def log_count(self, event: str) -> int:
        return self.log_text().count(f"event={event}")

    # -- the IOC -----------------------------------------------------------------------------
    @property
    def ioc_db(self) -> Path:
        return self.tmp / "ioc.db"

    def start_receiver(self) -> None:
        out = open(self.tmp / "ioc.log", "ab")  # noqa: SIM115 - handed to the child
        pki = self.pki
        self.receiver = subprocess.Popen(
            [sys.executable, "-m", "urbanedge", "ioc", "receive", "--broker", f"127.0.0.1:{self.broker.port}",
             "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key), "--cert", str(pki.ioc_recipient_cert),
             "--crl", str(pki.crl), "--store", f"sqlite:{self.ioc_db}", "--out", str(self.tmp / "ioc.jsonl"),
             "--no-share", "--client-id", "ioc-node-test"],
            stdout=out, stderr=out)
        out.close()
        wait_for(lambda: "event=ioc_connected" in (self.tmp / "ioc.log").read_text(), 30, "IOC receiver connected")
        time.sleep(0.3)  # SUBACK follows CONNACK

    def ioc_lines(self) -> list[dict[str, Any]]:
        path = self.tmp / "ioc.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def ioc_seqs(self) -> set[int]:
        return {int(r["seq"]) for r in self.ioc_lines() if r["source"] == NODE_ID}

    def ioc_rejections(self) -> str:
        return "\n".join(line for line in (self.tmp / "ioc.log").read_text().splitlines()
                         if "event=ioc_rejected" in line)


def _node_json(rig_port: int, tty: Path, *, interval_s: float, max_records: int, max_wait_s: float) -> str:
    return json.dumps({
        "node_id": NODE_ID, "site": SITE, "serial": "ESP32-0042",
        "broker": {"host": "127.0.0.1", "port": rig_port, "ca": "broker-ca.der", "keepalive": 10,
                   "backoff_min_ms": 200, "backoff_max_ms": 1000},
        "bus": {"port": str(tty), "baudrate": 9600, "timeout_ms": 200},
        "devices": [{"id": "flood-canal-07", "profile": "flood-sensor", "unit": 1, "interval_s": interval_s}],
        "batch": {"max_records": max_records, "max_wait_s": max_wait_s},
        "log": {"seg_size": 4096, "n_segs": 16},
    })


def _client_ca_bundle(pki: ThrowawayPki, folder: Path) -> Path:
    bundle = folder / "clients-ca.pem"
    bundle.write_bytes(pki.issuing_cert.read_bytes() + pki.root_cert.read_bytes())
    return bundle


def _broker_conf(tls: TlsMaterial, client_ca: Path, tls_port: int) -> str:
    # Clients must present a certificate of the provincial PKI; the broker's own certificate
    # comes from another CA (the broker operator's), which the node trusts for the server.
    return (f"listener {tls_port} 127.0.0.1\n"
            f"cafile {client_ca}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
            "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")


def provision(rig: Rig, tls: TlsMaterial, *, interval_s: float = 0.5, max_records: int = 15,
              max_wait_s: float = 1.0) -> x509.Certificate:
    """What the technician's tool does, over the node's console (a socat pty standing in for the
    USB cable, the real protocol through NodeLink): config in, the node's own CSR out,
    certificate, chain, IOC and broker CA in. Then the cable comes out (the node leaves
    provisioning mode) and the tests start it as a powered-up node: without `reboot` here, so no
    record is sent before the test's IOC receiver is listening."""
    cfg = json.loads(_node_json(rig.tls_port, rig.pty.b, interval_s=interval_s, max_records=max_records,
                                max_wait_s=max_wait_s))
    node = start_node(rig.tmp, rig.storage, heap=_node_heap(), name="usb")
    try:
        with node.link() as link:
            assert link.request("hello")["has_cert"] is False
            cert, got = provision_over(link, cfg, broker_ca_der=tls.ca_der.read_bytes())
        node.unplug()
        assert node.wait_exit(30) == 3, node.stderr_text()
    finally:
        node.stop()
    ident = rig.storage / "id"
    assert (ident / "node.crt").read_bytes() == cert.public_bytes(serialization.Encoding.DER)
    subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(ident / "node.csr"), "-verify", "-noout"],
                   check=True, capture_output=True)
    assert got["public_key_hex"] == cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:].hex()
    return cert


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    pki = testpki.shared_pki()
    tls = make_tls_material(tmp_path / "broker-pki")
    tls_port = free_port()
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", persistence=True,
                       extra_conf=_broker_conf(tls, _client_ca_bundle(pki, tmp_path), tls_port))
    broker.start()
    wait_port("127.0.0.1", tls_port)
    pty = open_pty_pair(tmp_path, "rs485")
    sim = SimProc.start("flood-sensor", "--serial", str(pty.a), "--units", "1", "--tick", "0.2", "--seed", "5")
    storage = tmp_path / "node"
    storage.mkdir()
    r = Rig(tmp_path, storage, broker, tls_port, pty, sim, pki, tls)
    try:
        yield r
    finally:
        r.kill_node()
        if r.receiver is not None:
            stop_process(r.receiver, grace=10)
        sim.stop()
        pty.close()
        broker.stop()


def _pending_and_hi(storage: Path) -> tuple[int, int]:
    """(records pending, highest seq ever handed out) of the node's flash log, read by the node's
    own code after the node stopped."""
    out = run_mp(
        "import sys\nfrom ue.flashlog import FlashLog\n"
        "f = FlashLog(sys.argv[1], seg_size=4096, n_segs=16)\nprint(f.pending(), f._next - 1)\n",
        args=[str(storage / "log")])
    pending, hi = out.split()
    return int(pending), int(hi)


def test_node_readings_arrive_verified_at_the_ioc(rig: Rig) -> None:
    cert = provision(rig, rig.tls)
    key = rig.storage / "id" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The key never left the node: the certificate carries its public half, the key file
    # is the node's own, and nothing else in its storage holds the private scalar.
    node_key = serialization.load_der_private_key(key.read_bytes(), None)
    assert node_key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    subprocess.run(["openssl", "verify", "-CAfile", str(rig.pki.root_cert), "-untrusted",
                    str(rig.pki.issuing_cert), "-purpose", "sslclient", "/dev/stdin"],
                   input=cert.public_bytes(serialization.Encoding.PEM), check=True, capture_output=True)

    rig.start_receiver()
    rig.start_node()
    wait_for(lambda: len([r for r in rig.ioc_lines() if r["type"] == "telemetry"]) >= 6, 60,
             "six verified telemetry records at the IOC")
    rig.sim.control("alarm flood_danger")
    wait_for(lambda: any(r["type"] == "alarm" and r.get("alarm") == "flood_danger" for r in rig.ioc_lines()), 30,
             "the flood alarm at the IOC")
    lines = rig.ioc_lines()
    assert rig.ioc_rejections() == ""
    assert {r["source"] for r in lines} == {NODE_ID}
    tele = [r for r in lines if r["type"] == "telemetry"]
    good = [r for r in tele if r["quality"] == "good"]
    assert good, tele
    for r in good:
        assert r["device_id"] == "flood-canal-07" and r["kind"] == "flood-sensor"
        assert set(r["values"]) == FLOOD_POINTS
        assert abs(r["ts"] - time.time()) < 120
    started = [r for r in lines if r["type"] == "event" and r.get("event") == "agent_started"]
    assert started and started[0]["device_id"] == NODE_ID
    # Every record the receiver wrote it verified: signer chain to the root, node's SAN = src.
    assert all(r["verified"]["signer"] == NODE_ID for r in lines), lines[0]
    assert rig.node is not None and rig.node.poll() is None, rig.log_text()


def test_kill_9_at_random_moments_and_a_torn_log_lose_nothing(rig: Rig) -> None:
    provision(rig, rig.tls, interval_s=0.2, max_records=4, max_wait_s=0.3)
    rig.start_receiver()
    rng = random.Random(4242)
    for i in range(5):
        rig.start_node()
        wait_for(lambda n=i: rig.log_count("node_started") > n, 30, "node started")
        time.sleep(rng.uniform(0.3, 2.5))
        rig.kill_node()
        if i == 2:
            # A reset in the middle of an append: garbage after the last good record.
            segs = sorted((rig.storage / "log").glob("s*"), key=lambda p: int(p.name[1:]))
            with open(segs[-1], "ab") as f:
                f.write(bytes(rng.randrange(256) for _ in range(23)))
    rig.start_node()
    wait_for(lambda: rig.log_count("node_started") >= 6, 30, "last start")
    time.sleep(2.0)
    rig.kill_node()
    pending, hi = _pending_and_hi(rig.storage)
    # Drain what is left, polling nothing new: a last run with the sensor unplugged would still
    # add records, so instead let the node run until the IOC has everything up to hi.
    rig.start_node()
    wait_for(lambda: set(range(1, hi + 1)) <= rig.ioc_seqs(), 60,
             f"every seq up to {hi} at the IOC (pending after the kills: {pending})")
    assert rig.ioc_rejections() == ""
    assert rig.log_count("mqtt_connected") >= 7


def test_broker_outage_buffers_in_flash_then_drains(rig: Rig) -> None:
    provision(rig, rig.tls, interval_s=0.2, max_records=10, max_wait_s=0.3)
    rig.start_receiver()
    rig.start_node()
    wait_for(lambda: len(rig.ioc_seqs()) >= 5, 60, "first records at the IOC")
    rig.broker.stop()
    before = max(rig.ioc_seqs())
    wait_for(lambda: rig.log_count("mqtt_connect_failed") >= 3, 30, "reconnect attempts during the outage")
    acked_in_outage = rig.log_count("batch_acked")
    time.sleep(2.0)
    assert rig.log_count("batch_acked") == acked_in_outage  # nothing is called sent while the broker is away
    assert rig.node is not None and rig.node.poll() is None, rig.log_text()
    rig.broker.start()
    wait_port("127.0.0.1", rig.tls_port)
    # The outage's records (5 polls a second, in flash meanwhile) arrive, and no seq is missing:
    # a lost record would leave a hole below the highest seq the IOC has.
    wait_for(lambda: max(rig.ioc_seqs()) >= before + 30, 60, "the backlog drained to the IOC")
    seqs = rig.ioc_seqs()
    assert set(range(1, max(seqs) + 1)) <= seqs
    assert rig.ioc_rejections() == ""
    assert rig.node.poll() is None, rig.log_text()
