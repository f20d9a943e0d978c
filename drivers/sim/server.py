"""Modbus device simulators: real pymodbus TCP/RTU servers built from device profiles.

One :class:`Simulator` serves any number of units of one profile on any number of
endpoints. Register images are computed lazily, per unit, from the unit's
:class:`~drivers.sim.model.UnitModel` when a request arrives (and at most once per
tick), so serving 250 units costs nothing until they are polled.

Each table answers for the address range its points span (gaps inside read as 0, as on
most devices); outside it a read gets exception 2 (illegal data address). Writes are
accepted only on whole writable points. A unit that is not simulated stays silent on
RTU (as on a real bus) and gets exception 11 on TCP (as from a TCP-to-RTU gateway).

Faults (:mod:`drivers.sim.faults`) are applied where the response leaves the server:
the pymodbus request handler is subclassed so its ``server_send`` can drop, delay,
replace or mangle the response. That is the one place where every kind is visible to
a real client exactly as a sick device would make it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from drivers.modbus.registermap import EncodeError, decode_point, encode_point
from drivers.profiles import Point, Profile, Value
from drivers.sim.faults import Fault, FaultPlan, corrupt, garbage
from drivers.sim.model import UnitModel

log = logging.getLogger(__name__)

FC_TABLE: dict[int, str] = {
    1: "coil", 5: "coil", 15: "coil", 2: "discrete_input", 4: "input",
    3: "holding", 6: "holding", 16: "holding", 22: "holding", 23: "holding",
}
_LIMITS: dict[str, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF), "uint16": (0, 0xFFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF), "uint32": (0, 0xFFFF_FFFF),
}

Image = list[int] | list[bool]


@dataclass(frozen=True)
class _Table:
    base: int
    size: int
    points: tuple[Point, ...]


@dataclass
class _Unit:
    model: UnitModel
    tick: int = -1
    images: dict[str, Image] | None = None


def _encode(point: Point, value: Value) -> list[int] | list[bool]:
    """``encode_point``, clamping model values the register type cannot hold."""
    try:
        return encode_point(point, value)
    except EncodeError:
        if point.type == "float32" or point.bit is not None:
            return encode_point(point, 0)
        low, high = _LIMITS[point.type]
        raw = min(high, max(low, round((float(value) - point.offset) / point.scale)))
        return encode_point(point, raw * point.scale + point.offset)


def _layout(profile: Profile) -> dict[str, _Table]:
    tables: dict[str, _Table] = {}
    for table in ("coil", "discrete_input", "holding", "input"):
        points = tuple(p for p in profile.points if p.table == table)
        if points:
            base = min(p.address for p in points)
            tables[table] = _Table(base, max(p.end for p in points) - base, points)
    return tables


def _render(tables: dict[str, _Table], values: dict[str, Value]) -> dict[str, Image]:
    images: dict[str, Image] = {}
    for name, table in tables.items():
        if name in ("coil", "discrete_input"):
            bits = [False] * table.size
            for p in table.points:
                bits[p.address - table.base] = bool(values[p.name])
            images[name] = bits
            continue
        words = [0] * table.size
        for p in table.points:
            at = p.address - table.base
            encoded = [int(w) for w in _encode(p, values[p.name])]
            if p.bit is not None:
                words[at] |= encoded[0]
            else:
                words[at : at + len(encoded)] = encoded
        images[name] = words
    return images


class _Context(ModbusServerContext):
    """The datastore pymodbus calls; every value comes from the simulator's models.

    pymodbus 3.16 accepts a ``ModbusServerContext`` flagged ``old_simulator`` as a plain
    async get/set interface; the base initialiser (deprecated device contexts) is skipped.
    """

    def __init__(self, sim: Simulator) -> None:  # the base initialiser is skipped on purpose
        self.old_simulator = True
        self.simdevices = []
        self._sim = sim

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return self._sim._read(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        return self._sim._write(device_id, func_code, address, values)

    def device_ids(self) -> list[int]:
        return list(self._sim.units)


class _FaultyHandler(ServerRequestHandler):
    """pymodbus's per-connection request handler, with faults applied to responses."""

    def __init__(self, owner: Any, sim: Simulator, rtu: bool) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self._sim = sim
        self._rtu = rtu
        self._busy_until = 0.0

    def server_send(self, pdu: ModbusPDU | None, addr: Any) -> None:
        if pdu is None:
            return
        self._sim.requests[pdu.dev_id] = self._sim.requests.get(pdu.dev_id, 0) + 1
        fault = self._sim.faults.decide(pdu.dev_id)
        now = self.loop.time()
        if fault is None and self._busy_until <= now:
            super().server_send(pdu, addr)  # type: ignore[no-untyped-call]
            return
        if fault is not None:
            log.debug("event=sim_fault_applied fault=%s unit=%d", fault.kind, pdu.dev_id)
            if fault.kind == "no-response":
                return
        data = self._bytes(pdu, fault)
        when = max(now, self._busy_until) + (fault.delay if fault and fault.kind == "slow" else 0)
        self._busy_until = max(self._busy_until, when)
        if when <= now:
            self.send(data, addr)
        else:
            self.loop.call_at(when, self.send, data, addr)

    def _bytes(self, pdu: ModbusPDU, fault: Fault | None) -> bytes:
        if fault is not None and fault.kind == "garbage":
            return garbage(self._sim.faults.rng, rtu=self._rtu)
        if fault is not None and fault.kind == "exception":
            pdu = ExceptionResponse(
                pdu.function_code & 0x7F, fault.code, pdu.dev_id, pdu.transaction_id
            )
        frame = self.framer.buildFrame(pdu)
        if fault is not None and fault.kind == "bad-crc":
            return corrupt(frame, rtu=self._rtu)
        return frame


