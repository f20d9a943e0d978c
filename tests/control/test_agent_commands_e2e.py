"""The device and agent commands end to end (agent/control/agent_commands.py): the IOC CLI, a
real Mosquitto, the agent as a real process (under `urbanedge launch --supervise` where it
must come back), and real water-meter and flood-sensor simulators on two buses.

read-now answers with values and a marked reading; a valve at 0 stops the flow; a raised
flood threshold clears the alarm (and a lowered one raises it), survives a restart, and is
refused for flag alarms and non-numbers; rebirth re-announces; restart comes back still
refusing the old command; reboot runs its (harmless) command after reporting."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.control.test_command_e2e import GW, ioc_command, results, wait_result
from tests.integration.test_gateway_update import Gateway
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for


def config(tmp_path: Path, broker: Mosquitto, meter_port: int, flood_port: int, *, reboot: Path | None) -> Path:
    reboot_line = ""
    if reboot is not None:
        argv = [sys.executable, "-c", f"import pathlib; pathlib.Path({str(reboot)!r}).write_text('rebooted')"]
        reboot_line = f"reboot_command = {json.dumps(argv)}\n"
    text = f"""
[commands]
enabled = true
root = "{testpki.shared_pki().root_cert}"
{reboot_line}
[update]
slots = "slots"
state_dir = "update"

