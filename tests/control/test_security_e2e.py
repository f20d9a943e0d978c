"""Security events on their own topic, end to end: a real agent (commands on, a CRL to watch),
a real Mosquitto, a SOC-side client subscribed to exactly ``<prefix>/<site>/<gw>/security`` (and
the certificate announcement it needs to verify), and ``urbanedge ioc receive --channels
security`` storing what the SOC sees. Revocation: an IOC command certificate issued and then
revoked by the project's CA code; the agent re-reads the CRL without a restart, and keeps the
last good CRL when the file goes bad (reporting that too)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ioc.store import open_store
from ioc.verify import Opener
from pki.command import new_command, sign_command
from pki.keys import load_certs, load_private_key
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.procs import AgentProc, SimProc, agent_config, tcp_bus, wait_for

GW, SITE = "gw-sec", "test-site"
BASE = f"urbanedge/v1/{SITE}/{GW}"


@dataclass
class SocClient:
    """Subscribed to the gateway's security topic (and its retained certificate announcement, to
    verify with): what a SOC subscribes to. Opens every message with the test PKI."""

    broker: Mosquitto
    opener: Opener = field(default_factory=testpki.opener)
    topics: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    _raw: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SocClient:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soc-{time.time_ns()}")
        ready = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(f"{BASE}/security", 1), (f"{BASE}/cert", 1)])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = lambda _c, _u, m: self._raw_append(m.topic, bytes(m.payload))
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert ready.wait(10)
        return self

    def _raw_append(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self._raw.append((topic, payload))

    def security(self) -> list[dict[str, Any]]:
        with self._lock:
            raw, self._raw = self._raw, []
        for topic, payload in raw:
            self.topics.append(topic)
            if topic.endswith("/cert"):
                self.opener.learn_announcement(payload)
            else:
                self.events.extend(self.opener.open(payload).records)
        return list(self.events)

    def wait(self, reason: str, timeout: float = 30) -> dict[str, Any]:
        wait_for(lambda: any(e["reason"] == reason for e in self.security()), timeout, f"security event {reason}")
        return next(e for e in self.events if e["reason"] == reason)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[dict[str, Any]]:
    pki = testpki.shared_pki()
    crl = tmp_path / "crl.pem"  # the gateway's copy, as config management would deliver it
    shutil.copy(pki.crl, crl)
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "7")
    buses = (f'[commands]\nenabled = true\nroot = "{pki.root_cert}"\ncrl = ["{crl}"]\n\n'
             + tcp_bus(port, [("light-1", "streetlight", 1)], interval=0.2, extra="retries = 0\n"))
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=buses, gateway_id=GW)
    soc = SocClient(mosquitto).start()
    log = open(tmp_path / "soc-rx.log", "ab")  # noqa: SIM115 - handed to the child
    receiver = subprocess.Popen(
        [sys.executable, "-m", "urbanedge", "ioc", "receive", "--broker", f"{mosquitto.host}:{mosquitto.port}",
         "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key), "--cert", str(pki.ioc_recipient_cert),
         "--store", f"sqlite:{tmp_path / 'soc.db'}", "--out", str(tmp_path / "soc.jsonl"),
         "--channels", "security", "--group", "soc"], stdout=log, stderr=log)
    log.close()
    agent = AgentProc(cfg)
    try:
        wait_for(lambda: "event=ioc_connected" in (tmp_path / "soc-rx.log").read_text(), 20, "SOC receiver up")
        agent.start()
        wait_for(lambda: "event=uplink_connected" in agent.log_text(), 30, "agent online")
        time.sleep(0.3)  # its SUBSCRIBE follows the connect
        yield {"soc": soc, "agent": agent, "broker": mosquitto, "crl": crl, "dir": tmp_path}
        assert agent.alive() and "Traceback" not in agent.log_text()
    finally:
        agent.stop()
        stop_process(receiver, grace=15)
        soc.stop()
        sim.stop()


def publish(broker: Mosquitto, data: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(f"{BASE}/command", data, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def signed(key: Path, chain: Path, cmd: str = "on") -> tuple[str, bytes]:
    command = new_command(cmd, device=GW, now=time.time())
    return command.id_hex, sign_command(command, load_private_key(key), load_certs(chain))  # type: ignore[arg-type]


def test_a_rejected_command_is_a_security_event_on_its_own_topic_and_the_soc_stores_it(
        rig: dict[str, Any]) -> None:
    soc: SocClient = rig["soc"]
    publish(rig["broker"], cbor2.dumps({"cmd": "on", "target": {"device": GW}}))  # unsigned
    ev = soc.wait("unsigned")
    assert (ev["type"], ev["event"], ev["category"], ev["device_id"]) == ("event", "security", "command_rejected", GW)
    # The security topic carries security events only (command results, telemetry go elsewhere).
    assert {e["event"] for e in soc.security()} == {"security"}
    assert all(t.endswith(("/security", "/cert")) for t in soc.topics)
    # The SOC's receiver (security channel only) verified and stored it: no telemetry in its store.
    store_path = rig["dir"] / "soc.db"

    def stored() -> list[dict[str, Any]]:
        if not store_path.exists():
            return []
        with open_store(f"sqlite:{store_path}") as store:
            return store.records(GW)
    wait_for(lambda: any(r.get("reason") == "unsigned" for r in stored()), 30, "the SOC store has it")
    assert {r["event"] for r in stored()} == {"security"}


def test_a_revoked_command_certificate_is_refused_after_the_crl_changes_without_a_restart(
        rig: dict[str, Any]) -> None:
    soc: SocClient = rig["soc"]
    broker: Mosquitto = rig["broker"]
    crl: Path = rig["crl"]
    pki = testpki.shared_pki()
    ioc_chain = pki.ioc_command_key.with_name("command.chain.pem")
    spare = pki.issue_device("ioc-command", profile="ioc-command")  # a second IOC command key
    first_id, first = signed(spare.key, spare.chain)
    publish(broker, first)
    wait_for(lambda: f"event=command_done id={first_id}" in rig["agent"].log_text(), 30, "obeyed before revocation")

    pki.revoke("ioc-command")
    shutil.copy(pki.crl, crl)
    revoked_id, revoked = signed(spare.key, spare.chain, "off")
    publish(broker, revoked)
    ev = soc.wait("revoked")
    # No id: the signature of a revoked signer is not even checked, so nothing in it is trusted.
    assert (ev["id"], ev["category"]) == (None, "command_rejected") and "revoked" in ev["detail"]
    assert f"event=command_done id={revoked_id}" not in rig["agent"].log_text()

    # The CRL file goes bad: reported (category crl), and the last good CRL stays in force.
    crl.write_text("-----BEGIN X509 CRL-----\nnot really\n-----END X509 CRL-----\n")
    good_id, good = signed(pki.ioc_command_key, ioc_chain)
    publish(broker, good)
    bad_crl = soc.wait("crl_unreadable")
    assert bad_crl["category"] == "crl" and str(crl) in bad_crl["detail"]
    wait_for(lambda: f"event=command_done id={good_id}" in rig["agent"].log_text(), 30, "the good key still works")
    again_id, again = signed(spare.key, spare.chain, "off")
    publish(broker, again)
    wait_for(lambda: sum(e["reason"] == "revoked" for e in soc.security()) == 2, 30, "still revoked")
    assert f"event=command_done id={again_id}" not in rig["agent"].log_text()
