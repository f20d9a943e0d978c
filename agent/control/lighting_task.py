"""Local streetlight control on the gateway: the I/O around :mod:`agent.control.lighting`.

Every ``period`` seconds, for each controlled streetlight: decide (pure) from the latest
poll, and only when the wanted state differs from the device's, write it through
:func:`agent.control.executor.apply` (the bus coordinator's lock, read back). Each change is
a sealed ``lighting`` event in the outbox, so the IOC learns of it even after an outage;
nothing here touches the uplink. The schedule a signed ``schedule`` command sets, and the
``lighting auto|manual`` mode, are kept in a small JSON file (temp, fsync, rename), with the
manual holds and traffic boosts in force (wall-clock ends), so a restart undoes neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.buffer.records import NewRecord, event
from agent.config import Lighting, LoadedConfig
from agent.control.executor import CommandFailed, FieldDevice, Handler, Write, apply, field_devices
from agent.control.lighting import (
    AmbientRule,
    Controller,
    Decision,
    LightingError,
    Schedule,
    Settings,
    TrafficRule,
    parse_utc_offset,
)
from agent.poll.coordinator import BusCoordinator
from agent.poll.device import Reading, ReadingObserver
from pki.command import Command, CommandError
from urbanedge.atomic import write_atomically

log = logging.getLogger("urbanedge.lighting")

Append = Callable[[list[NewRecord]], Awaitable[object]]
BACKOFF_MAX = 60.0


class Observable(Protocol):
    """What the task needs of a poller (agent/poll/device.DevicePoller)."""

    device_id: str
    latest: Reading | None
    observers: list[ReadingObserver]


def settings_from_config(cfg: Lighting, schedule: Schedule | None = None) -> Settings:
    a, t = cfg.ambient, cfg.traffic
    return Settings(
        schedule=schedule or Schedule.parse(cfg.schedule), utc_offset=parse_utc_offset(cfg.utc_offset),
        ambient=AmbientRule(a.on_below, a.off_above, a.dwell, a.level) if a is not None else None,
        traffic=TrafficRule(t.above, t.boost, t.hold) if t is not None else None)


class StateFile:
    """The schedule set by command, the mode and the holds, surviving restarts; written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Unreadable: run on the config's schedule rather than not at all; say so.
            log.warning("event=lighting_state_unreadable path=%s error=%r", self.path, str(exc))
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: Mapping[str, Any]) -> None:
        write_atomically(self.path, json.dumps(data).encode())


@dataclass
class _Device:
    dev: FieldDevice
    poller: Observable
    written: dict[str, bool | int] = field(default_factory=dict)  # what we last wrote (confirmed)
    written_at: float = 0.0
    failures: int = 0
    retry_at: float = 0.0


def controlled(cfg: Lighting, devices: Mapping[str, FieldDevice]) -> list[str]:
    """The configured devices, or every Modbus device whose profile has a writable dim_level."""
    if cfg.devices:
        return list(cfg.devices)
    return [d.id for d in devices.values() if d.bus is not None
            and any(p.name == "dim_level" and p.writable for p in d.profile.points)]


