"""In process: what the agent-level commands add to the runner and the planner (``after``
runs only once ``done`` is recorded, ``failed`` carries partial details, writes respect a
point's ``min``/``max``, ``valve``), the saved-threshold loader's tolerance of a bad file,
and the IOC CLI's new actions."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import pytest

from agent.config import Device as Dev
from agent.config import ModbusTcpBus
from agent.control.agent_commands import AgentCommands, load_thresholds
from agent.control.executor import CommandFailed, FieldDevice, Handler, plan
from agent.poll.coordinator import BusCoordinator
from drivers.errors import ProfileError
from drivers.modbus.client import ModbusBus
from drivers.profiles import builtin_profiles, load_profile
from ioc.command import CommandUsageError, add_parser, build
from pki.command import Command, CommandError, new_command
from tests.control.test_command_runner import Records, runner
from tests.unit.test_command_verify import GW, NOW, signed


def test_after_runs_once_done_is_recorded_and_never_after_a_failure(tmp_path: Path) -> None:
    out = Records()
    seen: list[list[tuple[str, str | None]]] = []

    async def after(_c: Command) -> None:
        seen.append(out.results())  # what was already recorded when it ran

    async def fail(_c: Command) -> None:
        raise CommandFailed("device_timeout", "wm-2: device_timeout", {"values": {"wm-1": {"flow": 0.5}}})

    async def go() -> list[str]:
        handlers = {"restart": Handler(after=after), "read-now": Handler(run=fail, after=after)}
        r = runner(tmp_path, out, handlers=handlers)
        return [await r.handle(signed(new_command(c, device=GW, now=NOW))) for c in ("restart", "read-now")]

    assert asyncio.run(go()) == ["done", "failed"]
    assert seen == [[("accepted", None), ("done", None)]]
    failed = next(r for r in out.items if r.get("state") == "failed")
    assert failed["values"] == {"wm-1": {"flow": 0.5}} and failed["detail"] == "wm-2: device_timeout"


def meter() -> dict[str, FieldDevice]:
    bus = ModbusBus.tcp("127.0.0.1", 1, timeout=0.1)
    return {"wm-1": FieldDevice("wm-1", builtin_profiles()["water-meter"], 1, bus, asyncio.Lock())}


def test_valve_and_writes_within_the_profile_range() -> None:
    (w,) = plan(new_command("valve", {"level": 40.4}, device=GW, now=NOW), meter())
    assert (w.device, w.point.name, w.value) == ("wm-1", "valve_setpoint", 40)
    for cmd, reason in ((new_command("valve", {"level": 101}, device=GW, now=NOW), "out_of_range"),
                        (new_command("valve", {"level": "open"}, device=GW, now=NOW), "bad_args"),
                        (new_command("write", {"point": "valve_setpoint", "value": 100.5}, device=GW, now=NOW),
                         "out_of_range"),
                        (new_command("write", {"point": "valve_setpoint", "value": -1}, device=GW, now=NOW),
                         "out_of_range"),
                        (new_command("write", {"point": "valve_position", "value": 3}, device=GW, now=NOW),
                         "read_only")):
        with pytest.raises(CommandError) as exc:
            plan(cmd, meter())
        assert exc.value.reason == reason, cmd
    (w,) = plan(new_command("write", {"point": "valve_setpoint", "value": 100}, device=GW, now=NOW), meter())
    assert w.value == 100


def test_min_max_only_on_writable_points(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text('name = "x"\nkind = "x"\n[[points]]\nname = "level"\ntable = "input"\naddress = 0\nmax = 3\n')
    with pytest.raises(ProfileError, match="only for writable"):
        load_profile(f)
    f.write_text('name = "x"\nkind = "x"\n[[points]]\nname = "sp"\ntable = "holding"\naddress = 0\n'
                 'writable = true\nmin = 5\nmax = 3\n')
    with pytest.raises(ProfileError, match="must not exceed"):
        load_profile(f)


def flood_bus() -> list[BusCoordinator]:
    async def sink(_r: object) -> None:
        return None

    bus = ModbusTcpBus.model_validate({"name": "canal", "type": "modbus-tcp", "host": "127.0.0.1", "port": 1})
    dev = Dev.model_validate({"id": "flood-1", "profile": "flood-sensor", "alarms": {"flood_danger": 210}})
    return [BusCoordinator(bus, [(dev, builtin_profiles()["flood-sensor"])], sink)]


def test_saved_thresholds_apply_and_a_bad_file_is_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "thresholds.json"
    coords = flood_bus()
    assert load_thresholds(path, coords) == {}  # none saved yet
    path.write_text('{"v": 1, "overrides": {"flood-1": {"flood_alert": 120, "battery_low": 3.5, "leak": 1},'
                    ' "gone-7": {"flood_alert": 1}}}')
    kept = load_thresholds(path, coords)
    assert kept == {"flood-1": {"flood_alert": 120.0, "battery_low": 3.5}}
    alarms = coords[0].pollers[0].alarms
    assert (alarms.threshold("flood_alert"), alarms.threshold("flood_danger")) == (120.0, 210)
    assert "event=thresholds_skipped" in caplog.text and "gone-7.flood_alert" in caplog.text
    path.write_text("{ torn")
    assert load_thresholds(path, flood_bus()) == {}
    assert "event=thresholds_unreadable" in caplog.text


def args(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["command", "--gateway", GW, "--site", "s", *words])


def test_cli_actions_make_the_args_the_gateway_reads() -> None:
    assert build(args("valve", "0"), NOW).args == {"level": 0}
    assert build(args("threshold", "flood_alert", "120.5"), NOW).args == {"alarm": "flood_alert", "value": 120.5}
    assert build(args("threshold", "flood_alert", "default"), NOW).args == {"alarm": "flood_alert", "value": None}
    for cmd in ("read-now", "rebirth", "restart", "reboot"):
        c = build(args(cmd), NOW)
        assert (c.cmd, c.args) == (cmd, {})
    for bad in (("valve", "true"), ("threshold", "flood_alert", "off"), ("threshold", "flood_alert"),
                ("restart", "now")):
        with pytest.raises(CommandUsageError):
            build(args(*bad), NOW)


def test_a_reboot_command_that_fails_is_reported_after_done_and_offline_rebirth_waits(tmp_path: Path) -> None:
    out = Records()

    async def offline() -> bool:
        return False

    def cmds(reboot: list[str] | None) -> AgentCommands:
        return AgentCommands(gateway_id=GW, coordinators=[], append=out.append, thresholds_file=tmp_path / "t.json",
                             overrides={}, rebirth=offline, inventory={"devices": []}, reboot_command=reboot,
                             read_timeout=1.0)

    async def go() -> list[str]:
        r = runner(tmp_path, out, handlers={**cmds([sys.executable, "-c", "raise SystemExit(3)"]).handlers()})
        states = [await r.handle(signed(new_command(c, device=GW, now=NOW))) for c in ("reboot", "rebirth")]
        r2 = runner(tmp_path / "2", out, handlers=cmds(None).handlers())
        return [*states, await r2.handle(signed(new_command("reboot", device=GW, now=NOW)))]

    (tmp_path / "2").mkdir()
    assert asyncio.run(go()) == ["done", "done", "rejected"]
    kinds = [(r["event"], r.get("state"), r.get("cmd")) for r in out.items]
    assert kinds[:3] == [("command_result", "accepted", "reboot"), ("command_result", "done", "reboot"),
                         ("reboot_failed", None, None)]
    assert "exit 3" in out.items[2]["reason"]
    assert next(r for r in out.items if r.get("cmd") == "rebirth" and r["state"] == "done")["birth"] == "next_connect"
    assert [r["event"] for r in out.items].count("agent_rebirth") == 1
    assert next(r for r in out.items if r.get("state") == "rejected")["reason"] == "unsupported"
