"""Security events through the real uplink (SQLite outbox, Mosquitto, sealing): they leave on the
``security`` topic, still ahead of a telemetry backlog (EVENT priority), and nothing else goes
there. Certificate problems become security events too: a TLS handshake the broker's certificate
fails, and our own certificate close to its notAfter."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.serialization import Encoding
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, Priority, event, telemetry
from agent.control.results import crl_event, security_event
from agent.security.events import update_event
from agent.security.monitor import SecurityMonitor
from agent.uplink.forwarder import Forwarder, UplinkSettings
from agent.uplink.tls import client_context
from agent.uplink.topics import Topics
from pki.keys import load_certs
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import wait_for
from tests.support.tls_broker import make_tls_material

GW = "gw-secch"
TOPICS = Topics("urbanedge/v1", "test-site", GW)
BACKLOG = 1500


def settings(port: int, **kw: Any) -> UplinkSettings:
    return UplinkSettings(host="127.0.0.1", port=port, client_id=f"{GW}-{time.time_ns()}", topics=TOPICS,
                          source=GW, sealer=testpki.batch_sealer(GW), batch_max_records=100,
                          reconnect_min=0.1, reconnect_max=0.5, **kw)


class Tap:
    """Every message under the gateway's topics, in arrival order."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"tap-{time.time_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"urbanedge/v1/test-site/{GW}/#", qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append((TOPICS.parse(msg.topic)[2], bytes(msg.payload)))

    def opened(self) -> list[tuple[str, list[dict[str, Any]]]]:
        opener = testpki.opener()
        opener.learn_chain(load_certs(testpki.device(GW).chain))
        with self.lock:
            got = list(self.got)
        return [(ch, opener.open(p).records) for ch, p in got if ch in ("alarm", "event", "security", "telemetry")]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_security_events_take_their_own_topic_ahead_of_the_telemetry_backlog(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    now = time.time()
    events: list[NewRecord] = [
        event(GW, now, "device_offline", device="sl-3"),
        security_event(GW, now, reason="unsigned", detail="not a COSE_Sign1", command_id=None),
        security_event(GW, now, reason="replayed", detail="seen", command_id="ab" * 16),
        event(GW, now, "command_result", id="ab" * 16, cmd="on", state="rejected", reason="replayed"),
        crl_event(GW, now, "crl_unreadable", "/etc/urbanedge/pki/crl.pem: no such file"),
    ]
    ota = {"state": "rejected", "release": "9.9.9", "counter": 1, "reason": "rollback: counter 1 < 4"}
    sec_update = update_event(GW, now, ota)
    assert sec_update is not None
    events += [event(GW, now, "ota_status", **ota), sec_update]
    tap = Tap(mosquitto.port)

    async def scenario() -> None:
        outbox = await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=64 << 20)
        try:
            # The backlog first (older seqs), the events after: priority must still put them ahead.
            await outbox.append([telemetry(f"sl-{i % 10}", "streetlight", now - BACKLOG + i, {"v": i})
                                 for i in range(BACKLOG)])
            await outbox.append(events)
            task = asyncio.create_task(Forwarder(outbox, settings(mosquitto.port)).run())
            for _ in range(1200):  # up to a minute
                if not (await outbox.stats()).records:
                    break
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            await outbox.close()

    try:
        asyncio.run(scenario())
        wait_for(lambda: sum(len(r) for _, r in tap.opened()) >= BACKLOG + len(events), 30, "everything")
        msgs = tap.opened()
    finally:
        tap.stop()
    on = {ch: [r for c, recs in msgs if c == ch for r in recs] for ch in ("event", "security", "telemetry")}
    assert {(r["category"], r["reason"]) for r in on["security"]} == {
        ("command_rejected", "unsigned"), ("command_rejected", "replayed"), ("crl", "crl_unreadable"),
        ("update_rejected", "rollback")}
    assert all(r["event"] == "security" and r["type"] == "event" for r in on["security"])
    assert sorted(r["event"] for r in on["event"]) == ["command_result", "device_offline", "ota_status"]
    assert len(on["telemetry"]) == BACKLOG
    channels = [c for c, _ in msgs]
    first_telemetry = channels.index("telemetry")
    assert max(i for i, c in enumerate(channels) if c in ("security", "event")) < first_telemetry
    # Within the event priority, seq order is kept across the two topics.
    ev_seqs = [r["seq"] for c, recs in msgs if c in ("event", "security") for r in recs]
    assert ev_seqs == sorted(ev_seqs)


