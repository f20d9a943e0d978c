"""Remote configuration end to end: the IOC CLI encrypts a new agent.toml to the gateway and
signs it; a real agent process (on a real Mosquitto, polling a real streetlight simulator)
validates it, switches atomically, and proves it on trial: kept when the uplink and the bus
work, rolled back by itself when they do not (and when it cannot even start), also across
a SIGKILL. The IOC sees every outcome as a sealed ``config_status`` event."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from paho.mqtt.enums import CallbackAPIVersion

from pki.command import new_command, sign_command
from pki.keys import load_cert, load_certs, load_private_key
from pki.sealed_args import seal_args
from tests.support import procs, testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for

GW, SITE = "gw-rcfg", "test-site"


def commands_toml() -> str:
    return f'[commands]\nenabled = true\nroot = "{testpki.shared_pki().root_cert}"\n\n'


def write_config(path: Path, broker_port: int, sim_port: int, *, interval: float = 0.3, seal: str = "",
                 extra: str = "") -> Path:
    buses = commands_toml() + extra + tcp_bus(sim_port, [("light-1", "streetlight", 1)], interval=interval,
                                              extra="retries = 0\n")
    agent_config(path, broker_port=broker_port, buses=buses, gateway_id=GW)
    if seal:
        path.write_text(path.read_text().replace(testpki.seal_toml(GW), seal))
    return path


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[dict[str, Any]]:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "7")
    cfg = write_config(tmp_path / "agent.toml", mosquitto.port, port)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agent = AgentProc(cfg)
    agent.start()
    try:
        wait_for(lambda: any(r.get("device_id") == "light-1" for r in sub.of_type("telemetry")), 30,
                 "first streetlight reading")
        yield {"sim_port": port, "sub": sub, "agent": agent, "broker": mosquitto, "dir": tmp_path, "cfg": cfg}
    finally:
        agent.stop()
        sub.stop()
        sim.stop()


def ioc_command(rig: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    broker: Mosquitto = rig["broker"]
    return procs.ioc_command(broker.host, broker.port, GW, SITE, *args)


def send_config(rig: dict[str, Any], new: Path, deadline: float) -> None:
    res = ioc_command(rig, "--encrypt-to", str(testpki.device(GW).chain), "config", str(new), str(deadline))
    assert res.returncode == 0, res.stderr


def publish_raw(rig: dict[str, Any], data: bytes) -> None:
    broker: Mosquitto = rig["broker"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(f"urbanedge/v1/{SITE}/{GW}/command", data, qos=1).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def signed(cmd: str, args: dict[str, Any]) -> bytes:
    pki = testpki.shared_pki()
    key = load_private_key(pki.ioc_command_key)
    chain = load_certs(pki.ioc_command_key.with_name("command.chain.pem"))
    return sign_command(new_command(cmd, args, device=GW, now=time.time()), key, chain)  # type: ignore[arg-type]


def events(sub: Subscriber, name: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in sub.of_type("event")
            if r["event"] == name and all(r.get(k) == v for k, v in match.items())]


def wait_event(sub: Subscriber, name: str, timeout: float = 30, **match: Any) -> dict[str, Any]:
    wait_for(lambda: bool(events(sub, name, **match)), timeout, f"{name} {match}")
    return events(sub, name, **match)[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reading_after(sub: Subscriber, ts: float) -> bool:
    return any(r.get("device_id") == "light-1" and r["ts"] > ts and r["quality"] == "good"
               for r in sub.of_type("telemetry"))


def test_bad_config_commands_are_rejected_and_a_good_one_is_applied(rig: dict[str, Any]) -> None:
    sub: Subscriber = rig["sub"]
    cfg: Path = rig["cfg"]
    before = sha(cfg)
    good = write_config(rig["dir"] / "next.toml", rig["broker"].port, rig["sim_port"], interval=1.7)

    # In clear: refused before anything is looked at (it would have carried the broker password).
    publish_raw(rig, signed("config", {"toml": good.read_text()}))
    assert wait_event(sub, "command_result", state="rejected", cmd="config")["reason"] == "not_encrypted"
    # Encrypted to another gateway's certificate.
    other = load_cert(testpki.device("gw-someone-else").chain)
    key = other.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    publish_raw(rig, signed("config", seal_args({"toml": good.read_text()}, key, other.public_bytes(Encoding.DER))))
    wait_for(lambda: len(events(sub, "command_result", state="rejected")) >= 2, 30, "second rejection")
    assert events(sub, "command_result", state="rejected")[1]["reason"] == "undecryptable"
    # Fails validation on the gateway (its profiles): the field is named; then one that would
    # make it another gateway.
    bad = rig["dir"] / "bad.toml"
    bad.write_text(good.read_text().replace('profile = "streetlight"', 'profile = "no-such-profile"'))
    send_config(rig, bad, 30)
    wait_for(lambda: len(events(sub, "command_result", state="rejected")) >= 3, 30, "third rejection")
    invalid = events(sub, "command_result", state="rejected")[2]
    assert invalid["reason"] == "invalid_config" and "buses[0].devices[0].profile" in invalid["detail"]
    bad.write_text(good.read_text().replace('site = "test-site"', 'site = "elsewhere"'))
    send_config(rig, bad, 30)
    wait_for(lambda: len(events(sub, "command_result", state="rejected")) >= 4, 30, "fourth rejection")
    fixed = events(sub, "command_result", state="rejected")[3]
    assert fixed["reason"] == "invalid_config" and "identity.site" in fixed["detail"]
    # Security events travel on their own topic: they may land after the results.
    wait_for(lambda: {r["reason"] for r in events(sub, "security")} >= {"not_encrypted", "undecryptable",
                                                                        "invalid_config"}, 30, "security events")
    assert sha(cfg) == before and rig["agent"].alive()

    # A good one: on trial, then applied; the agent restarted on it (its inventory says 1.7 s).
    send_config(rig, good, 30)
    done = wait_event(sub, "command_result", state="done", cmd="config")
    assert done["config"] == "trial"
    applied = wait_event(sub, "config_status", state="applied")
    assert applied["id"] == done["id"] and applied["sha256"] == sha(good) == sha(cfg)
    latest = max(events(sub, "agent_started"), key=lambda e: e["seq"])
    assert latest["devices"][0]["interval"] == 1.7
    assert (rig["dir"] / "agent.toml.prev").read_bytes() != cfg.read_bytes()
    assert not (rig["dir"] / "agent.toml.trial.json").exists()
    assert rig["agent"].alive() and "Traceback" not in rig["agent"].log_text()
    # The same file again: nothing to try.
    send_config(rig, good, 30)
    wait_for(lambda: len(events(sub, "command_result", state="done", cmd="config")) >= 2, 30, "second done")
    assert events(sub, "command_result", state="done", cmd="config")[1]["config"] == "unchanged"


def test_configs_that_cut_the_uplink_or_the_bus_or_cannot_start_roll_back(rig: dict[str, Any]) -> None:
    sub: Subscriber = rig["sub"]
    cfg: Path = rig["cfg"]
    original = sha(cfg)
    # (reason, config, deadline): the bus case needs the uplink proven first, so a little longer.
    cases = [
        ("uplink", write_config(rig["dir"] / "dead-broker.toml", free_port(), rig["sim_port"]), 3),
        ("buses", write_config(rig["dir"] / "dead-bus.toml", rig["broker"].port, free_port()), 5),
        ("start", write_config(rig["dir"] / "bad-key.toml", rig["broker"].port, rig["sim_port"],
                               seal=testpki.seal_toml(GW).replace(".key", ".missing-key")), 3),
    ]
    for n, (reason, new, deadline) in enumerate(cases, 1):
        send_config(rig, new, deadline)
        wait_for(lambda n=n: len(events(sub, "config_status", state="rolled-back")) >= n, 40,  # type: ignore[misc]
                 f"roll-back {n} ({reason})")
        back = events(sub, "config_status", state="rolled-back")[n - 1]
        assert back["reason"] == reason and back["sha256"] == sha(new), back
        assert sha(cfg) == original
        # Back online on the old config: a fresh reading arrives after the report.
        wait_for(lambda b=back: reading_after(sub, b["ts"]), 30, "a reading after the roll-back")  # type: ignore[misc]
    assert rig["agent"].alive()


def test_a_trial_interrupted_by_sigkill_still_decides(rig: dict[str, Any]) -> None:
    sub: Subscriber = rig["sub"]
    cfg: Path = rig["cfg"]
    agent: AgentProc = rig["agent"]
    original = sha(cfg)
    dead = write_config(rig["dir"] / "dead-broker.toml", free_port(), rig["sim_port"])
    send_config(rig, dead, 4)
    wait_for(lambda: "event=config_on_trial" in agent.log_text(), 30, "the agent running the config on trial")
    agent.kill9()
    assert sha(cfg) == sha(dead) and (rig["dir"] / "agent.toml.trial.json").exists()
    agent.start()
    back = wait_event(sub, "config_status", 40, state="rolled-back")
    assert back["reason"] in ("uplink", "deadline") and sha(cfg) == original
    wait_for(lambda: reading_after(sub, back["ts"]), 30, "a reading after the roll-back")


def test_cli_refuses_a_config_in_clear_or_one_that_does_not_validate(tmp_path: Path) -> None:
    good = write_config(tmp_path / "agent.toml", 1883, 502)
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("unit = 1", "unit = 1\noffline_after = 500"))
    base = [sys.executable, "-m", "urbanedge", "ioc", "command", "--gateway", GW, "--site", SITE]
    enc = ["--encrypt-to", str(testpki.device(GW).chain)]
    for args, says in ((["config", str(good)], "--encrypt-to"),
                       ([*enc, "config", str(bad)], "buses[0].devices[0].offline_after"),
                       ([*enc, "config", str(good), "0.5"], "deadline"),
                       (["--encrypt-to", str(testpki.device("gw-other").chain), "config", str(good)], "gw-other"),
                       ([*enc, "config", str(tmp_path / "missing.toml")], "cannot read")):
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and says in res.stderr, (args, res.stderr)


def test_under_the_launcher_the_agent_switches_in_its_own_process(tmp_path: Path, mosquitto: Mosquitto) -> None:
    # `urbanedge launch` execs `urbanedge run` (as under systemd): the switch and the trial happen
    # inside that process, which neither exits nor needs the launcher to come back; systemd is
    # told it is a reload (never STOPPING=1, which would make it stop the unit).
    notify_name = f"@urbanedge-rcfg-{os.getpid()}-{os.urandom(4).hex()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(b"\0" + notify_name[1:].encode())
    port = free_port()
    slots = '[update]\nslots = "slots"\nstate_dir = "update-state"\n\n'
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "7")
    cfg = write_config(tmp_path / "agent.toml", mosquitto.port, port, extra=slots)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    log = (tmp_path / "launch.log").open("ab")
    launched = subprocess.Popen([sys.executable, "-m", "urbanedge", "launch", "-c", str(cfg)], stdout=log, stderr=log,
                                env={**os.environ, "NOTIFY_SOCKET": notify_name})
    log.close()
    rig = {"broker": mosquitto}
    try:
        wait_for(lambda: any(r.get("device_id") == "light-1" for r in sub.of_type("telemetry")), 30, "first reading")
        good = write_config(tmp_path / "next.toml", mosquitto.port, port, interval=1.3, extra=slots)
        send_config(rig, good, 30)
        assert wait_event(sub, "config_status", state="applied")["sha256"] == sha(cfg) == sha(good)
        assert launched.poll() is None
        assert "event=launch slot=factory" in (tmp_path / "launch.log").read_text()
        states = []
        while True:
            try:
                states += [m.split("\n")[0] for m in [notify.recv(4096, socket.MSG_DONTWAIT).decode()]]
            except BlockingIOError:
                break
        assert [m for m in states if m != "WATCHDOG=1"] == ["READY=1", "RELOADING=1", "READY=1"]
    finally:
        notify.close()
        stop_process(launched, grace=20)
        sub.stop()
        sim.stop()
