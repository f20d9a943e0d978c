"""`urbanedge ioc receive` as the IOC runs it: real Mosquitto (MQTT v5 shared subscriptions),
real SQLite and PostgreSQL stores, receivers as subprocesses (killed with SIGKILL too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer.records import StoredRecord, telemetry
from agent.seal.encode import BatchSealer
from ioc.store import open_store
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.postgres import postgres_server
from tests.support.process import stop_process
from tests.support.procs import wait_for

PREFIX = "urbanedge/v1"


class Gateway:
    """Publishes what a gateway would: the retained announcement, then sealed batches."""

    def __init__(self, broker: Mosquitto, gw: str) -> None:
        self.gw = gw
        self.sealer: BatchSealer = testpki.batch_sealer(gw)
        self.topic = f"{PREFIX}/site/{gw}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{gw}-{os.getpid()}")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.next_seq = 1

    def announce(self) -> None:
        self.client.publish(f"{self.topic}/cert", self.sealer.announcement(ts=time.time()), qos=1,
                            retain=True).wait_for_publish(10)

    def batch(self, n: int = 5) -> tuple[bytes, list[int]]:
        recs = []
        for _ in range(n):
            r = telemetry("sl-1", "streetlight", time.time(), {"voltage": 229.7, "lamp_on": True})
            recs.append(StoredRecord(self.next_seq, r.prio, r.device_id, r.ts, r.body))
            self.next_seq += 1
        return self.sealer.encode(recs, sent_ts=time.time()), [r.seq for r in recs]

    def send(self, payload: bytes, channel: str = "telemetry") -> None:
        self.client.publish(f"{self.topic}/{channel}", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def gateway(mosquitto: Mosquitto) -> Iterator[Gateway]:
    g = Gateway(mosquitto, f"gw-rx-{os.getpid()}")
    yield g
    g.close()


def receive(broker: Mosquitto, tmp: Path, name: str, store: str, *extra: str) -> subprocess.Popen[bytes]:
    pki = testpki.shared_pki()
    out = open(tmp / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "urbanedge", "ioc", "receive", "--broker", f"{broker.host}:{broker.port}",
         "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key), "--cert", str(pki.ioc_recipient_cert),
         "--crl", str(pki.crl), "--store", store, "--out", str(tmp / f"{name}.jsonl"),
         "--stats", str(tmp / f"{name}.stats.json"), "--client-id", name, *extra],
        stdout=out, stderr=out,
    )
    out.close()
    wait_for(lambda: "event=ioc_connected" in (tmp / f"{name}.log").read_text(), 20, f"{name} connected")
    time.sleep(0.3)  # SUBACK follows CONNACK
    return proc


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, grace=15)


def test_receiver_stores_good_batches_once_and_counts_every_rejection(
        mosquitto: Mosquitto, gateway: Gateway, tmp_path: Path) -> None:
    gateway.announce()
    rx = receive(mosquitto, tmp_path, "rx1", f"sqlite:{tmp_path / 'ioc.db'}")
    try:
        sent: list[int] = []
        first, seqs = gateway.batch()
        sent += seqs
        gateway.send(first)
        gateway.send(first)  # replayed
        payload, seqs = gateway.batch()
        sent += seqs
        gateway.send(payload[:-20])  # truncated
        gateway.send(payload[:40] + bytes([payload[40] ^ 1]) + payload[41:])  # tampered
        gateway.send(os.urandom(200))  # random bytes
        gateway.send(payload, channel="alarm")
        wait_for(lambda: len(lines(tmp_path / "rx1.jsonl")) == len(sent), 20, "verified records")
    finally:
        stop(rx)
    got = lines(tmp_path / "rx1.jsonl")
    assert sorted(int(r["seq"]) for r in got) == sent  # type: ignore[call-overload]
    stats = json.loads((tmp_path / "rx1.stats.json").read_text())
    assert stats["records_new"] == len(sent)
    assert stats["rejected"]["replay"] == 1
    assert stats["rejected"]["malformed"] >= 2  # truncated, random
    assert sum(stats["rejected"].values()) == 4
    with open_store(f"sqlite:{tmp_path / 'ioc.db'}") as store:
        assert store.stats()[gateway.gw]["stored"] == len(sent)


def test_two_receivers_share_the_load_and_one_postgres_store_keeps_each_reading_once(
        mosquitto: Mosquitto, gateway: Gateway, tmp_path: Path) -> None:
    gateway.announce()
    with postgres_server() as pg:
        dsn = pg.create_database("ioc")
        a = receive(mosquitto, tmp_path, "rx-a", dsn, "--group", "ioc")
        b = receive(mosquitto, tmp_path, "rx-b", dsn, "--group", "ioc")
        sent: list[int] = []
        try:
            for _ in range(40):
                payload, seqs = gateway.batch(3)
                sent += seqs
                gateway.send(payload)
            wait_for(lambda: len(lines(tmp_path / "rx-a.jsonl")) + len(lines(tmp_path / "rx-b.jsonl"))
                     >= len(sent), 30, "both receivers")
        finally:
            stop(a)
            stop(b)
        got_a = [int(r["seq"]) for r in lines(tmp_path / "rx-a.jsonl")]  # type: ignore[call-overload]
        got_b = [int(r["seq"]) for r in lines(tmp_path / "rx-b.jsonl")]  # type: ignore[call-overload]
        assert got_a and got_b, "a shared subscription gives each receiver a share"
        assert sorted(got_a + got_b) == sent  # disjoint, and nothing missing
        with open_store(dsn) as store:
            assert store.stats()[gateway.gw]["stored"] == len(sent)


def test_receiver_killed_mid_stream_loses_nothing(mosquitto: Mosquitto, gateway: Gateway, tmp_path: Path) -> None:
    """Messages are acknowledged only once stored: a SIGKILLed receiver's unacknowledged and
    queued messages come again (persistent session) and the store ends with every record."""
    gateway.announce()
    db = f"sqlite:{tmp_path / 'ioc.db'}"
    rx = receive(mosquitto, tmp_path, "rx-k", db)
    sent: list[int] = []
    try:
        for i in range(150):
            payload, seqs = gateway.batch(4)
            sent += seqs
            gateway.send(payload)
            if i == 60:
                wait_for(lambda: len(lines(tmp_path / "rx-k.jsonl")) > 0, 20, "first records")
                rx.send_signal(signal.SIGKILL)
                rx.wait(10)
        rx = receive(mosquitto, tmp_path, "rx-k", db)
        with open_store(db) as store:
            wait_for(lambda: store.stats().get(gateway.gw, {}).get("stored", 0) == len(sent), 30,  # type: ignore[call-overload]
                     "every record stored after the restart")
            assert store.stats()[gateway.gw]["missing"] == 0
    finally:
        stop(rx)


def test_receiver_writes_ngsi_ld_entities(mosquitto: Mosquitto, gateway: Gateway, tmp_path: Path) -> None:
    gateway.announce()
    rx = receive(mosquitto, tmp_path, "rx-ngsi", f"sqlite:{tmp_path / 'ioc.db'}", "--format", "ngsi-ld")
    try:
        payload, seqs = gateway.batch(3)
        gateway.send(payload)
        wait_for(lambda: len(lines(tmp_path / "rx-ngsi.jsonl")) == len(seqs), 20, "entities")
    finally:
        stop(rx)
    entities = lines(tmp_path / "rx-ngsi.jsonl")
    assert {e["type"] for e in entities} == {"Streetlight"}
    assert all(str(e["id"]).startswith(f"urn:ngsi-ld:Streetlight:{gateway.gw}:") for e in entities)
    assert all(e["voltage"]["value"] == 229.7 for e in entities)  # type: ignore[index]


def test_revocation_takes_effect_without_restarting_the_receiver(mosquitto: Mosquitto, tmp_path: Path) -> None:
    g = Gateway(mosquitto, f"gw-revoke-{os.getpid()}")
    try:
        g.announce()
        rx = receive(mosquitto, tmp_path, "rx-crl", f"sqlite:{tmp_path / 'ioc.db'}")
        try:
            payload, _seqs = g.batch(2)
            g.send(payload)
            wait_for(lambda: len(lines(tmp_path / "rx-crl.jsonl")) == 2, 20, "records before the revocation")
            testpki.shared_pki().revoke(g.gw)  # rewrites the CRL file the receiver was given
            wait_for(lambda: "event=ioc_crl_reloaded" in (tmp_path / "rx-crl.log").read_text(), 20, "CRL reload")
            payload, _ = g.batch(2)
            g.send(payload)
            wait_for(lambda: "reason=revoked" in (tmp_path / "rx-crl.log").read_text(), 20, "revoked batch")
        finally:
            stop(rx)
        assert len(lines(tmp_path / "rx-crl.jsonl")) == 2
        assert json.loads((tmp_path / "rx-crl.stats.json").read_text())["rejected"] == {"revoked": 1}
    finally:
        g.close()


def test_receiver_publishes_signed_receipts_an_installer_verifies(
        mosquitto: Mosquitto, gateway: Gateway, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from ioc.receipts import ReceiptError, receipt_topic, verify_receipt
    from pki.keys import load_cert

    pki = testpki.shared_pki()
    chain = tmp_path / "command-chain.pem"
    chain.write_bytes(pki.ioc_command_cert.read_bytes() + pki.issuing_cert.read_bytes())
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"installer-{os.getpid()}")
    sub.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(receipt_topic(PREFIX, gateway.gw), qos=1)
    sub.loop_start()
    gateway.announce()
    rx = receive(mosquitto, tmp_path, "rx-receipts", f"sqlite:{tmp_path / 'ioc.db'}", "--no-share",
                 "--receipt-key", str(pki.ioc_command_key), "--receipt-cert", str(chain))
    try:
        payload, seqs = gateway.batch(4)
        gateway.send(payload)
        wait_for(lambda: bool(got), 20, "a receipt")
        root = load_cert(pki.root_cert)
        r = verify_receipt(got[-1], root, at=datetime.now(UTC))
        assert r.source == gateway.gw and r.records == 4 and r.telemetry == 4 and r.seq_max == max(seqs)
        assert r.cert_serial == f"{load_cert(testpki.device(gateway.gw).cert).serial_number:x}"
        # A receipt names counts, never values: readings stay end-to-end encrypted.
        assert b"229.7" not in got[-1] and b"voltage" not in got[-1]
        # A forged one (the gateway signs it) is refused by the installer.
        with pytest.raises(ReceiptError):
            from cryptography.hazmat.primitives.asymmetric import ec

            from ioc.receipts import make_receipt
            from pki.keys import load_certs, load_private_key

            key = load_private_key(testpki.device(gateway.gw).key)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            forged = make_receipt(key, load_certs(testpki.device(gateway.gw).chain), source=gateway.gw,
                                  cert_serial="1", records=1, telemetry=1, seq_max=1, last_ts=0, now=time.time())
            verify_receipt(forged, root, at=datetime.now(UTC))
    finally:
        stop(rx)
        sub.loop_stop()
        sub.disconnect()
