"""Signed commands end to end: the IOC CLI, a real Mosquitto, a real agent process, a real
streetlight simulator. The agent verifies, writes through the bus coordinator, reads back,
and reports sealed results; a replayed copy is refused and reported; so is every bad command,
and the agent keeps running."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pki.command import new_command
from tests.support import procs, testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for

GW, SITE = "gw-cmd", "test-site"


def bus(port: int) -> str:
    root = testpki.shared_pki().root_cert
    return f"""
[commands]
enabled = true
root = "{root}"
groups = ["district-1"]

""" + tcp_bus(port, [("light-1", "streetlight", 1)], interval=0.3, extra="retries = 0\n")


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[dict[str, Any]]:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "7")
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=bus(port), gateway_id=GW)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agent = AgentProc(cfg)
    agent.start()
    try:
        # Telemetry arriving means the agent is online, and so subscribed to its command topic.
        wait_for(lambda: any(r.get("device_id") == "light-1" for r in sub.of_type("telemetry")), 30,
                 "first streetlight reading")
        yield {"sim": sim, "sub": sub, "agent": agent, "broker": mosquitto, "dir": tmp_path}
    finally:
        agent.stop()
        sub.stop()
        sim.stop()


def ioc_command(rig: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    broker: Mosquitto = rig["broker"]
    return procs.ioc_command(broker.host, broker.port, GW, SITE, *args)


def results(sub: Subscriber, state: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sub.of_type("event")
            if r["event"] == "command_result" and (state is None or r["state"] == state)]


def wait_result(sub: Subscriber, state: str, count: int = 1, timeout: float = 30) -> dict[str, Any]:
    wait_for(lambda: len(results(sub, state)) >= count, timeout, f"{count} command_result {state}")
    return results(sub, state)[count - 1]


def publish_raw(rig: dict[str, Any], data: bytes) -> None:
    broker: Mosquitto = rig["broker"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(f"urbanedge/v1/{SITE}/{GW}/command", data, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_dim_is_written_read_back_and_reported_and_a_replay_is_refused(rig: dict[str, Any]) -> None:
    sub: Subscriber = rig["sub"]
    saved = rig["dir"] / "dim40.cose"
    res = ioc_command(rig, "--device", "light-1", "--out", str(saved), "dim", "40")
    assert res.returncode == 0, res.stderr
    done = wait_result(sub, "done")
    assert done["cmd"] == "dim" and done["devices"] == {"light-1": "done"} and done["values"] == {"light-1": 40}
    assert [r["id"] for r in results(sub, "accepted")] == [done["id"]]
    # The next reading of the streetlight shows the set-point (and the physics follows it).
    wait_for(lambda: any(r.get("device_id") == "light-1" and r["ts"] > done["ts"]
                         and r["values"]["dim_level"] == 40 for r in sub.of_type("telemetry")),
             30, "a reading with dim_level 40")

    # The very same signed bytes again: refused as a replay, reported, and a security event.
    res = ioc_command(rig, "--publish", str(saved))
    assert res.returncode == 0, res.stderr
    rejected = wait_result(sub, "rejected")
    assert (rejected["id"], rejected["reason"]) == (done["id"], "replayed")
    wait_for(lambda: any(r["event"] == "security" and r["reason"] == "replayed" for r in sub.of_type("event")),
             30, "the security event of the replay")
    assert rig["agent"].alive()


def test_bad_commands_are_rejected_with_their_reason_and_the_agent_keeps_running(rig: dict[str, Any]) -> None:
    sub: Subscriber = rig["sub"]
    # Unsigned: the command map as it is; then one tagged like COSE that is not.
    body = new_command("on", device=GW, now=time.time()).body()
    publish_raw(rig, cbor2.dumps(body))
    assert wait_result(sub, "rejected", 1)["reason"] == "unsigned"
    publish_raw(rig, cbor2.dumps(cbor2.CBORTag(18, body)))
    assert wait_result(sub, "rejected", 2)["reason"] == "malformed"
    # For another gateway, published on our topic.
    res = ioc_command(rig, "--group", "district-9", "on")
    assert res.returncode == 0, res.stderr
    other = wait_result(sub, "rejected", 3)
    assert (other["reason"], other["cmd"], len(other["id"])) == ("not_for_us", "on", 32)
    # Out of range, and a read-only point.
    assert ioc_command(rig, "dim", "150").returncode == 0
    assert wait_result(sub, "rejected", 4)["reason"] == "out_of_range"
    assert ioc_command(rig, "--device", "light-1", "write", "active_power", "5").returncode == 0
    assert wait_result(sub, "rejected", 5)["reason"] == "read_only"
    # Security events travel on their own topic (the SOC's): they may land after the results.
    wait_for(lambda: {r["reason"] for r in sub.of_type("event") if r["event"] == "security"} >= {
        "unsigned", "malformed", "not_for_us", "out_of_range", "read_only"}, 30, "the five security events")
    # A group this gateway is in: obeyed.
    assert ioc_command(rig, "--group", "district-1", "off").returncode == 0
    assert wait_result(sub, "done")["cmd"] == "off"
    # The device stops answering: the write fails with the reason, nothing crashes.
    rig["sim"].stop()
    assert ioc_command(rig, "--device", "light-1", "dim", "20").returncode == 0
    failed = wait_result(sub, "failed")
    assert failed["cmd"] == "dim" and failed["reason"].startswith("device_"), failed
    assert rig["agent"].alive()
    assert "Traceback" not in rig["agent"].log_text()


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "urbanedge", "ioc", "command", "--gateway", GW, "--site", SITE]
    for args in (["dim"], ["dim", "forty"], ["self-destruct"], ["threshold", "flood_alert"], ["valve", "open"],
                 ["threshold", "flood_alert", "true"], ["--publish", str(tmp_path / "missing")], ["on"]):
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: "), (args, res.stderr)
