"""The Mosquitto ACL of docs/operations.md ("Broker ACL"), taken verbatim from the document and
run on a real Mosquitto: gateways read only their own and their groups' command topics, only
the IOC publishes commands, a gateway cannot write another's channels, the SOC reads only
security events (and the certificate announcements it verifies them with).

Clients name themselves by MQTT username here (no password file); in a deployment the name comes
from the client certificate (``use_identity_as_username``), which the ACL cannot tell apart."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import Mosquitto
from tests.support.procs import wait_for

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
P = "urbanedge/v1"
MEMBER, OTHER = "gw-dn-001", "gw-other"  # the document's example gateway is in district-1


def acl_text() -> str:
    m = re.search(r"<!-- broker-acl -->\s*```\n(.*?)```", OPERATIONS.read_text(), re.S)
    assert m, "docs/operations.md lost its broker-acl block"
    return m.group(1)


class Client:
    def __init__(self, broker: Mosquitto, user: str, subscribe: Sequence[str] = ()) -> None:
        self.got: list[str] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.time_ns()}")
        self.c.username_pw_set(user)
        self.c.on_message = self._on
        self.c.on_subscribe = lambda *_: ready.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        if subscribe:
            self.c.subscribe([(t, 1) for t in subscribe])
            assert ready.wait(10)

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append(msg.topic)

    def topics(self) -> list[str]:
        with self.lock:
            return list(self.got)

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b"x", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    acl = tmp_path / "acl"
    acl.write_text(acl_text())
    acl.chmod(0o644)
    # As root, mosquitto drops to user "mosquitto", who cannot read our temp dir.
    b = Mosquitto(tmp_path, extra_conf=f"user root\nacl_file {acl}\n")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_the_documented_acl_confines_gateways_the_ioc_and_the_soc(broker: Mosquitto) -> None:
    # Each gateway tries to read its own commands, both groups, and everything.
    member = Client(broker, MEMBER, [f"{P}/s1/{MEMBER}/command", f"{P}/group/district-1/command",
                                     f"{P}/group/district-9/command", f"{P}/+/+/#"])
    other = Client(broker, OTHER, [f"{P}/s2/{OTHER}/command", f"{P}/group/district-1/command", f"{P}/+/+/#"])
    soc = Client(broker, "soc", [f"{P}/+/+/#"])
    receiver = Client(broker, "ioc-receiver", [f"{P}/+/+/#"])
    ioc = Client(broker, "ioc-command")
    clients = [member, other, soc, receiver, ioc]
    try:
        # Forbidden first, then allowed ones: a QoS 1 stream from one publisher arrives in order, so
        # once the allowed message is there, a forbidden one delivered before it would be too.
        other.pub(f"{P}/s1/{MEMBER}/command")          # a gateway commanding another
        other.pub(f"{P}/group/district-1/command")     # ... or a group
        other.pub(f"{P}/s1/{MEMBER}/telemetry")        # ... or speaking for it
        member.pub(f"{P}/s1/{MEMBER}/telemetry")
        member.pub(f"{P}/s1/{MEMBER}/security")
        member.pub(f"{P}/s1/{MEMBER}/cert")
        ioc.pub(f"{P}/group/district-9/command")       # a group the member is not in
        ioc.pub(f"{P}/group/district-1/command")
        ioc.pub(f"{P}/s1/{MEMBER}/command")
        ioc.pub(f"{P}/s2/{OTHER}/command")
        other.pub(f"{P}/s2/{OTHER}/alarm")             # the sentinel for the receiver
        wait_for(lambda: f"{P}/s2/{OTHER}/command" in other.topics(), 10, "the IOC's command to gw-other")
        wait_for(lambda: f"{P}/s1/{MEMBER}/command" in member.topics(), 10, "the IOC's command to the member")
        wait_for(lambda: f"{P}/s2/{OTHER}/alarm" in receiver.topics(), 10, "the receiver's sentinel")
        wait_for(lambda: f"{P}/s1/{MEMBER}/cert" in soc.topics(), 10, "the SOC's announcement")
        time.sleep(0.3)

        assert sorted(set(member.topics())) == [f"{P}/group/district-1/command", f"{P}/s1/{MEMBER}/command"]
        assert member.topics().count(f"{P}/group/district-1/command") == 1  # from the IOC, not gw-other
        assert sorted(set(other.topics())) == [f"{P}/s2/{OTHER}/command"]
        assert sorted(set(soc.topics())) == [f"{P}/s1/{MEMBER}/cert", f"{P}/s1/{MEMBER}/security"]
        # The IOC's receiver reads everything (commands too); of the data, only what the owners sent.
        assert sorted({t for t in receiver.topics() if not t.endswith("/command")}) == [
            f"{P}/s1/{MEMBER}/cert", f"{P}/s1/{MEMBER}/security", f"{P}/s1/{MEMBER}/telemetry",
            f"{P}/s2/{OTHER}/alarm"]
        assert receiver.topics().count(f"{P}/s1/{MEMBER}/telemetry") == 1  # gw-other's forgery never got in
    finally:
        for c in clients:
            c.close()
