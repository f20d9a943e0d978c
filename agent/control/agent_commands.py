"""Agent-level commands that are not point writes: ``read-now``, ``threshold``, ``rebirth``,
``restart`` and ``reboot`` (docs/operations.md, "Commands").

Each is a :class:`~agent.control.executor.Handler`: ``check`` refuses before ``accepted``
(``rejected`` with a reason), ``run`` does the work and returns the details of ``done``.

* ``read-now`` polls the target devices at once, through their bus coordinator's lock (a
  poll like any other, never colliding with one). The reading goes the normal way, to the
  outbox and the IOC, marked ``"trigger": "read-now", "command_id": <id>``; ``done`` carries
  the values too. A device that does not answer makes the command ``failed``
  (``device_timeout``, ``device_exception``, ...) with the values of those that did.
* ``threshold`` changes an above/below alarm threshold of the target devices (none named:
  every device that has the alarm). The overrides are written atomically to
  ``thresholds.json`` before they take effect (next poll), and applied again at every
  start; the pure part is :mod:`agent.control.thresholds`.
* ``rebirth`` re-announces the gateway: the MQTT birth (with the certificate and status, as
  on a connect) and a sealed ``agent_rebirth`` event with the device inventory.
* ``restart`` ends the agent with exit code 75 once ``done`` is in the outbox and, with the
  uplink up, acknowledged by the broker (at most 5 s: the IOC hears it now, not after the
  restart); the launcher or systemd (``Restart=always``) starts it again. ``reboot`` runs
  ``[commands] reboot_command``, also after ``done`` is durable and sent (a machine going
  down reports nothing).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from agent.buffer.records import NewRecord, event
from agent.config import LoadedConfig
from agent.control import thresholds
from agent.control.executor import CommandFailed, Handler
from agent.poll.coordinator import BusCoordinator
from agent.poll.device import DevicePoller, Reading
from agent.restart import RestartRequested
from drivers.errors import DeviceError
from pki.command import Command, CommandError
from urbanedge.atomic import write_atomically

log = logging.getLogger("urbanedge.control")

Append = Callable[[list[NewRecord]], Awaitable[object]]
REBOOT_TIMEOUT = 60.0


def thresholds_path(commands_state: Path) -> Path:
    """Where the ``threshold`` command keeps its overrides: next to the replay store."""
    return commands_state.with_name("thresholds.json")


def _pollers(coordinators: Sequence[BusCoordinator]) -> dict[str, tuple[BusCoordinator, DevicePoller]]:
    return {p.device_id: (c, p) for c in coordinators for p in c.pollers}


def load_thresholds(path: Path, coordinators: Sequence[BusCoordinator]) -> thresholds.Overrides:
    """Apply the overrides saved by earlier ``threshold`` commands (at start, before polling).

    An unreadable file or entries that no longer fit the config are logged and skipped: a
    bad state file must not keep the gateway from watching the water."""
    try:
        saved = thresholds.decode(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("event=thresholds_unreadable path=%s error=%r action=configured_thresholds", path, str(exc))
        return {}
    pollers = _pollers(coordinators)
    kept, dropped = thresholds.usable(saved, {d: p.alarms.configured for d, (_c, p) in pollers.items()})
    if dropped:
        log.warning("event=thresholds_skipped entries=%s reason=%r", dropped, "no such device or threshold alarm")
    for dev, alarms in kept.items():
        for name, value in alarms.items():
            pollers[dev][1].alarms.set_threshold(name, value)
    if kept:
        log.info("event=thresholds_loaded overrides=%s", kept)
    return kept


class AgentCommands:
    """The handlers of the agent-level commands, bound to the running agent's parts."""

    def __init__(self, *, gateway_id: str, coordinators: Sequence[BusCoordinator], append: Append,
                 thresholds_file: Path, overrides: thresholds.Overrides,
                 rebirth: Callable[[], Awaitable[bool]], inventory: Mapping[str, Any],
                 reboot_command: Sequence[str] | None, read_timeout: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.gateway_id = gateway_id
        self.pollers = _pollers(coordinators)
        self.append = append
        self.thresholds_file = thresholds_file
        self.overrides = overrides
        self._rebirth = rebirth
        self.inventory = dict(inventory)
        self.reboot_command = list(reboot_command) if reboot_command else None
        self.read_timeout = read_timeout
        self.clock = clock
        self._restart = asyncio.Event()

    def handlers(self) -> dict[str, Handler]:
        return {
            "read-now": Handler(run=self._read_now, check=self._check_read_now),
            "threshold": Handler(run=self._threshold, check=self._check_threshold),
            "rebirth": Handler(run=self._rebirth_now),
            "restart": Handler(run=self._restart_run, after=self._restart_after),
            "reboot": Handler(run=self._reboot_run, check=self._check_reboot, after=self._reboot_after),
        }

    # -- read-now -------------------------------------------------------------------------

    def _targets(self, cmd: Command) -> list[str]:
        if not cmd.points:
            return list(self.pollers)
        unknown = [d for d in cmd.points if d not in self.pollers]
        if unknown:
            raise CommandError("unknown_device", f"no device {', '.join(unknown)} on this gateway")
        return list(dict.fromkeys(cmd.points))

    def _check_read_now(self, cmd: Command) -> None:
        if cmd.args:
            raise CommandError("bad_args", f"read-now takes no args, got {sorted(cmd.args)}")
        if not self._targets(cmd):
            raise CommandError("unsupported", "no device on this gateway")

    async def _read_one(self, device: str, cmd: Command) -> Reading | str:
        coord, _poller = self.pollers[device]
        try:
            async with asyncio.timeout(self.read_timeout):
                return await coord.poll_now(device, cmd.id_hex)
        except DeviceError as exc:
            return f"device_{exc.reason}"
        except TimeoutError:
            return "device_timeout"

    async def _read_now(self, cmd: Command) -> Mapping[str, object]:
        devices = self._targets(cmd)
        got = await asyncio.gather(*(self._read_one(d, cmd) for d in devices))
        outcome = {d: r if isinstance(r, str) else "done" for d, r in zip(devices, got, strict=True)}
        readings = [r for r in got if isinstance(r, Reading)]
        details: dict[str, object] = {
            "devices": outcome,
            "values": {r.device_id: dict(r.values) for r in readings},
            "quality": {r.device_id: r.quality for r in readings},
        }
        failed = {d: o for d, o in outcome.items() if o != "done"}
        log.info("event=read_now id=%s devices=%s", cmd.id_hex, outcome)
        if failed:
            raise CommandFailed(next(iter(failed.values())),
                                "; ".join(f"{d}: {o}" for d, o in failed.items()), details)
        return details

    # -- threshold ------------------------------------------------------------------------

    def _plan(self, cmd: Command) -> list[thresholds.Change]:
        alarm, value = thresholds.parse(cmd.args)
        rules = {d: p.alarms.configured for d, (_c, p) in self.pollers.items()}
        return thresholds.plan(alarm, value, list(cmd.points), rules, self.overrides)

    def _check_threshold(self, cmd: Command) -> None:
        self._plan(cmd)

    async def _threshold(self, cmd: Command) -> Mapping[str, object]:
        changes = self._plan(cmd)
        new = thresholds.apply(self.overrides, changes)
        try:
            # On disk first: a threshold in force must survive a restart.
            await asyncio.to_thread(write_atomically, self.thresholds_file, thresholds.encode(new))
        except OSError as exc:
            raise CommandFailed("state_write_failed", f"{self.thresholds_file}: {exc}") from None
        self.overrides = new
        for c in changes:
            self.pollers[c.device][1].alarms.set_threshold(c.alarm, None if c.reset else c.new)
            log.info("event=threshold_changed id=%s device=%s alarm=%s old=%s new=%s reset=%s",
                     cmd.id_hex, c.device, c.alarm, c.old, c.new, c.reset)
        return {"alarm": changes[0].alarm, "reset": changes[0].reset,
                "devices": {c.device: {"old": c.old, "new": c.new} for c in changes}}

    # -- rebirth --------------------------------------------------------------------------

    async def _rebirth_now(self, cmd: Command) -> Mapping[str, object]:
        await self.append([event(self.gateway_id, self.clock(), "agent_rebirth", command_id=cmd.id_hex,
                                 **self.inventory)])
        try:
            published = await self._rebirth()
        except aiomqtt.MqttError as exc:
            log.warning("event=rebirth_publish_failed error=%r", str(exc))
            published = False
        return {"birth": "published" if published else "next_connect"}

    # -- restart / reboot -----------------------------------------------------------------

    async def _restart_run(self, cmd: Command) -> Mapping[str, object]:
        return {"action": "restarting"}

    async def _restart_after(self, cmd: Command) -> None:
        log.info("event=restart_requested id=%s", cmd.id_hex)
        self._restart.set()

    async def watch_restart(self) -> None:
        """A task of the agent's TaskGroup: raises :class:`RestartRequested` (exit 75) once a
        ``restart`` command's result is durable, which stops the agent cleanly."""
        await self._restart.wait()
        raise RestartRequested("restart command")

    def _check_reboot(self, cmd: Command) -> None:
        if self.reboot_command is None:
            raise CommandError("unsupported", "this gateway has no [commands] reboot_command")
        if shutil.which(self.reboot_command[0]) is None:
            raise CommandError("unsupported", f"reboot_command {self.reboot_command[0]!r} is not found")

    async def _reboot_run(self, cmd: Command) -> Mapping[str, object]:
        assert self.reboot_command is not None
        return {"action": "rebooting", "command": self.reboot_command}

    async def _reboot_after(self, cmd: Command) -> None:
        assert self.reboot_command is not None
        log.warning("event=reboot_requested id=%s command=%s", cmd.id_hex, self.reboot_command)
        reason = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.reboot_command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            try:
                _out, err = await asyncio.wait_for(proc.communicate(), REBOOT_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                reason = f"no exit within {REBOOT_TIMEOUT:g}s"
            else:
                if proc.returncode != 0:
                    reason = f"exit {proc.returncode}: {err.decode(errors='replace')[-200:]}"
        except OSError as exc:
            reason = str(exc)
        if reason is not None:
            # ``done`` is already out: the failure goes as its own sealed event.
            log.error("event=reboot_failed id=%s reason=%r", cmd.id_hex, reason)
            await self.append([event(self.gateway_id, self.clock(), "reboot_failed", command_id=cmd.id_hex,
                                     reason=reason[:300])])


def build_agent_commands(loaded: LoadedConfig, coordinators: Sequence[BusCoordinator], append: Append,
                         rebirth: Callable[[], Awaitable[bool]], overrides: thresholds.Overrides,
                         inventory: Mapping[str, Any]) -> AgentCommands:
    c = loaded.config.commands
    assert c.state is not None  # resolved by load_config
    # A poll holds the bus for at most 4 timeouts + 1 s; waiting for the lock can cost one more.
    timeout = max((b.timeout for b in loaded.config.buses), default=1.0)
    return AgentCommands(gateway_id=loaded.config.identity.gateway_id, coordinators=coordinators, append=append,
                         thresholds_file=thresholds_path(c.state), overrides=overrides, rebirth=rebirth,
                         inventory=inventory, reboot_command=c.reboot_command, read_timeout=2 * (4 * timeout + 1))