class _TcpServer(ModbusTcpServer):
    def __init__(self, sim: Simulator, host: str, port: int) -> None:
        super().__init__(_Context(sim), address=(host, port))
        self.sim = sim

    def callback_new_connection(self) -> _FaultyHandler:
        return _FaultyHandler(self, self.sim, rtu=False)


class _SerialServer(ModbusSerialServer):
    def __init__(self, sim: Simulator, path: str, baudrate: int, parity: str,
                 stopbits: int) -> None:
        super().__init__(_Context(sim), port=path, baudrate=baudrate, parity=parity,
                         stopbits=stopbits, ignore_missing_devices=True)
        self.sim = sim

    def callback_new_connection(self) -> _FaultyHandler:
        return _FaultyHandler(self, self.sim, rtu=True)


class Simulator:
    """Simulated Modbus devices of one profile, served over TCP and/or RTU."""

    def __init__(self, profile: Profile, *, units: Sequence[int] = (1,),
                 seed: int | None = None, tick: float = 1.0) -> None:
        if profile.protocol != "modbus":
            raise ValueError(f"profile {profile.name!r} is not a Modbus profile")
        if not units or any(not 1 <= u <= 255 for u in units):
            raise ValueError("units must be a non-empty list of unit ids within 1..255")
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.profile = profile
        self.tick = tick
        self._tables = _layout(profile)
        self._rules = {rule.name: rule for rule in profile.alarms}
        self._writable: dict[tuple[str, int], Point] = {
            (p.table, a): p for p in profile.points if p.writable for a in range(p.address, p.end)
        }
        start, self._t0 = time.time(), time.monotonic()
        self._points = {p.name: p for p in profile.points}
        self._units: dict[int, _Unit] = {
            u: _Unit(UnitModel(profile, u, seed=seed, start=start, tick=tick)) for u in units
        }
        self.faults = FaultPlan(random.Random(None if seed is None else f"{seed}:faults"))
        self.requests: dict[int, int] = {}
        self.endpoints: list[str] = []
        self.tcp_port: int | None = None
        self._servers: list[_TcpServer | _SerialServer] = []

    # --- serving -----------------------------------------------------------------

    async def serve_tcp(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port, see ``tcp_port``); return once listening."""
        server = _TcpServer(self, host, port)
        await self._start(server, f"tcp://{host}:{port}")
        sockets = getattr(server.transport, "sockets", None) or []
        self.tcp_port = int(sockets[0].getsockname()[1]) if sockets else port
        self._started(server, f"tcp://{host}:{self.tcp_port}")

    async def serve_rtu(self, path: str, *, baudrate: int = 9600, parity: str = "N",
                        stopbits: int = 1) -> None:
        """Answer as RTU slaves on the serial port ``path``; return once it is open."""
        server = _SerialServer(self, path, baudrate, parity, stopbits)
        endpoint = f"rtu://{path}?baud={baudrate}&parity={parity}&stop={stopbits}"
        await self._start(server, endpoint)
        self._started(server, endpoint)

    @staticmethod
    async def _start(server: _TcpServer | _SerialServer, endpoint: str) -> None:
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"simulator cannot open {endpoint}: {exc}") from exc

    def _started(self, server: _TcpServer | _SerialServer, endpoint: str) -> None:
        self._servers.append(server)
        self.endpoints.append(endpoint)
        log.info("event=sim_listening kind=%s endpoint=%s units=%d",
                 self.profile.kind, endpoint, len(self._units))

    async def stop(self) -> None:
        """Close every endpoint and its connections."""
        servers, self._servers = self._servers, []
        for server in servers:
            await server.shutdown()  # type: ignore[no-untyped-call]
        if servers:
            log.info("event=sim_stopped kind=%s", self.profile.kind)

    @property
    def units(self) -> tuple[int, ...]:
        """The simulated unit ids."""
        return tuple(sorted(self._units))

    # --- control -----------------------------------------------------------------

    def _check_unit(self, unit: int | None) -> list[int]:
        if unit is None:
            return list(self._units)
        if unit not in self._units:
            raise ValueError(f"unit {unit} is not simulated here")
        return [unit]

    def set_fault(self, kind: str, *, rate: float = 1.0, unit: int | None = None,
                  code: int = 4, delay: float = 2.0) -> None:
        """Make responses fail (see :mod:`drivers.sim.faults`); ``kind="none"`` heals."""
        self._check_unit(unit)
        self.faults.set(Fault(kind, rate, code, delay), unit)
        log.info("event=sim_fault fault=%s rate=%s unit=%s code=%d delay=%s",
                 kind, rate, "all" if unit is None else unit, code, delay)

    def inject_alarm(self, name: str, *, unit: int | None = None) -> None:
        """Force the condition of alarm rule ``name`` until :meth:`clear_alarms`."""
        rule = self._rules.get(name)
        if rule is None:
            known = ", ".join(self._rules) or "none"
            raise ValueError(f"profile {self.profile.name} has no alarm {name!r} (has: {known})")
        for u in self._check_unit(unit):
            self._units[u].model.force_alarm(rule)
            self._units[u].images = None
        log.info("event=sim_alarm_injected alarm=%s unit=%s", name, unit or "all")

    def set_point(self, name: str, value: Value, *, unit: int | None = None) -> None:
        """Hold point ``name`` at ``value`` until :meth:`clear_alarms`."""
        if name not in self._points:
            known = ", ".join(self._points)
            raise ValueError(f"profile {self.profile.name} has no point {name!r} (has: {known})")
        for u in self._check_unit(unit):
            self._units[u].model.set_point(name, value)
            self._units[u].images = None
        log.info("event=sim_point_set point=%s value=%s unit=%s", name, value, unit or "all")

    def clear_alarms(self, *, unit: int | None = None) -> None:
        """Release every injected alarm (of one unit, or all)."""
        for u in self._check_unit(unit):
            self._units[u].model.clear_alarms()
            self._units[u].images = None
        log.info("event=sim_alarms_cleared unit=%s", unit or "all")

    def value(self, unit: int, point: str) -> Value:
        """What a client reading ``point`` of ``unit`` now gets (after quantisation)."""
        found = self._points[point]
        table = self._tables[found.table]
        image = self._images(self._units[unit])[found.table]
        at = found.address - table.base
        return decode_point(found, image[at : at + found.width])

    # --- datastore ---------------------------------------------------------------

    def _images(self, unit: _Unit) -> dict[str, Image]:
        tick = int((time.monotonic() - self._t0) / self.tick)
        if unit.images is None or unit.tick != tick:
            unit.model.advance(tick)
            unit.images = _render(self._tables, unit.model.values())
            unit.tick = tick
        return unit.images

    def _read(self, unit_id: int, fc: int, address: int, count: int) -> Image | ExcCodes:
        unit = self._units.get(unit_id)
        if unit is None:
            raise NoSuchIdException(f"unit {unit_id} is not simulated")
        name = FC_TABLE.get(fc)
        if name is None:
            return ExcCodes.ILLEGAL_FUNCTION
        table = self._tables.get(name)
        if table is None or address < table.base or address + count > table.base + table.size:
            return ExcCodes.ILLEGAL_ADDRESS
        at = address - table.base
        return self._images(unit)[name][at : at + count]

    def _write(self, unit_id: int, fc: int, address: int,
               values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        unit = self._units.get(unit_id)
        if unit is None:
            raise NoSuchIdException(f"unit {unit_id} is not simulated")
        name = FC_TABLE.get(fc, "")
        end = address + len(values)
        targets = {self._writable.get((name, a)) for a in range(address, end)}
        if None in targets:
            return ExcCodes.ILLEGAL_ADDRESS
        points = [p for p in targets if p is not None]
        if any(p.address < address or p.end > end for p in points):
            return ExcCodes.ILLEGAL_ADDRESS
        for p in points:
            unit.model.command(p.name, decode_point(p, values[p.address - address : p.end - address]))
        unit.images = None
        return None
