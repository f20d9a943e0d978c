"""What a device poll reads through: one adapter per bus type, behind one small interface.

The device poller does not care whether values come from a Modbus request plan or from
the last sentence a serial sensor pushed; it calls ``read()`` and gets a :class:`PollResult`
or a :class:`drivers.errors.DeviceError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from drivers.errors import DeviceError
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.profiles import Profile, Value
from drivers.serial.port import LineSensorPort


@dataclass(frozen=True, slots=True)
class PollResult:
    values: dict[str, Value]
    quality: str = "good"  # good | stale | error
    point_quality: dict[str, str] = field(default_factory=dict)
    requests: int = 0


class DeviceReader(Protocol):
    async def read(self) -> PollResult: ...


class NoData(DeviceError):
    """A pushed-data sensor has not sent a usable sentence yet (or for far too long)."""

    reason = "no_data"


class ModbusReader:
    """Reads one Modbus device with its precomputed request plan."""

    def __init__(self, bus: ModbusBus, unit: int, profile: Profile) -> None:
        self.bus = bus
        self.unit = unit
        self.blocks: tuple[ReadBlock, ...] = plan_reads(profile.points)

    async def read(self) -> PollResult:
        values, failed = await self.bus.read_device(self.unit, self.blocks)
        if failed and not values:
            # Every block answered with an exception: nothing usable from this poll.
            raise DeviceError(f"all blocks failed: {sorted(set(failed.values()))}")
        return PollResult(
            values,
            "error" if failed else "good",
            {p: "error" for p in failed},
            len(self.blocks),
        )


class LineReader:
    """Takes the freshest sentence a serial line sensor pushed; old data is marked stale."""

    def __init__(self, port: LineSensorPort, max_age: float) -> None:
        self.port = port
        self.max_age = max_age

    async def read(self) -> PollResult:
        latest = self.port.latest()
        if latest is None:
            raise NoData("no valid sentence received yet")
        values, ts = latest
        age = time.time() - ts
        if age > self.max_age:
            if not self.port.connected:
                raise NoData(f"port closed; last sentence {age:.0f}s ago")
            return PollResult(values, "stale", {name: "stale" for name in values})
        return PollResult(values)