class LightingTask:
    def __init__(self, cfg: Lighting, devices: Mapping[str, FieldDevice], pollers: Sequence[Observable],
                 append: Append, *, write_timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        assert cfg.state is not None  # resolved by load_config
        self.cfg, self.append, self.write_timeout, self.clock = cfg, append, write_timeout, clock
        self.store = StateFile(cfg.state)
        saved = self.store.load()
        schedule = None
        if isinstance(saved.get("schedule"), list):
            try:
                schedule = Schedule.parse(saved["schedule"])
            except LightingError as exc:
                log.warning("event=lighting_state_unreadable path=%s error=%r", cfg.state, str(exc))
        self.ctl = Controller(settings_from_config(cfg, schedule))
        if saved.get("mode") == "manual":
            self.ctl.mode = "manual"
        # Holds by wall clock: those that ended while the agent was down are dropped.
        for problem in self.ctl.restore(saved.get("holds"), clock()):
            log.warning("event=lighting_state_unreadable path=%s error=%r", cfg.state, problem)
        self._holds_dirty = False
        self._save_lock = asyncio.Lock()
        by_id = {p.device_id: p for p in pollers}
        self.devices: dict[str, _Device] = {}
        for dev_id in controlled(cfg, devices):
            dev, poller = devices.get(dev_id), by_id.get(dev_id)
            if dev is None or poller is None or dev.bus is None:
                continue
            self.devices[dev_id] = _Device(dev, poller)
            poller.observers.append(self._observe)
        self.changes = 0
        self.failures = 0
        log.info("event=lighting_started devices=%s schedule=%s source=%s mode=%s",
                 ",".join(self.devices), " ".join(self.ctl.settings.schedule.texts()),
                 "state" if schedule is not None else "config", self.ctl.mode)

    # -- inputs -------------------------------------------------------------------------

    def _observe(self, reading: Reading) -> None:
        if reading.device_id in self.devices:
            self.ctl.feed(reading.device_id, reading.ts, reading.values)

    def on_command_write(self, cmd: Command, write: Write) -> None:
        """A confirmed write of an operator's command: a manual hold until the next step."""
        if write.device not in self.devices or write.point.name not in ("lamp_on", "dim_level"):
            return
        now = self.clock()
        if write.point.name == "lamp_on":
            self.ctl.manual(write.device, now, lamp_on=bool(write.value))
        else:
            self.ctl.manual(write.device, now, level=int(write.value))
        d = self.devices[write.device]
        d.written[write.point.name] = bool(write.value) if write.point.name == "lamp_on" else int(write.value)
        d.written_at = now
        self._holds_dirty = True  # saved by the loop: this callback does no I/O
        log.info("event=lighting_manual device=%s point=%s value=%s command=%s", write.device,
                 write.point.name, write.value, cmd.id_hex)

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            for dev_id in list(self.devices):
                try:
                    await self.step(dev_id)
                except Exception:  # a bug here must not stop polling or the agent
                    self.failures += 1
                    log.exception("event=lighting_crashed device=%s", dev_id)
            if self._holds_dirty:
                await self._save_holds()
            await asyncio.sleep(self.cfg.period)

    def _current(self, d: _Device) -> dict[str, bool | int]:
        """The device's state: its latest poll, unless we wrote since that poll was taken."""
        latest = d.poller.latest
        polled: dict[str, bool | int] = {}
        if latest is not None:
            for name in ("lamp_on", "dim_level"):
                v = latest.values.get(name)
                if isinstance(v, bool | int) or (isinstance(v, float) and math.isfinite(v)):
                    polled[name] = bool(v) if name == "lamp_on" else round(v)
        if latest is None or latest.ts <= d.written_at:
            return {**polled, **d.written}
        return polled

    def wanted(self, d: _Device, decision: Decision) -> list[Write]:
        points = {p.name: p for p in d.dev.profile.points}
        current = self._current(d)
        out = []
        # The level first, so a lamp switched on comes on at the decided level.
        for name, value in (("dim_level", decision.level), ("lamp_on", decision.lamp_on)):
            point = points.get(name)
            if value is None or point is None or not point.writable:
                continue
            if current.get(name) != value:
                out.append(Write(d.dev.id, point, value))
        return out

    async def step(self, dev_id: str) -> None:
        d = self.devices[dev_id]
        now = self.clock()
        if d.poller.latest is None or now < d.retry_at:
            return  # nothing known yet (no write blind), or backing off after a failure
        decision = self.ctl.decide(dev_id, now)
        writes = self.wanted(d, decision)
        for w in writes:
            reason = await apply(w, d.dev, limit=self.write_timeout)
            if reason is not None:
                self.failures += 1
                d.failures += 1
                wait = min(BACKOFF_MAX, self.cfg.period * 2 ** min(d.failures, 10))
                d.retry_at = self.clock() + wait
                log.warning("event=lighting_write_failed device=%s point=%s value=%s reason=%r retry_in=%.1f",
                            dev_id, w.point.name, w.value, reason, wait)
                return
            d.failures, d.retry_at = 0, 0.0
            d.written[w.point.name] = bool(w.value) if w.point.name == "lamp_on" else round(w.value)
            d.written_at = self.clock()
        if not writes:
            return
        if decision.reason == "traffic":
            self._holds_dirty = True  # a boost begins: a restart now must not cut it short
        self.changes += 1
        state = self._current(d)
        log.info("event=lighting_change device=%s lamp_on=%s level=%s reason=%s", dev_id,
                 state.get("lamp_on"), state.get("dim_level"), decision.reason)
        await self.append([event(dev_id, d.written_at, "lighting", lamp_on=state.get("lamp_on"),
                                 level=state.get("dim_level"), reason=decision.reason,
                                 schedule_step=self._step_text(now))])

    def _step_text(self, now: float) -> str:
        sched = self.ctl.settings.schedule
        return str(sched.steps[sched.index_at(self.ctl.local_second(now))])

    # -- signed commands: ``schedule STEP...`` and ``lighting auto|manual`` ---------------------

    def handlers(self) -> dict[str, Handler]:
        return {"schedule": Handler(run=self._run_schedule, check=self._check_schedule),
                "lighting": Handler(run=self._run_mode, check=self._check_mode)}

    @staticmethod
    def _steps(cmd: Command) -> Schedule:
        steps = cmd.args.get("steps")
        if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
            raise CommandError("bad_args", "schedule needs steps: a list of \"HH:MM=LEVEL|off\"")
        try:
            return Schedule.parse(steps)
        except LightingError as exc:
            raise CommandError("bad_args", str(exc)) from None

    def _check_schedule(self, cmd: Command) -> None:
        self._steps(cmd)

    def _check_mode(self, cmd: Command) -> None:
        if cmd.args.get("mode") not in ("auto", "manual"):
            raise CommandError("bad_args", f"lighting needs mode auto or manual, got {cmd.args.get('mode')!r}")

    async def _save(self) -> None:
        # One save at a time, the state taken inside the lock: a command's save and the loop's
        # cannot finish in the wrong order and leave the older state on disk.
        async with self._save_lock:
            self._holds_dirty = False
            data = {"schedule": self.ctl.settings.schedule.texts(), "mode": self.ctl.mode,
                    "holds": self.ctl.holds(self.clock())}
            try:
                await asyncio.to_thread(self.store.save, data)
            except OSError as exc:
                self._holds_dirty = True
                raise CommandFailed("state_write_failed", f"{self.store.path}: {exc}") from None

    async def _save_holds(self) -> None:
        """After a manual command or a new boost: the state file gets the holds in force."""
        try:
            await self._save()
        except CommandFailed as exc:
            log.warning("event=lighting_state_write_failed detail=%r", exc.detail)

    async def _run_schedule(self, cmd: Command) -> dict[str, object]:
        schedule = self._steps(cmd)
        self.ctl.set_schedule(schedule, time.time())
        log.info("event=lighting_schedule schedule=%s command=%s", " ".join(schedule.texts()), cmd.id_hex)
        await self._save()
        return {"schedule": schedule.texts()}

    async def _run_mode(self, cmd: Command) -> dict[str, object]:
        if cmd.args["mode"] == "auto":
            self.ctl.resume()
        else:
            self.ctl.mode = "manual"
        log.info("event=lighting_mode mode=%s command=%s", self.ctl.mode, cmd.id_hex)
        await self._save()
        return {"mode": self.ctl.mode}

    def health(self) -> dict[str, object]:
        return {"mode": self.ctl.mode, "schedule": self.ctl.settings.schedule.texts(),
                "devices": len(self.devices), "changes": self.changes, "failures": self.failures}


def build_lighting(loaded: LoadedConfig, coordinators: Sequence[BusCoordinator], append: Append) -> LightingTask:
    """The task the agent starts when ``[lighting] enabled``: the same bus clients and locks
    polling uses, and the pollers' latest readings."""
    timeout = max((b.timeout for b in loaded.config.buses), default=1.0)
    return LightingTask(loaded.config.lighting, field_devices(loaded, coordinators),
                        [p for c in coordinators for p in c.pollers], append, write_timeout=4 * timeout + 1)
