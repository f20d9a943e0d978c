"""Local lighting control end to end: a real Mosquitto, the agent as a process, a streetlight
simulator read over Modbus by the test. The schedule keeps dimming with the broker down; the
IOC gets the readings and the sealed ``lighting`` events afterwards; a signed ``schedule``
command changes the levels and survives a restart; a manual dim holds until ``lighting auto``,
also across a restart;
the ambient and traffic rules switch and boost the lamp; a dead controller is retried."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import plan_reads
from drivers.profiles import builtin_profiles
from tests.control.test_command_e2e import ioc_command, wait_result
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for

GW = "gw-cmd"  # the gateway ioc_command() addresses
VN = 7 * 3600
LAMP = [p for p in builtin_profiles()["streetlight"].points if p.name in ("lamp_on", "dim_level")]


def local(t: float) -> str:
    """``t`` as a schedule step time, HH:MM:SS in Vietnam."""
    sod = int(t + VN) % 86400
    return f"{sod // 3600:02d}:{sod // 60 % 60:02d}:{sod % 60:02d}"


def lamp(port: int) -> tuple[bool, int]:
    """(lamp_on, dim_level) of the simulator, read over Modbus like any master would."""
    async def read() -> tuple[bool, int]:
        bus = ModbusBus.tcp("127.0.0.1", port, timeout=1.0)
        try:
            values, _ = await bus.read_device(1, plan_reads(LAMP))
        finally:
            await bus.close()
        return bool(values["lamp_on"]), int(values["dim_level"])
    return asyncio.run(read())


def wait_lamp(port: int, want: tuple[bool, int] | tuple[bool], what: str, timeout: float = 30) -> float:
    """Wait until the lamp shows ``want`` ((on,) ignores the level); return when it was seen."""
    wait_for(lambda: lamp(port)[:len(want)] == want, timeout, what, step=0.1)
    return time.time()


def config(tmp_path: Path, broker: int, port: int, lighting: str) -> Path:
    root = testpki.shared_pki().root_cert
    buses = tcp_bus(port, [("light-1", "streetlight", 1)], interval=0.3, extra="retries = 0\n")
    return agent_config(tmp_path / "agent.toml", broker_port=broker, gateway_id=GW,
                        buses=f'[commands]\nenabled = true\nroot = "{root}"\n\n{lighting}\n{buses}')


def lighting_events(sub: Subscriber) -> list[dict[str, Any]]:
    return sorted((r for r in sub.of_type("event") if r["event"] == "lighting"), key=lambda r: float(r["ts"]))


@pytest.fixture
def sim() -> Iterator[tuple[SimProc, int]]:
    port = free_port()
    proc = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "3")
    try:
        yield proc, port
    finally:
        proc.stop()


def test_schedule_runs_offline_then_a_signed_schedule_and_manual_dim(
        tmp_path: Path, mosquitto: Mosquitto, sim: tuple[SimProc, int]) -> None:
    _, port = sim
    # A persistent session made before the outage gets what the agent sends once it is back.
    mosquitto.stop()
    mosquitto.persistence = True
    mosquitto.start()
    Subscriber(mosquitto.host, mosquitto.port).start(session="lighting-sub").stop()
    mosquitto.stop()
    now = time.time()
    step70, step_off = math.ceil(now) + 6, math.ceil(now) + 10  # whole seconds: steps are HH:MM:SS
    cfg = config(tmp_path, mosquitto.port, port, f"""