def refused_connects(tmp_path: Path, broker_conf: str, tls: ssl.SSLContext,
                     failures: int) -> tuple[list[dict[str, Any]], str]:
    """A forwarder with ``tls`` against a Mosquitto TLS listener (``broker_conf`` added) that
    refuses it, until ``failures`` connects failed: (event bodies in the outbox, last error)."""
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra_conf=f"user root\nlistener {tls_port} 127.0.0.1\n{broker_conf}")
    broker.workdir.mkdir()
    broker.start()
    monitor = SecurityMonitor(GW, repeat_every=3600)

    async def scenario() -> tuple[list[dict[str, Any]], str]:
        outbox = await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=64 << 20)
        try:
            fwd = Forwarder(outbox, settings(tls_port, tls=tls, connect_timeout=2.0,
                                             on_connect_failure=monitor.on_connect_failure))
            cert_der = testpki.batch_sealer(GW).chain_der[0]
            tasks = [asyncio.create_task(fwd.run()), asyncio.create_task(monitor.run(outbox.append, cert_der))]
            for _ in range(600):  # up to 30 s
                if fwd.stats.connect_failures >= failures:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert fwd.stats.connect_failures >= failures and fwd.stats.connects == 0
            rows = await outbox.fetch(Priority.EVENT, 0, 100)
            return [json.loads(r.body) for r in rows], fwd.stats.last_error or ""
        finally:
            await outbox.close()

    try:
        return asyncio.run(scenario())
    finally:
        broker.stop()


def tls_events(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for b in bodies if b["event"] == "security" and b["category"] == "certificate"]


def test_a_broker_certificate_we_do_not_trust_is_a_security_event(tmp_path: Path) -> None:
    broker_tls = make_tls_material(tmp_path / "broker-pki")
    other_ca = make_tls_material(tmp_path / "other-pki")  # what the gateway (wrongly) trusts
    bodies, _ = refused_connects(tmp_path, (
        f"cafile {broker_tls.ca_pem}\ncertfile {broker_tls.server_cert}\nkeyfile {broker_tls.server_key}\n"
        "tls_version tlsv1.2\n"), client_context(other_ca.ca_pem), failures=3)
    tls = tls_events(bodies)
    # Three refused handshakes, one event: repeats within the hour are not re-reported.
    assert [b["reason"] for b in tls] == ["broker_certificate_rejected"]
    assert "certificate" in tls[0]["detail"] and "verify code" in tls[0]["detail"]


def test_a_client_certificate_refused_on_tls_1_3_is_named_and_a_security_event(tmp_path: Path) -> None:
    """TLS 1.3: the broker refuses our client certificate only after our handshake is done, so
    aiomqtt sees a timeout; the alert (from paho's log) is what the gateway reports."""
    broker_tls = make_tls_material(tmp_path / "broker-pki")
    other_ca = make_tls_material(tmp_path / "other-pki")  # issued our client certificate
    ours = other_ca.client(GW)
    bodies, last_error = refused_connects(tmp_path, (
        f"cafile {broker_tls.ca_pem}\ncertfile {broker_tls.server_cert}\nkeyfile {broker_tls.server_key}\n"
        "require_certificate true\ntls_version tlsv1.3\n"),
        client_context(broker_tls.ca_pem, ours.cert_pem, ours.key_pem), failures=2)
    tls = tls_events(bodies)
    assert [b["reason"] for b in tls] == ["tls_handshake_failed"]
    assert "UNKNOWN_CA" in tls[0]["detail"]
    # The technician's reason names the alert, not "Operation timed out".
    assert "SSLError" in last_error and "unknown ca" in last_error, last_error


def test_our_own_certificate_close_to_expiry_is_a_security_event() -> None:
    pki = testpki.shared_pki()
    soon = pki.issue_device("gw-expiring", days=10)
    monitor = SecurityMonitor("gw-expiring")
    got: list[NewRecord] = []

    async def append(recs: list[NewRecord]) -> None:
        got.extend(recs)

    async def scenario() -> None:
        der = load_certs(soon.cert)[0].public_bytes(Encoding.DER)
        task = asyncio.create_task(monitor.run(append, der))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # A certificate good for years raises nothing.
        far = load_certs(testpki.device(GW).cert)[0].public_bytes(Encoding.DER)
        quiet: list[NewRecord] = []

        async def keep(recs: list[NewRecord]) -> None:
            quiet.extend(recs)
        calm = asyncio.create_task(SecurityMonitor(GW).run(keep, far))
        await asyncio.sleep(0.2)
        calm.cancel()
        await asyncio.gather(calm, return_exceptions=True)
        assert quiet == []

    asyncio.run(scenario())
    assert len(got) == 1
    body = json.loads(got[0].body)
    assert (body["category"], body["reason"]) == ("certificate", "own_certificate_expiring")
    assert 9 <= float(body["detail"].split()[2]) <= 10
