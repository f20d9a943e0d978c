"""The command runner in-process: results and security events as records, the replay store
on disk, agent-level handlers, and a write to a device that does not answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.buffer.outbox_types import AppendResult
from agent.buffer.records import NewRecord
from agent.control.executor import CommandFailed, CommandRunner, FieldDevice, Handler
from agent.control.replay import ReplayStore
from drivers.modbus.client import ModbusBus
from drivers.profiles import builtin_profiles
from pki.command import Command, CommandError, new_command
from tests.support.ports import free_port
from tests.unit.test_command_verify import GW, NOW, policy, signed


class Records:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    async def append(self, records: list[NewRecord]) -> AppendResult:
        first = len(self.items) + 1
        self.items += [json.loads(r.body) for r in records]
        return AppendResult(seqs=list(range(first, len(self.items) + 1)), evicted=0, dropped=0)

    def results(self) -> list[tuple[str, str | None]]:
        return [(r["state"], r["reason"]) for r in self.items if r["event"] == "command_result"]


def runner(tmp_path: Path, out: Records, **kw: Any) -> CommandRunner:
    bus = ModbusBus.tcp("127.0.0.1", free_port(), timeout=0.3)  # nothing listens there
    devices = {"light-1": FieldDevice("light-1", builtin_profiles()["streetlight"], 1, bus, asyncio.Lock())}
    return CommandRunner(policy(), ReplayStore(tmp_path / "commands.db"), devices, out.append,
                         write_timeout=3.0, clock=lambda: NOW + 1, **kw)


def test_expired_command_is_reported_with_its_id_and_a_security_event(tmp_path: Path) -> None:
    out = Records()
    cmd = new_command("on", device=GW, now=NOW - 600, ttl=60)
    assert asyncio.run(runner(tmp_path, out).handle(signed(cmd))) == "rejected"
    result, sec = out.items
    assert (result["event"], result["state"], result["reason"], result["id"]) == \
        ("command_result", "rejected", "expired", cmd.id.hex())
    assert (sec["event"], sec["category"], sec["reason"], sec["signer"]) == \
        ("security", "command_rejected", "expired", "ioc-command")


def test_device_not_answering_fails_with_the_reason(tmp_path: Path) -> None:
    out = Records()
    r = runner(tmp_path, out)
    assert asyncio.run(r.handle(signed(new_command("dim", {"level": 30}, device=GW, now=NOW)))) == "failed"
    assert out.results() == [("accepted", None), ("failed", "device_connection")]
    assert r.results["failed"] == 1 and r.last is not None and r.last["state"] == "failed"


def test_handlers_run_agent_commands_once(tmp_path: Path) -> None:
    out, seen = Records(), []
    data = signed(new_command("update-check", device=GW, now=NOW))

    async def note(c: Command) -> None:
        seen.append(c.cmd)

    async def twice() -> tuple[str, str]:
        r = runner(tmp_path, out, handlers={"update-check": Handler(run=note)})
        return await r.handle(data), await r.handle(data)

    assert asyncio.run(twice()) == ("done", "rejected")
    assert seen == ["update-check"]
    assert out.results() == [("accepted", None), ("done", None), ("rejected", "replayed")]


def test_handler_check_rejects_and_run_failure_is_reported(tmp_path: Path) -> None:
    out = Records()

    def check(c: Command) -> None:
        if "level" not in c.args:
            raise CommandError("bad_args", "level missing")

    async def run(c: Command) -> dict[str, object]:
        if c.args["level"] > 5:
            raise CommandFailed("too_high", "cannot")
        return {"level": c.args["level"]}

    async def go() -> list[str]:
        r = runner(tmp_path, out, handlers={"set": Handler(run=run, check=check)})
        return [await r.handle(signed(new_command("set", a, device=GW, now=NOW)))
                for a in ({}, {"level": 9}, {"level": 2})]

    assert asyncio.run(go()) == ["rejected", "failed", "done"]
    assert out.results() == [("rejected", "bad_args"), ("accepted", None), ("failed", "too_high"),
                             ("accepted", None), ("done", None)]
    assert [r.get("level") for r in out.items if r.get("state") == "done"] == [2]