""" + tcp_bus(meter_port, [("wm-1", "water-meter", 1)], interval=0.3, name="meters", extra="retries = 0\n") \
        + tcp_bus(flood_port, [("flood-1", "flood-sensor", 1)], interval=0.3, name="canal", extra="retries = 0\n")
    return agent_config(tmp_path / "agent.toml", broker_port=broker.port, buses=text, gateway_id=GW)


@pytest.fixture
def sims() -> Iterator[dict[str, Any]]:
    mp, fp = free_port(), free_port()
    meter = SimProc.start("water-meter", "--tcp", f"127.0.0.1:{mp}", "--units", "1", "--seed", "5")
    flood = SimProc.start("flood-sensor", "--tcp", f"127.0.0.1:{fp}", "--units", "1", "--seed", "5")
    try:
        yield {"meter": meter, "flood": flood, "meter_port": mp, "flood_port": fp}
    finally:
        meter.stop()
        flood.stop()


def telemetry(sub: Subscriber, device: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [r for r in sub.of_type("telemetry") if r["device_id"] == device and r["ts"] > after]


def alarms(sub: Subscriber, name: str, after: float = 0.0) -> list[str]:
    return [r["state"] for r in sub.of_type("alarm") if r["alarm"] == name and r["ts"] > after]


def test_read_now_valve_threshold_and_bad_input(tmp_path: Path, mosquitto: Mosquitto,
                                                 sims: dict[str, Any]) -> None:
    cfg = config(tmp_path, mosquitto, sims["meter_port"], sims["flood_port"], reboot=None)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agent = AgentProc(cfg)
    agent.start()
    rig = {"broker": mosquitto}
    n_done = 0

    def done(*args: str) -> dict[str, Any]:
        nonlocal n_done
        res = ioc_command(rig, *args)
        assert res.returncode == 0, res.stderr
        n_done += 1
        return wait_result(sub, "done", n_done)

    try:
        wait_for(lambda: telemetry(sub, "wm-1") and telemetry(sub, "flood-1"), 30, "first readings")

        # read-now: values in the result, and the reading itself, marked, the normal way.
        r = done("--device", "wm-1", "read-now")
        assert r["cmd"] == "read-now" and r["devices"] == {"wm-1": "done"} and r["quality"] == {"wm-1": "good"}
        assert {"totaliser", "flow", "valve_position", "valve_setpoint"} <= set(r["values"]["wm-1"])
        wait_for(lambda: any(t.get("command_id") == r["id"] for t in telemetry(sub, "wm-1")), 30,
                 "the read-now reading")
        marked = next(t for t in telemetry(sub, "wm-1") if t.get("command_id") == r["id"])
        assert marked["trigger"] == "read-now" and marked["values"]["totaliser"] == r["values"]["wm-1"]["totaliser"]
        assert sum(1 for t in telemetry(sub, "wm-1") if "trigger" in t) == 1  # scheduled polls are not marked

        # The valve: a leak keeps water flowing; closing the valve stops it.
        sims["meter"].control("alarm leak")
        wait_for(lambda: any(t["values"].get("flow", 0) > 0 for t in telemetry(sub, "wm-1", r["ts"])), 30,
                 "flow from the leak")
        v = done("valve", "0")
        assert v["devices"] == {"wm-1": "done"} and v["values"] == {"wm-1": 0}
        wait_for(lambda: any(t["values"].get("valve_position") == 0 and t["values"]["flow"] == 0
                             for t in telemetry(sub, "wm-1", v["ts"])), 30, "valve closed, no flow")

        # Threshold: level held at 170 cm raises flood_alert (150); raised to 180 it clears;
        # lowered to 160 it is raised again.
        sims["flood"].control("set water_level 170")
        wait_for(lambda: alarms(sub, "flood_alert") == ["raised"], 30, "flood_alert raised at 170 cm")
        t1 = done("--device", "flood-1", "threshold", "flood_alert", "180")
        assert (t1["alarm"], t1["reset"], t1["devices"]) == ("flood_alert", False,
                                                             {"flood-1": {"old": 150.0, "new": 180.0}})
        wait_for(lambda: alarms(sub, "flood_alert", t1["ts"]) == ["cleared"], 30, "flood_alert cleared")
        cleared = next(a for a in sub.of_type("alarm") if a["alarm"] == "flood_alert" and a["state"] == "cleared")
        assert cleared["threshold"] == 180
        saved = json.loads((tmp_path / "commands.db").with_name("thresholds.json").read_text())
        assert saved == {"v": 1, "overrides": {"flood-1": {"flood_alert": 180.0}}}
        t2 = done("threshold", "flood_alert", "160")  # no --device: every device with the alarm
        assert t2["devices"] == {"flood-1": {"old": 180.0, "new": 160.0}}
        wait_for(lambda: alarms(sub, "flood_alert", t2["ts"]) == ["raised"], 30, "flood_alert raised at 160")
        t3 = done("threshold", "flood_alert", "default")
        assert (t3["reset"], t3["devices"]) == (True, {"flood-1": {"old": 160.0, "new": 150.0}})

        # Bad input: each refused with its reason; nothing changes, the agent keeps running.
        bad = [
            (("threshold", "leak", "1"), "threshold", "bad_args"),                 # a flag alarm
            (("threshold", "flood_alert", "nan"), "threshold", "bad_args"),        # not finite
            (("threshold", "flood_alrt", "170"), "threshold", "bad_args"),         # no such alarm
            (("--device", "wm-1", "threshold", "flood_alert", "170"), "threshold", "bad_args"),
            (("--device", "gauge-9", "read-now"), "read-now", "unknown_device"),
            (("valve", "150"), "valve", "out_of_range"),
            (("write", "valve_setpoint", "101"), "write", "out_of_range"),      # the profile's max
            (("write", "valve_position", "10"), "write", "read_only"),
            (("reboot",), "reboot", "unsupported"),                             # no reboot_command here
        ]
        for i, (args, cmd, reason) in enumerate(bad, 1):
            res = ioc_command(rig, *args)
            assert res.returncode == 0, res.stderr
            got = wait_result(sub, "rejected", i)
            assert (got["cmd"], got["reason"]) == (cmd, reason), got
        assert json.loads((tmp_path / "thresholds.json").read_text())["overrides"] == {}

        # A device that does not answer: read-now fails with the reason, with what did answer.
        sims["flood"].stop()
        res = ioc_command(rig, "read-now")
        assert res.returncode == 0, res.stderr
        failed = wait_result(sub, "failed")
        assert failed["reason"].startswith("device_") and failed["devices"]["wm-1"] == "done", failed
        assert "flood-1" in failed["detail"] and "wm-1" in failed["values"]
        assert agent.alive() and "Traceback" not in agent.log_text()
    finally:
        agent.stop()
        sub.stop()


def started(sub: Subscriber) -> list[dict[str, Any]]:
    return [r for r in sub.of_type("event") if r["event"] == "agent_started"]


def test_rebirth_restart_and_reboot(tmp_path: Path, mosquitto: Mosquitto, sims: dict[str, Any]) -> None:
    marker = tmp_path / "rebooted"
    cfg = config(tmp_path, mosquitto, sims["meter_port"], sims["flood_port"], reboot=marker)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    gw = Gateway(cfg)
    gw.start()
    rig = {"broker": mosquitto}
    try:
        wait_for(lambda: telemetry(sub, "flood-1") and len(started(sub)) == 1, 60, "the agent's start")

        # rebirth: the birth again, and the inventory sealed.
        births = len(sub.settle().births)
        assert ioc_command(rig, "rebirth").returncode == 0
        rb = wait_result(sub, "done", 1)
        assert rb["cmd"] == "rebirth" and rb["birth"] == "published"
        wait_for(lambda: len(sub.settle().births) > births, 30, "a second birth message")
        ev = next(r for r in sub.of_type("event") if r["event"] == "agent_rebirth")
        assert ev["command_id"] == rb["id"] and [d["device_id"] for d in ev["devices"]] == ["wm-1", "flood-1"]

        # A threshold set before the restart holds after it: 170 cm would raise flood_alert at 150.
        assert ioc_command(rig, "threshold", "flood_alert", "180").returncode == 0
        wait_result(sub, "done", 2)
        sims["flood"].control("set water_level 170")

        saved = tmp_path / "restart.cose"
        assert ioc_command(rig, "--out", str(saved), "restart").returncode == 0
        rs = wait_result(sub, "done", 3)
        assert rs["cmd"] == "restart" and rs["action"] == "restarting"
        wait_for(lambda: len(started(sub)) == 2, 60, "the agent back after the restart")
        assert "event=agent_exited code=75" in gw.text()
        # The broker had acknowledged `done` before the agent stopped: the IOC heard it then.
        assert f"event=command_result_sent id={rs['id']} cmd=restart acked=True" in gw.text()
        back = started(sub)[1]["ts"]
        wait_for(lambda: any(t["values"].get("water_level", 0) > 165 for t in telemetry(sub, "flood-1", back)), 30,
                 "a 170 cm reading after the restart")
        assert alarms(sub, "flood_alert") == []  # 180 came back from thresholds.json
        # The replay store came back too: the same signed restart is refused.
        assert ioc_command(rig, "--publish", str(saved)).returncode == 0
        again = wait_result(sub, "rejected", 1)
        assert (again["id"], again["reason"]) == (rs["id"], "replayed")

        # reboot: reported done, then the configured command runs (here: writes a marker).
        assert ioc_command(rig, "reboot").returncode == 0
        rb2 = wait_result(sub, "done", 4)
        assert rb2["cmd"] == "reboot" and rb2["action"] == "rebooting"
        wait_for(marker.exists, 30, "the reboot command's marker")
        assert marker.read_text() == "rebooted"
        assert [r["state"] for r in results(sub) if r["id"] == rb2["id"]] == ["accepted", "done"]
        assert "Traceback" not in gw.text()
    finally:
        gw.stop()
        sub.stop()
        print(gw.text()[-20000:])  # pytest shows it only when the test failed
