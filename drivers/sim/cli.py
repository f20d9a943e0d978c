"""``urbanedge sim KIND``: run a device simulator from a shell, a demo or a test.

Prints ``sim ready kind=... endpoint=... units=...`` (flushed) once listening, then
serves until SIGTERM/SIGINT or ``--duration``; exit 0. Bad arguments exit 2.

Control lines on stdin while running (the reply goes to stderr as a log line)::

    fault KIND [RATE] [UNIT]     e.g. "fault no-response 0.5 3", "fault none"
    alarm NAME [UNIT]            e.g. "alarm flood_danger"
    set POINT VALUE [UNIT]       hold a point, e.g. "set lamp_on false", "set active_power 40"
    clear [UNIT]                 release injected alarms and held points

Profiles with ``protocol = "line"`` (e.g. ``rain-gauge``) run the serial line-sensor
simulator (:mod:`drivers.sim.line`) on ``--serial PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, Protocol

from drivers.profiles import Profile, Value, builtin_profiles
from drivers.sim.faults import FAULT_KINDS, FaultError

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A command-line value that makes no sense; reported with exit code 2."""


class _LineSim(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def set_fault(self, kind: str, *, rate: float = 1.0) -> None: ...
    def inject_alarm(self, name: str) -> None: ...
    def set_point(self, name: str, value: Value) -> None: ...


def parse_units(spec: str) -> list[int]:
    """``"1-10"``, ``"3"`` or ``"1,4,7-9"`` -> sorted unit ids within 1..255."""
    units: set[int] = set()
    try:
        for part in spec.split(","):
            low, _, high = part.strip().partition("-")
            first, last = int(low), int(high or low)
            units.update(range(first, last + 1))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad unit list {spec!r}: use 1-10 or 1,3,5") from exc
    if not units or min(units) < 1 or max(units) > 255:
        raise argparse.ArgumentTypeError(f"units must be within 1..255: {spec!r}")
    return sorted(units)


def _fault(spec: str) -> tuple[str, float]:
    kind, _, rate = spec.partition(":")
    if kind not in FAULT_KINDS:
        raise argparse.ArgumentTypeError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")
    try:
        value = float(rate) if rate else 1.0
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad fault rate {rate!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"fault rate must be within 0..1: {rate}")
    return kind, value


def _host_port(spec: str) -> tuple[str, int]:
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {spec!r}")
    return host, int(port)


def format_units(units: list[int]) -> str:
    """Compact form of a unit list: ``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    runs: list[str] = []
    start = prev = units[0]
    for unit in [*units[1:], -1]:
        if unit != prev + 1:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = unit
        prev = unit
    return ",".join(runs)


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``sim`` subcommand."""
    p = subparsers.add_parser(
        "sim", help="run a simulated field device (Modbus TCP/RTU or serial line sensor)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", metavar="KIND", help="profile name, e.g. streetlight, water-meter")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=_host_port, metavar="HOST:PORT",
                       help="serve Modbus TCP (port 0 picks a free one)")
    where.add_argument("--serial", metavar="PATH", help="serve on a serial port / pty")
    units = p.add_mutually_exclusive_group()
    units.add_argument("--units", type=parse_units, default=[1], metavar="1-10",
                       help="unit ids to simulate (default 1)")
    units.add_argument("--unit", type=lambda s: parse_units(s), dest="units", metavar="N")
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument("--fault", type=_fault, metavar="KIND[:RATE]",
                   help=f"start with a fault: {', '.join(FAULT_KINDS)}")
    p.add_argument("--alarm", action="append", default=[], metavar="NAME",
                   help="start with this alarm forced (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="make values reproducible")
    p.add_argument("--tick", type=float, default=1.0, help="seconds per simulation step")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log every control action")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``sim``: 0 after a clean stop, 2 on bad arguments."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    # pymodbus logs every dropped or faulty frame at error level: that is the point here.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    profile = builtin_profiles().get(args.kind)
    if profile is None:
        known = ", ".join(sorted(builtin_profiles()))
        print(f"sim: unknown kind {args.kind!r}; one of: {known}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, profile))
    except (UsageError, FaultError) as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return 1


class _Control:
    """Applies stdin control lines to a Modbus :class:`Simulator` or a line simulator."""

    def __init__(self, sim: Any, *, line: bool) -> None:
        self.sim = sim
        self.line = line

    def apply(self, text: str) -> None:
        words = text.split()
        if not words:
            return
        verb, rest = words[0], words[1:]
        if verb == "fault" and 1 <= len(rest) <= 3:
            kind, rate = _fault(rest[0] + (f":{rest[1]}" if len(rest) > 1 else ""))
            if self.line:
                self.sim.set_fault(kind, rate=rate)
            else:
                self.sim.set_fault(kind, rate=rate, unit=self._unit(rest[2:]))
        elif verb == "alarm" and 1 <= len(rest) <= 2:
            if self.line:
                self.sim.inject_alarm(rest[0])
            else:
                self.sim.inject_alarm(rest[0], unit=self._unit(rest[1:]))
        elif verb == "set" and 2 <= len(rest) <= 3:
            value = _value(rest[1])
            if self.line:
                self.sim.set_point(rest[0], value)
            else:
                self.sim.set_point(rest[0], value, unit=self._unit(rest[2:]))
        elif verb == "clear" and len(rest) <= 1:
            clear: Callable[..., None] | None = getattr(self.sim, "clear_alarms", None)
            if clear is None:
                raise UsageError("this simulator cannot clear alarms")
            if self.line:
                clear()
            else:
                clear(unit=self._unit(rest))
        else:
            raise UsageError("expected: fault KIND [RATE] [UNIT] | alarm NAME [UNIT] | "
                             "set POINT VALUE [UNIT] | clear [UNIT]")

    @staticmethod
    def _unit(words: list[str]) -> int | None:
        if not words:
            return None
        if not words[0].isdigit():
            raise UsageError(f"bad unit {words[0]!r}")
        return int(words[0])


def _value(text: str) -> Value:
    """``true``/``false``/``on``/``off`` or a number, as typed on the control line."""
    flags = {"true": True, "on": True, "false": False, "off": False}
    if text.lower() in flags:
        return flags[text.lower()]
    try:
        number = float(text)
    except ValueError as exc:
        raise UsageError(f"bad value {text!r}: expected true/false or a number") from exc
    if number != number or number in (float("inf"), float("-inf")):
        raise UsageError(f"bad value {text!r}: expected a finite number")
    return int(number) if number.is_integer() and "." not in text else number


def _say(text: str) -> None:
    print(text, flush=True)


def _watch_stdin(loop: asyncio.AbstractEventLoop, control: _Control) -> Callable[[], None]:
    """Feed stdin lines to ``control``; returns the undo. No-op when stdin cannot be
    watched (a regular file or /dev/null cannot be polled)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    pending = bytearray()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        if not chunk:
            loop.remove_reader(fd)
            return
        pending.extend(chunk)
        while b"\n" in pending:
            raw, _, rest = bytes(pending).partition(b"\n")
            pending[:] = rest
            text = raw.decode(errors="replace").strip()
            try:
                control.apply(text)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                log.warning("event=sim_control_rejected line=%r error=%r", text, str(exc))
                _say(f"sim error {exc}")
            else:
                if text:
                    _say(f"sim ok {text}")

    try:
        loop.add_reader(fd, readable)
    except (OSError, ValueError):
        return lambda: None

    def unwatch() -> None:
        loop.remove_reader(fd)

    return unwatch


def _apply_startup(sim: Any, args: argparse.Namespace) -> None:
    """The --alarm and --fault options, as if typed on stdin before serving."""
    try:
        for name in args.alarm:
            sim.inject_alarm(name)
        if args.fault is not None:
            sim.set_fault(args.fault[0], rate=args.fault[1])
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


async def _start_modbus(args: argparse.Namespace, profile: Profile) -> tuple[Any, str, str]:
    from drivers.sim.server import Simulator

    sim = Simulator(profile, units=args.units, seed=args.seed, tick=args.tick)
    _apply_startup(sim, args)
    if args.tcp is not None:
        await sim.serve_tcp(*args.tcp)
    else:
        await sim.serve_rtu(args.serial, baudrate=args.baudrate, parity=args.parity,
                            stopbits=args.stopbits)
    return sim, ",".join(sim.endpoints), format_units(args.units)


async def _start_line(args: argparse.Namespace, profile: Profile) -> tuple[Any, str, str]:
    if args.serial is None:
        raise UsageError(f"{profile.name} is a serial line sensor: use --serial PATH")
    from drivers.sim.line import LineSimulator

    sim: _LineSim = LineSimulator(profile, args.serial, period=args.tick,
                                  baudrate=args.baudrate, seed=args.seed)
    _apply_startup(sim, args)
    await sim.start()
    return sim, f"serial://{args.serial}", "-"


async def _serve(args: argparse.Namespace, profile: Profile) -> int:
    line = profile.protocol == "line"
    starter = _start_line if line else _start_modbus
    sim, endpoint, units = await starter(args, profile)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    unwatch = _watch_stdin(loop, _Control(sim, line=line))
    _say(f"sim ready kind={profile.kind} endpoint={endpoint} units={units}")
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.duration)
    finally:
        unwatch()
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m drivers.sim.cli KIND ...`` without the ``urbanedge`` wrapper."""
    parser = argparse.ArgumentParser(prog="urbanedge")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
