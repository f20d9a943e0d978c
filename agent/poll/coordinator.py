"""One coordinator per bus: owns the transport and the device pollers that share it.

An RS-485 line carries one request at a time, and so does one Modbus TCP endpoint here
(a TCP gateway in front of RS-485 has the same constraint); separate buses run
concurrently. The coordinator also watches bus utilisation to report overload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from agent.config import Bus, Device, ModbusRtuBus, ModbusTcpBus, SerialLineBus
from agent.poll.alarms import AlarmEvaluator
from agent.poll.device import DevicePoller, PollPolicy, Reading, Sink
from agent.poll.readers import DeviceReader, LineReader, ModbusReader
from agent.poll.rules import RuleEngine
from drivers.modbus.client import ModbusBus
from drivers.profiles import Profile
from drivers.serial.port import LineSensorPort

log = logging.getLogger("urbanedge.poll")


class BusCoordinator:
    def __init__(self, bus: Bus, devices: list[tuple[Device, Profile]], sink: Sink) -> None:
        self.bus = bus
        self.lock = asyncio.Lock()
        self._modbus: ModbusBus | None = None
        self._line: LineSensorPort | None = None
        self.pollers: list[DevicePoller] = []
        self._started = time.monotonic()
        self._overloaded = False
        for dev, profile in devices:
            reader = self._reader(dev, profile)
            policy = PollPolicy(dev.interval, bus.timeout, bus.retries, dev.offline_after,
                                bus.backoff_max)
            self.pollers.append(DevicePoller(
                dev.id, profile.kind, reader, self.lock, policy,
                AlarmEvaluator(profile.alarms, dev.alarms), sink,
                rules=RuleEngine(profile.rules)))

    def _reader(self, dev: Device, profile: Profile) -> DeviceReader:
        bus = self.bus
        if isinstance(bus, SerialLineBus):
            if profile.line is None:  # config check guarantees this; keep mypy honest
                raise ValueError(f"profile {profile.name} has no line format")
            self._line = LineSensorPort(bus.port, profile.line, baudrate=bus.baudrate,
                                        parity=bus.parity, stopbits=bus.stopbits,
                                        bytesize=bus.bytesize)
            return LineReader(self._line, max_age=dev.interval * bus.stale_after)
        if self._modbus is None:
            if isinstance(bus, ModbusTcpBus):
                self._modbus = ModbusBus.tcp(bus.host, bus.port, timeout=bus.timeout)
            else:
                assert isinstance(bus, ModbusRtuBus)
                self._modbus = ModbusBus.rtu(bus.port, baudrate=bus.baudrate, parity=bus.parity,
                                             stopbits=bus.stopbits, bytesize=bus.bytesize,
                                             timeout=bus.timeout)
        return ModbusReader(self._modbus, dev.unit, profile)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                if self._line is not None:
                    tg.create_task(self._line.run(), name=f"line:{self.bus.name}")
                for p in self.pollers:
                    tg.create_task(p.run(), name=f"poll:{p.device_id}")
                tg.create_task(self._watch_load(), name=f"load:{self.bus.name}")
        finally:
            if self._modbus is not None:
                await self._modbus.close()

    async def poll_now(self, device_id: str, command_id: str) -> Reading:
        """Poll one device of this bus at once (``read-now``): it waits for the bus lock
        like a scheduled poll, so it never collides with one. Raises ``KeyError`` for a
        device not on this bus, :class:`DeviceError` when it does not answer."""
        poller = next((p for p in self.pollers if p.device_id == device_id), None)
        if poller is None:
            raise KeyError(device_id)
        return await poller.poll_now(command_id)

    def utilisation(self) -> float:
        """Fraction of wall time the bus was held by a request since start."""
        elapsed = max(1e-6, time.monotonic() - self._started)
        return min(1.0, sum(p.busy_seconds for p in self.pollers) / elapsed)

    async def _watch_load(self) -> None:
        last_busy, last_t = 0.0, time.monotonic()
        while True:
            await asyncio.sleep(10)
            busy = sum(p.busy_seconds for p in self.pollers)
            now = time.monotonic()
            load = (busy - last_busy) / max(1e-6, now - last_t)
            last_busy, last_t = busy, now
            over = load > 0.9
            if over != self._overloaded:
                self._overloaded = over
                level = logging.WARNING if over else logging.INFO
                log.log(level, "event=%s bus=%s utilisation=%.2f",
                        "bus_overloaded" if over else "bus_load_normal", self.bus.name, load)

    def health(self) -> dict[str, Any]:
        return {
            "type": self.bus.type,
            "utilisation": round(self.utilisation(), 3),
            "overloaded": self._overloaded,
            "line": self._line.stats if self._line is not None else None,
            "devices": {
                p.device_id: {
                    "kind": p.kind,
                    "online": p.stats.online,
                    "last_poll": p.stats.last_poll,
                    "last_quality": p.stats.last_quality,
                    "polls": p.stats.polls,
                    "good": p.stats.good,
                    "errors": p.stats.errors,
                    "requests": p.stats.requests,
                    "readings": p.stats.readings,
                    "cycles_skipped": p.stats.cycles_skipped,
                }
                for p in self.pollers
            },
        }
