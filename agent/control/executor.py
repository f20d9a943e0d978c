"""Running a verified command: plan the writes (pure), then write through the bus
coordinator's lock and read each value back.

Commands (``args`` in brackets):

* ``on`` / ``off`` -> ``lamp_on`` = true / false
* ``dim`` {level: 0..100} -> ``dim_level``
* ``valve`` {level: 0..100} -> ``valve_setpoint`` (water meters with a shut-off valve)
* ``write`` {point, value} -> any point the device's profile marks writable

The target's ``points`` name field devices of this gateway; none named means every device
whose profile has the point. A write shares the bus ``asyncio.Lock`` with polling, so a
command never collides with a poll on an RS-485 line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509

from agent import aio
from agent.buffer.outbox_types import AppendResult
from agent.buffer.records import NewRecord
from agent.config import LoadedConfig
from agent.control.crl_watch import CrlWatch
from agent.control.replay import ReplayStore
from agent.control.results import State, command_result, crl_event, security_event
from agent.control.verify import Policy, verify
from agent.ops.metrics import counters
from agent.poll.coordinator import BusCoordinator
from drivers.errors import DeviceError
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import plan_reads
from drivers.modbus.registermap import encode_point
from drivers.profiles import Point, Profile, Value
from pki.command import Command, CommandError
from pki.sealed_args import Unsealer, open_command

log = logging.getLogger("urbanedge.control")
CRL_RECHECK = 60.0  # s between looks at the [commands] crl files while no command comes

WRITE_COMMANDS = ("on", "off", "dim", "valve", "write")


@dataclass(frozen=True)
class FieldDevice:
    """A device a command can write to: its profile and the bus it sits on."""

    id: str
    profile: Profile
    unit: int = 1
    bus: ModbusBus | None = None  # None: not a Modbus device (nothing writable)
    lock: asyncio.Lock | None = None


class CommandFailed(Exception):
    """An accepted command that could not be carried out; ``reason`` is reported."""

    def __init__(self, reason: str, detail: str = "", details: Mapping[str, object] | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.details = dict(details or {})  # what did work, for the ``failed`` result


async def _nothing(_cmd: Command) -> None:
    return None


def _no_check(_cmd: Command) -> None:
    return None


@dataclass(frozen=True)
class Handler:
    """An agent-level command: not a point write that :func:`plan` works out.

    ``check`` runs before the command is reported ``accepted`` and raises
    :class:`CommandError` (-> ``rejected``, e.g. ``bad_args``); ``run`` carries it out and
    returns details for the ``done`` result, or raises :class:`CommandFailed` (-> ``failed``).
    """

    run: Callable[[Command], Awaitable[Mapping[str, object] | None]] = _nothing
    check: Callable[[Command], None] = _no_check
    # Runs once the ``done`` result is in the outbox (durable) and, while the uplink is up,
    # acknowledged by the broker (CommandRunner.until_sent, bounded): for what ends the agent
    # or the machine (restart, reboot, a config switch), which could not report meanwhile.
    after: Callable[[Command], Awaitable[None]] | None = None
    # Args carry secrets: they must arrive encrypted to this gateway (pki/sealed_args), else
    # the command is rejected ``not_encrypted``.
    sealed: bool = False


@dataclass(frozen=True)
class Write:
    device: str
    point: Point
    value: Value


def _point(profile: Profile, name: str) -> Point | None:
    return next((p for p in profile.points if p.name == name), None)


def _wanted(cmd: Command) -> tuple[str, Value]:
    """(point name, value) the command sets; raise ``bad_args`` / ``out_of_range``."""
    if cmd.cmd in ("on", "off"):
        return "lamp_on", cmd.cmd == "on"
    if cmd.cmd in ("dim", "valve"):
        level = cmd.args.get("level")
        if isinstance(level, bool) or not isinstance(level, int | float) or not math.isfinite(level):
            raise CommandError("bad_args", f"{cmd.cmd} needs a numeric level, got {level!r}")
        if not 0 <= level <= 100:
            raise CommandError("out_of_range", f"{cmd.cmd} level {level:g} is outside 0..100")
        return ("dim_level" if cmd.cmd == "dim" else "valve_setpoint"), round(level)
    if cmd.cmd == "write":
        name, value = cmd.args.get("point"), cmd.args.get("value")
        if not isinstance(name, str) or not isinstance(value, bool | int | float):
            raise CommandError("bad_args", "write needs a point name and a boolean or numeric value")
        return name, value
    raise CommandError("unknown_command", f"{cmd.cmd!r} is not a command this gateway runs")


def plan(cmd: Command, devices: Mapping[str, FieldDevice]) -> list[Write]:
    """The writes ``cmd`` asks for, or :class:`CommandError` if any of them is not allowed."""
    name, value = _wanted(cmd)
    if cmd.points:
        unknown = [d for d in cmd.points if d not in devices]
        if unknown:
            raise CommandError("unknown_device", f"no device {', '.join(unknown)} on this gateway")
        chosen = [devices[d] for d in cmd.points]
    else:
        chosen = [d for d in devices.values() if _point(d.profile, name) is not None]
        if not chosen:
            raise CommandError("unsupported", f"no device on this gateway has a point {name!r}")
    writes = []
    for dev in chosen:
        point = _point(dev.profile, name)
        if point is None:
            raise CommandError("unsupported", f"{dev.id} (profile {dev.profile.name}) has no point {name!r}")
        if not point.writable or point.bit is not None or dev.bus is None:
            raise CommandError("read_only", f"{dev.id}.{name} is not writable")
        if point.type == "bool" or point.table == "coil":
            if not isinstance(value, bool) and value not in (0, 1):
                raise CommandError("out_of_range", f"{dev.id}.{name} is a bool, got {value!r}")
            value = bool(value)
        try:
            encode_point(point, value)
        except (ValueError, OverflowError) as exc:
            raise CommandError("out_of_range", f"{dev.id}.{name} = {value!r}: {exc}") from None
        low, high = point.min if point.min is not None else -math.inf, point.max if point.max is not None else math.inf
        if not isinstance(value, bool) and not low <= value <= high:
            raise CommandError("out_of_range", f"{dev.id}.{name} = {value!r} is outside {low:g}..{high:g}")
        writes.append(Write(dev.id, point, value))
    return writes


def _same(point: Point, want: Value, got: Value) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(want) == bool(got)
    # Scaled registers round to the register's resolution: allow half a step.
    return abs(float(want) - float(got)) <= abs(point.scale) / 2 + 1e-9


async def apply(write: Write, dev: FieldDevice, *, limit: float) -> str | None:
    """Write and read back through the bus lock; None when confirmed, else the failure reason."""
    assert dev.bus is not None and dev.lock is not None
    try:
        async with asyncio.timeout(limit), dev.lock:
            await dev.bus.write_point(dev.unit, write.point, write.value)
            values, failed = await dev.bus.read_device(dev.unit, plan_reads([write.point]))
    except DeviceError as exc:
        return f"device_{exc.reason}"
    except TimeoutError:
        return "device_timeout"
    got = values.get(write.point.name)
    if got is None:
        return f"readback_{failed.get(write.point.name, 'missing')}"
    if not _same(write.point, write.value, got):
        return f"readback_mismatch (wrote {write.value!r}, read {got!r})"
    return None


Append = Callable[[list[NewRecord]], Awaitable[AppendResult]]


class CommandRunner:
    """Takes raw command bytes from a queue: verify, remember, plan, write, report."""

    def __init__(self, policy: Policy, replay: ReplayStore, devices: Mapping[str, FieldDevice], append: Append,
                 *, write_timeout: float = 10.0, handlers: Mapping[str, Handler] | None = None,
                 clock: Callable[[], float] = time.time, crl_watch: CrlWatch | None = None,
                 unsealer: Unsealer | None = None,
                 until_sent: Callable[[Sequence[int]], Awaitable[bool]] | None = None) -> None:
        self.policy, self.replay, self.devices, self.append = policy, replay, devices, append
        self.until_sent = until_sent  # the uplink's Forwarder.until_acked
        self.unsealer = unsealer  # opens encrypted args; None: the seal key cannot (Ed25519)
        self.crl_watch = crl_watch  # [commands] crl: revocation of the IOC command certificate
        self.write_timeout = write_timeout
        self.handlers = dict(handlers or {})  # agent-level commands (update-check, ...): no device writes
        self.clock = clock
        # Read by the metrics exporter; by reason, e.g. rejected["replayed"].
        self.rejected: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.last: dict[str, object] | None = None
        # Told of every confirmed point write of a command (local lighting control takes an
        # operator's on/off/dim as a manual override); quick, no I/O, must not raise.
        self.write_observers: list[Callable[[Command, Write], None]] = []

    async def run(self, queue: asyncio.Queue[bytes]) -> None:
        try:
            await self._refresh_crls()
            while True:
                try:
                    data = await aio.wait_for(queue.get(), CRL_RECHECK)
                except TimeoutError:
                    await self._refresh_crls()  # a bad CRL is reported when it appears, not at the next command
                    continue
                try:
                    await self.handle(data)
                except Exception:  # the agent must outlive any command: log, count, go on
                    log.exception("event=command_crashed bytes=%d", len(data))
                    self.rejected["internal_error"] += 1
        finally:
            self.replay.close()

    async def _report(self, cmd_id: str, cmd: str, state: State, reason: str | None = None,
                      extra: Sequence[NewRecord] = (), **details: object) -> list[int]:
        now = self.clock()
        self.results[state] += 1
        self.last = {"id": cmd_id, "cmd": cmd, "state": state, "reason": reason, "ts": now}
        res = await self.append([command_result(self.policy.gateway_id, now, command_id=cmd_id, cmd=cmd, state=state,
                                                reason=reason, **details), *extra])
        return list(res.seqs)

    async def _run_handler(self, handler: Handler, cmd: Command) -> State:
        try:
            details = await handler.run(cmd)
        except CommandFailed as exc:
            log.warning("event=command_failed id=%s cmd=%s reason=%s detail=%r", cmd.id_hex, cmd.cmd,
                        exc.reason, exc.detail)
            failed: dict[str, Any] = {**exc.details, "detail": exc.detail[:300]}
            await self._report(cmd.id_hex, cmd.cmd, "failed", exc.reason, (), **failed)
            return "failed"
        log.info("event=command_done id=%s cmd=%s", cmd.id_hex, cmd.cmd)
        done: dict[str, Any] = dict(details or {})
        seqs = await self._report(cmd.id_hex, cmd.cmd, "done", None, (), **done)
        if handler.after is not None:
            if self.until_sent is not None:
                sent = await self.until_sent(seqs)
                log.info("event=command_result_sent id=%s cmd=%s acked=%s", cmd.id_hex, cmd.cmd, sent)
            await handler.after(cmd)
        return "done"

    async def _reject(self, exc: CommandError, cmd: Command | None) -> None:
        self.rejected[exc.reason] += 1
        counters.inc("commands_rejected", reason=exc.reason)
        counters.inc("security_events", kind="command_rejected")
        if exc.reason in ("bad_signature", "wrong_signer"):
            counters.inc("crypto_failures", operation="command_signature")
        cmd_id = cmd.id_hex if cmd is not None else None
        log.warning("event=command_rejected reason=%s id=%s detail=%r", exc.reason, cmd_id, exc.detail)
        sec = security_event(self.policy.gateway_id, self.clock(), reason=exc.reason, detail=exc.detail,
                             command_id=cmd_id, signer=cmd.signer if cmd is not None else None)
        await self._report(cmd_id or "", cmd.cmd if cmd is not None else "", "rejected", exc.reason, [sec],
                           detail=exc.detail[:300])

    async def _refresh_crls(self) -> None:
        if self.crl_watch is None:
            return
        try:
            problems = self.crl_watch.refresh()
        except Exception:  # a CRL bug must not stop the agent; the last good CRLs stay in force
            log.exception("event=crl_refresh_crashed")
            return
        self.policy = replace(self.policy, crls=self.crl_watch.crls)
        if problems:
            now = self.clock()
            counters.inc("security_events", amount=len(problems), kind="crl")
            await self.append([crl_event(self.policy.gateway_id, now, reason, detail) for reason, detail in problems])

    async def handle(self, data: bytes) -> State:
        await self._refresh_crls()
        now = self.clock()
        cmd: Command | None = None
        try:
            cmd = verify(data, self.policy, now)
            unusable = self.crl_watch.verdict(now) if self.crl_watch is not None else None
            if unusable is not None:
                raise unusable  # fail closed: without usable revocation data no command is provably good
            if not self.replay.remember(cmd.id, keep_until=cmd.nbf + self.policy.window + self.policy.max_skew,
                                        cmd=cmd.cmd, now=now):
                raise CommandError("replayed", f"command {cmd.id_hex} was already taken")
            handler = self.handlers.get(cmd.cmd)
            cmd, encrypted = open_command(cmd, self.unsealer)
            if handler is not None:
                if handler.sealed and not encrypted:
                    raise CommandError("not_encrypted", f"{cmd.cmd} carries secrets: its args must be "
                                       "encrypted to this gateway's seal certificate")
                handler.check(cmd)
                writes = []
            else:
                writes = plan(cmd, self.devices)
        except CommandError as exc:
            await self._reject(exc, cmd or exc.command)
            return "rejected"
        log.info("event=command_accepted id=%s cmd=%s writes=%d", cmd.id_hex, cmd.cmd, len(writes))
        counters.inc("commands_accepted", cmd=cmd.cmd)
        await self._report(cmd.id_hex, cmd.cmd, "accepted", devices=[w.device for w in writes])
        if handler is not None:
            return await self._run_handler(handler, cmd)
        outcome: dict[str, str] = {}
        for w in writes:
            reason = await apply(w, self.devices[w.device], limit=self.write_timeout)
            outcome[w.device] = reason or "done"
            if reason is None:
                for observe in self.write_observers:
                    observe(cmd, w)
            if reason is not None:
                log.warning("event=command_write_failed id=%s device=%s point=%s reason=%r",
                            cmd.id_hex, w.device, w.point.name, reason)
        failures = [r for r in outcome.values() if r != "done"]
        state: State = "failed" if failures else "done"
        reason = failures[0].split(" ")[0] if failures else None
        log.info("event=command_%s id=%s cmd=%s devices=%s", state, cmd.id_hex, cmd.cmd, outcome)
        await self._report(cmd.id_hex, cmd.cmd, state, reason, devices=outcome,
                           values={w.device: w.value for w in writes})
        return state


def field_devices(loaded: LoadedConfig, coordinators: Sequence[BusCoordinator]) -> dict[str, FieldDevice]:
    """Every enabled device, with the bus client and lock its coordinator polls it through."""
    by_bus = {c.bus.name: c for c in coordinators}
    out: dict[str, FieldDevice] = {}
    for bus, dev, profile in loaded.devices():
        coord = by_bus.get(bus.name)
        modbus = coord._modbus if coord is not None else None  # the very client polling uses
        out[dev.id] = FieldDevice(dev.id, profile, dev.unit, modbus,
                                  coord.lock if coord is not None else None)
    return out


def build_runner(loaded: LoadedConfig, coordinators: Sequence[BusCoordinator], append: Append,
                 handlers: Mapping[str, Handler] | None = None, unsealer: Unsealer | None = None,
                 until_sent: Callable[[Sequence[int]], Awaitable[bool]] | None = None) -> CommandRunner:
    """The runner the agent starts when ``[commands] enabled``; raises OSError/ValueError on
    an unreadable root (the config check already made sure the file exists). ``unsealer``
    (the seal key) opens encrypted args."""
    from pki.keys import load_cert, load_certs

    c, ident = loaded.config.commands, loaded.config.identity
    assert c.state is not None  # resolved by load_config
    root = load_cert(c.root)
    policy = Policy(gateway_id=ident.gateway_id, root=root, groups=tuple(c.groups),
                    max_skew=c.max_skew, window=c.replay_window, ioc_id=c.ioc_id)
    timeout = max((b.timeout for b in loaded.config.buses), default=1.0)
    crl_watch = None
    if c.crl:
        # CAs a CRL may come from: the root and the CAs of our own chain (the issuing CA).
        cas = [root, *(ca for ca in load_certs(loaded.config.seal.cert) if _is_ca(ca))]
        crl_watch = CrlWatch(c.crl, cas, grace=c.crl_grace)
    return CommandRunner(policy, ReplayStore(c.state), field_devices(loaded, coordinators), append,
                         write_timeout=4 * timeout + 1, handlers=handlers, crl_watch=crl_watch, unsealer=unsealer,
                         until_sent=until_sent)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