[lighting]
enabled = true
utc_offset = "+07:00"
period = 0.3
schedule = ["{local(now - 3600)}=30", "{local(step70)}=70", "{local(step_off)}=off"]
""")
    agent = AgentProc(cfg)
    sub: Subscriber | None = None
    agent.start()
    try:
        # The broker is down throughout: the gateway follows its schedule on its own.
        wait_lamp(port, (True, 30), "the first step: on at 30 %")
        assert wait_lamp(port, (True, 70), "the 70 % step") >= step70
        assert wait_lamp(port, (False,), "the off step") >= step_off
        assert mosquitto.proc is None and "event=lighting_change" in agent.log_text()

        mosquitto.start()
        sub = Subscriber(mosquitto.host, mosquitto.port).start(session="lighting-sub")
        wait_for(lambda: len(lighting_events(sub)) >= 3, 60, "the three lighting events after the outage")
        first, second, third = lighting_events(sub)[:3]
        assert [(e["lamp_on"], e["level"], e["reason"]) for e in (first, second, third)] == [
            (True, 30, "schedule"), (True, 70, "schedule"), (False, 70, "schedule")]
        assert all(e["device_id"] == "light-1" for e in (first, second, third))
        assert float(second["ts"]) >= step70 and float(third["ts"]) >= step_off

        def seen(t0: float, t1: float) -> set[tuple[bool, int]]:
            assert sub is not None
            return {(r["values"]["lamp_on"], r["values"]["dim_level"]) for r in sub.of_type("telemetry")
                    if r["device_id"] == "light-1" and t0 <= float(r["ts"]) < t1}
        # Readings polled during the outage show the levels, each in its own step.
        wait_for(lambda: (True, 70) in seen(float(second["ts"]) + 0.5, step_off)
                 and (False, 70) in seen(float(third["ts"]) + 0.5, time.time()), 30, "the readings of the outage")
        assert (True, 30) not in seen(float(second["ts"]) + 0.5, time.time())

        # A signed schedule replaces the configured one: one step, all day 55 %.
        rig = {"broker": mosquitto}
        assert ioc_command(rig, "schedule", "00:00=55").returncode == 0
        done = wait_result(sub, "done")
        assert (done["cmd"], done["schedule"]) == ("schedule", ["00:00=55"])
        wait_lamp(port, (True, 55), "the signed schedule's 55 %")
        assert json.loads((tmp_path / "lighting.json").read_text())["schedule"] == ["00:00=55"]
        res = ioc_command(rig, "schedule", "18:00=100", "25:00=off")
        assert res.returncode == 0, res.stderr
        bad = wait_result(sub, "rejected")
        assert bad["reason"] == "bad_args" and "25:00=off" in bad["detail"]

        # A manual dim holds (the next step is a day away) until `lighting auto`.
        assert ioc_command(rig, "--device", "light-1", "dim", "20").returncode == 0
        assert wait_result(sub, "done", 2)["cmd"] == "dim"
        time.sleep(1.5)  # five lighting periods: it would have put 55 back by now
        assert lamp(port) == (True, 20)
        assert ioc_command(rig, "lighting", "auto").returncode == 0
        assert wait_result(sub, "done", 3)["mode"] == "auto"
        wait_lamp(port, (True, 55), "55 % again after lighting auto")

        # The commanded schedule survives a restart.
        agent.stop()
        agent.start()
        wait_for(lambda: "event=lighting_started devices=light-1 schedule=00:00=55 source=state"
                 in agent.log_text(), 30, "the agent back on the commanded schedule")
        assert lamp(port) == (True, 55)

        # So does an operator's manual dim: a restart does not put the schedule's 55 % back.
        assert ioc_command(rig, "--device", "light-1", "dim", "25").returncode == 0
        assert wait_result(sub, "done", 4)["cmd"] == "dim"
        wait_for(lambda: "light-1" in json.loads((tmp_path / "lighting.json").read_text())["holds"], 30,
                 "the hold in the state file")
        agent.stop()
        agent.start()
        wait_for(lambda: agent.log_text().count("event=lighting_started") == 3, 30, "the agent back again")
        time.sleep(1.5)  # five lighting periods after the start: 55 % would be back by now
        assert lamp(port) == (True, 25)
        assert ioc_command(rig, "lighting", "auto").returncode == 0
        wait_lamp(port, (True, 55), "55 % once the hold is dropped")
        assert json.loads((tmp_path / "lighting.json").read_text())["holds"] == {}
        assert agent.alive() and "Traceback" not in agent.log_text()
    finally:
        agent.stop()
        if sub is not None:
            sub.stop()
    assert sub.rejected == [], sub.rejected


def test_ambient_light_switches_off_and_traffic_boosts(
        tmp_path: Path, mosquitto: Mosquitto, sim: tuple[SimProc, int]) -> None:
    proc, port = sim
    proc.control("set ambient_lux 5")  # dark, whatever the hour of the test run
    proc.control("set traffic_count 0")
    cfg = config(tmp_path, mosquitto.port, port, """
[lighting]
enabled = true
period = 0.3
schedule = ["00:00=40"]
[lighting.ambient]
on_below = 30
off_above = 80
dwell = 1
[lighting.traffic]
above = 20
boost = 90
hold = 2
""")
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agent = AgentProc(cfg)
    agent.start()
    try:
        wait_lamp(port, (True, 40), "on at the schedule's 40 %")
        proc.control("set traffic_count 35")
        wait_lamp(port, (True, 90), "the traffic boost to 90 %")
        proc.control("set traffic_count 2")
        wait_lamp(port, (True, 40), "back to 40 % after the hold")
        proc.control("set ambient_lux 900")
        wait_lamp(port, (False,), "off in daylight")
        wait_for(lambda: [e["reason"] for e in lighting_events(sub)] == ["schedule", "traffic", "schedule", "ambient"],
                 30, "the four lighting events")
        assert [(e["lamp_on"], e["level"]) for e in lighting_events(sub)] == [
            (True, 40), (True, 90), (True, 40), (False, 40)]
        proc.control("set ambient_lux 5")
        wait_lamp(port, (True, 40), "on again in the dark")

        # The controller dies: the wanted 60 % cannot be written; logged, retried, agent fine.
        proc.stop()
        assert ioc_command({"broker": mosquitto}, "schedule", "00:00=60").returncode == 0
        wait_result(sub, "done")
        wait_for(lambda: agent.log_text().count("event=lighting_write_failed device=light-1") >= 2, 30,
                 "the failed write, then its retry")
        assert "retry_in=" in agent.log_text()
        assert agent.alive() and "Traceback" not in agent.log_text()
    finally:
        agent.stop()
        sub.stop()


def test_cli_schedule_and_lighting_need_their_params() -> None:
    base = [sys.executable, "-m", "urbanedge", "ioc", "command", "--gateway", GW, "--site", "test-site"]
    for args in (["schedule"], ["lighting"], ["lighting", "auto", "now"]):
        res = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: "), (args, res.stderr)
