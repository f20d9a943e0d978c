"""The ``config`` command and the trial of the configuration it applies (docs/remote-config.md).

In the running agent, :class:`RemoteConfig` is the command's handler (check: decrypted args,
validation exactly as ``urbanedge config check``, no change to fixed fields; run: the atomic
switch) and a task that reports decided trials, judges one in progress with the OTA health
check, and ends the agent (:class:`ConfigReload`) when the live file changed, so ``urbanedge
run`` starts again on it in the same process (which is why this works the same under
``urbanedge launch``, systemd or a bare ``run``). Before each start, ``urbanedge run`` calls
:func:`prepare_start`, and :func:`fail_start` when the config on trial cannot even start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.buffer.records import NewRecord, event
from agent.config import ConfigError, LoadedConfig, load_config
from agent.control.executor import CommandFailed, Handler
from agent.reconfig.files import ConfigFiles, sha256
from agent.reconfig.trial import (
    StartDecision,
    TrialRecord,
    begin,
    decide_start,
    forbidden_changes,
    judge,
    parse_args,
    rolled_back,
)
from agent.restart import RestartRequested
from agent.update.health import HealthSample, evaluate
from pki.command import Command, CommandError

log = logging.getLogger("urbanedge.reconfig")

JUDGE_PERIOD = 0.5
Append = Callable[[list[NewRecord]], Awaitable[object]]


class ConfigReload(RestartRequested):
    """The live config file changed (switched or restored): start again on it, in this process."""


def prepare_start(config: Path, now: float | None = None) -> StartDecision:
    """Before loading the config: finish what a trial record says (restore a rolled-back file)."""
    files = ConfigFiles(config)
    rec = files.load()
    d = decide_start(rec, files.live_sha256(), time.time() if now is None else now)
    if d.kind == "rollback":
        assert d.record is not None
        out = files.roll_back(d.record)
        log.warning("event=config_rolled_back id=%s reason=%s detail=%r", out.id, out.reason, out.detail)
    elif d.kind == "report" and d.record is not None and d.record != rec:
        files.save(d.record)
    elif d.kind == "trial":
        assert d.record is not None
        log.info("event=config_on_trial id=%s deadline=%.0f", d.record.id, d.record.deadline)
    return d


def fail_start(config: Path, detail: str) -> bool:
    """The live config cannot start the agent: roll back if it is on trial (True: start again)."""
    files = ConfigFiles(config)
    rec = files.load()
    if rec is None or rec.phase != "trial" or files.live_sha256() != rec.new_sha256:
        return False
    out = files.roll_back(rolled_back(rec, "start", detail))
    log.warning("event=config_rolled_back id=%s reason=start detail=%r", out.id, detail)
    return True


class RemoteConfig:
    def __init__(self, loaded: LoadedConfig, sample: Callable[[], HealthSample], *,
                 clock: Callable[[], float] = time.time, period: float = JUDGE_PERIOD) -> None:
        self.loaded = loaded
        self.files = ConfigFiles(loaded.path)
        self.sample, self.clock, self.period = sample, clock, period
        self.record: TrialRecord | None = self.files.load()
        self.reload = False  # read by ``urbanedge run``: start again on the live file
        self._staged: tuple[str, bytes, float] | None = None  # (command id, TOML, deadline)
        self._switched = asyncio.Event()
        self.gateway_id = loaded.config.identity.gateway_id

    def handler(self) -> Handler:
        return Handler(run=self._run, check=self._check, after=self._after, sealed=True)

    # -- the command ----------------------------------------------------------------------

    def _check(self, cmd: Command) -> None:
        if self.record is not None and self.record.phase == "trial":
            raise CommandError("busy", f"configuration {self.record.id} is on trial until {self.record.deadline:.0f}")
        try:
            toml, deadline = parse_args(cmd.args)
        except ValueError as exc:
            raise CommandError("bad_args", str(exc)) from None
        text = toml.encode()
        try:
            staged = self.files.stage(text)
        except OSError as exc:
            raise CommandError("unavailable", f"cannot write {self.files.new}: {exc}") from None
        try:
            new = load_config(staged)
        except ConfigError as exc:
            self.files.unstage()
            raise CommandError("invalid_config", str(exc)) from None
        fixed = forbidden_changes(self.loaded.config, new.config)
        if fixed:
            self.files.unstage()
            raise CommandError("invalid_config", f"{staged}: " + "; ".join(fixed))
        self._staged = (cmd.id_hex, text, deadline)

    async def _run(self, cmd: Command) -> dict[str, Any]:
        staged, self._staged = self._staged, None
        if staged is None or staged[0] != cmd.id_hex:
            raise CommandFailed("internal_error", "no validated configuration for this command")
        _, text, deadline = staged
        try:
            live_text = await asyncio.to_thread(self.loaded.path.read_bytes)
            if sha256(live_text) == sha256(text):
                await asyncio.to_thread(self.files.unstage)
                return {"config": "unchanged", "sha256": sha256(text)}
            rec = begin(cmd.id_hex, sha256(text), sha256(live_text), now=self.clock(), deadline=deadline)
            await asyncio.to_thread(self.files.switch, rec, text, live_text)
        except OSError as exc:
            raise CommandFailed("io_error", f"switching {self.loaded.path}: {exc}") from None
        self.record = rec
        log.info("event=config_switched id=%s sha256=%s deadline=%.0f", rec.id, rec.new_sha256, rec.deadline)
        return {"config": "trial", "sha256": rec.new_sha256, "deadline": rec.deadline}

    async def _after(self, _cmd: Command) -> None:
        # After the "done" result is in the outbox: only now may the agent stop for the switch.
        if self.record is not None and self.record.phase == "trial":
            self._switched.set()

    # -- the task -------------------------------------------------------------------------

    async def _report(self, append: Append, rec: TrialRecord) -> None:
        await append([event(self.gateway_id, self.clock(), "config_status", **rec.outcome())])
        # At least once: a crash between the two writes reports the outcome again.
        await asyncio.to_thread(self.files.drop)
        log.info("event=config_status id=%s state=%s reason=%s", rec.id, rec.phase, rec.reason or "-")

    async def run(self, append: Append) -> None:
        rec = self.record
        if rec is not None and rec.phase != "trial":
            await self._report(append, rec)
            self.record = None
        elif rec is not None:
            await self._judge(append, rec)
        await self._switched.wait()
        self.reload = True
        raise ConfigReload("configuration switched: starting on it")

    async def _judge(self, append: Append, rec: TrialRecord) -> None:
        while True:
            verdict = evaluate(self.sample())
            j = judge(rec, verdict, self.clock())
            if j.kind == "commit":
                await asyncio.to_thread(self.files.save, j.record)
                self.record = None
                await self._report(append, j.record)
                return
            if j.kind == "rollback":
                out = await asyncio.to_thread(self.files.roll_back, j.record)
                log.warning("event=config_rolled_back id=%s reason=%s detail=%r", out.id, out.reason, out.detail)
                self.reload = True
                # The next start (on the restored file) reports it: through the uplink that works.
                raise ConfigReload(f"configuration {rec.id} rolled back: {out.reason}")
            await asyncio.sleep(self.period)
