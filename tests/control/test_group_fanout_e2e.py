"""Group commands fan out through the broker: three real agents on a real Mosquitto (two in
district-7, one in district-9), one streetlight simulator with a unit for each. One publish on
``urbanedge/v1/group/district-7/command`` reaches both members, which switch their lamp off
and report ``done``; the third gateway never sees it. Each gateway still checks the signed
target: a district-7 command delivered to the district-9 gateway's own topic is refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pki.command import new_command, sign_command
from pki.keys import load_certs, load_private_key
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for

GATEWAYS = {"gw-fan-a": ("district-7", 1), "gw-fan-b": ("district-7", 2), "gw-fan-c": ("district-9", 3)}


def config(tmp: Path, broker: Mosquitto, sim_port: int, gw: str) -> Path:
    group, unit = GATEWAYS[gw]
    buses = (f'[commands]\nenabled = true\nroot = "{testpki.shared_pki().root_cert}"\ngroups = ["{group}"]\n\n'
             + tcp_bus(sim_port, [(f"light-{unit}", "streetlight", unit)], interval=0.5, extra="retries = 0\n"))
    folder = tmp / gw
    folder.mkdir()
    return agent_config(folder / "agent.toml", broker_port=broker.port, buses=buses, gateway_id=gw)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Subscriber]:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1-3", "--seed", "5")
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agents = [AgentProc(config(tmp_path, mosquitto, port, gw)) for gw in GATEWAYS]
    for a in agents:
        a.start()
    try:
        # A reading from each gateway: each is online, so subscribed to its command topics.
        wait_for(lambda: {r["device_id"] for r in sub.of_type("telemetry")} >= {"light-1", "light-2", "light-3"},
                 40, "a reading through every gateway")
        yield sub
        for a in agents:
            assert a.alive() and "Traceback" not in a.log_text()
    finally:
        for a in agents:
            a.stop()
        sub.stop()
        sim.stop()


def results(sub: Subscriber, cmd_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(gateway, state) -> the command_result of ``cmd_id``."""
    return {(r["device_id"], r["state"]): r for r in sub.of_type("event")
            if r["event"] == "command_result" and r["id"] == cmd_id}


def publish(broker: Mosquitto, topic: str, data: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, data, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_one_group_publish_reaches_every_member_and_only_them(fleet: Subscriber, mosquitto: Mosquitto,
                                                            tmp_path: Path) -> None:
    pki = testpki.shared_pki()
    saved = tmp_path / "off.cose"
    res = subprocess.run(
        [sys.executable, "-m", "urbanedge", "ioc", "command", "--broker", f"{mosquitto.host}:{mosquitto.port}",
         "--key", str(pki.ioc_command_key), "--cert", str(pki.ioc_command_key.with_name("command.chain.pem")),
         "--group", "district-7", "--out", str(saved), "off"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "to urbanedge/v1/group/district-7/command" in res.stdout
    cmd_id = res.stdout.split("id=")[1].split()[0]
    wait_for(lambda: {("gw-fan-a", "done"), ("gw-fan-b", "done")} <= set(results(fleet, cmd_id)), 30,
             "done from both members")
    got = results(fleet, cmd_id)
    assert got[("gw-fan-a", "done")]["devices"] == {"light-1": "done"}
    assert got[("gw-fan-b", "done")]["devices"] == {"light-2": "done"}
    # The lamps follow: the next readings of light-1 and light-2 show them off.
    done_ts = max(got[(gw, "done")]["ts"] for gw in ("gw-fan-a", "gw-fan-b"))
    wait_for(lambda: {r["device_id"] for r in fleet.of_type("telemetry")
                      if r["ts"] > done_ts and r["values"]["lamp_on"] is False} >= {"light-1", "light-2"},
             30, "both lamps read back off")

    # The same group command pushed onto gw-fan-c's own topic: authentic, but not for it.
    publish(mosquitto, "urbanedge/v1/test-site/gw-fan-c/command", saved.read_bytes())
    wait_for(lambda: ("gw-fan-c", "rejected") in results(fleet, cmd_id), 30, "gw-fan-c refuses")
    assert results(fleet, cmd_id)[("gw-fan-c", "rejected")]["reason"] == "not_for_us"
    # A command for gw-fan-c's own group, after: its result arriving shows it was listening all along,
    # and it took nothing from district-7 but the copy it refused.
    key, chain = load_private_key(pki.ioc_command_key), load_certs(pki.ioc_command_key.with_name("command.chain.pem"))
    own = new_command("on", group="district-9", now=time.time())
    publish(mosquitto, "urbanedge/v1/group/district-9/command", sign_command(own, key, chain))  # type: ignore[arg-type]
    wait_for(lambda: ("gw-fan-c", "done") in results(fleet, own.id_hex), 30, "gw-fan-c runs its group's command")
    assert {gw for gw, _ in results(fleet, own.id_hex)} == {"gw-fan-c"}
    assert [state for gw, state in results(fleet, cmd_id) if gw == "gw-fan-c"] == ["rejected"]
    # Each member took the district-7 command exactly once (accepted, done): one publish, no copies.
    assert sorted(results(fleet, cmd_id)) == [("gw-fan-a", "accepted"), ("gw-fan-a", "done"),
                                              ("gw-fan-b", "accepted"), ("gw-fan-b", "done"),
                                              ("gw-fan-c", "rejected")]


def test_cli_refuses_commands_without_a_target_and_bad_group_or_channel_names(tmp_path: Path) -> None:
    pki = testpki.shared_pki()
    keys = ["--key", str(pki.ioc_command_key), "--cert", str(pki.ioc_command_key.with_name("command.chain.pem"))]
    base = [sys.executable, "-m", "urbanedge", "ioc"]
    for args in (["command", *keys, "on"], ["command", *keys, "--gateway", "gw-1", "on"],
                 ["command", *keys, "--group", "a/b", "on"], ["command", *keys, "--group", "#", "on"],
                 ["receive", "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key), "--cert",
                  str(pki.ioc_recipient_cert), "--store", f"sqlite:{tmp_path / 'x.db'}",
                  "--channels", "security,cert"]):
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: "), (args, res.stderr)
