"""A simulated line sensor: pushes the sentence of a ``protocol = "line"`` profile.

:class:`LineSimulator` writes one sentence per period to a serial device (in tests and
demos, one end of a socat pty pair) with plausible values: rain comes in bursts, the
total accumulates, the water level follows the rain and the battery slowly runs down.
Faults (line noise, bad checksums, silence, cut sentences) and alarms can be switched
on at run time. With a seed, the sequence of bytes written is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque

import serial
import serial_asyncio_fast

from drivers.profiles import AlarmRule, LineField, LineFormat, Profile, Value
from drivers.serial.framing import START, encode_sentence

log = logging.getLogger(__name__)

FAULTS = ("none", "garbage", "bad-checksum", "silence", "truncated")
# Values that trip the rain gauge's alarms; other rules get one computed from their threshold.
ALARM_VALUES: dict[str, float] = {"heavy_rain": 80.0, "battery_low": 3.1}
_MAX_BACKLOG = 4096  # bytes; a UART with nobody listening drops them, so do we
STATUS_BATTERY_LOW = 4


class RainModel:
    """Rain bursts, accumulated total, a level that follows the rain, a draining battery."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.rain_total = round(rng.uniform(0.0, 200.0), 1)
        self.rain_rate = 0.0
        self.water_level = 20.0
        self.battery = rng.uniform(3.8, 4.1)
        self._burst = 0.0  # intensity the current burst tends to, 0 when dry
        self._others: dict[str, float] = {}

    def step(self, dt: float, forced: dict[str, float]) -> dict[str, float]:
        rng = self._rng
        if self._burst == 0.0 and rng.random() < 0.03:
            self._burst = rng.uniform(2.0, 40.0)  # natural rain stays below heavy_rain
        elif self._burst and rng.random() < 0.04:
            self._burst = 0.0
        target = self._burst * rng.uniform(0.7, 1.3)
        self.rain_rate = max(0.0, self.rain_rate + (target - self.rain_rate) * 0.3)
        rate = forced.get("rain_rate", self.rain_rate)
        self.rain_total += rate * dt / 3600.0
        # Inflow proportional to rain, outflow to the height above the dry-weather base.
        self.water_level += (0.015 * rate - 0.01 * (self.water_level - 20.0)) * dt
        self.water_level = max(0.0, self.water_level)
        self.battery = max(3.45, self.battery - 1e-5 * dt)
        battery = forced.get("battery", self.battery + rng.gauss(0.0, 0.003))
        return {
            "rain_total": self.rain_total,
            "rain_rate": rate,
            "water_level": self.water_level + rng.gauss(0.0, 0.2),
            "battery": battery,
            "status": STATUS_BATTERY_LOW if battery < 3.3 else 0,
        }

    def other(self, name: str) -> float:
        """A bounded random walk for fields this model does not know."""
        value = self._others.get(name, 50.0) + self._rng.gauss(0.0, 1.0)
        self._others[name] = min(100.0, max(0.0, value))
        return self._others[name]


def alarm_value(rule: AlarmRule) -> float:
    """A value of ``rule.point`` that clearly trips ``rule``."""
    if rule.name in ALARM_VALUES:
        return ALARM_VALUES[rule.name]
    if rule.above is not None:
        return rule.above + max(2 * rule.hysteresis, abs(rule.above) * 0.5, 1.0)
    if rule.below is not None:
        return rule.below - max(2 * rule.hysteresis, abs(rule.below) * 0.05, 0.1)
    return 1.0 if rule.when else 0.0


def _field_text(field: LineField, value: float) -> tuple[str, Value]:
    """The text sent for ``value`` and the value a receiver decodes from it."""
    raw = (value - field.offset) / field.scale
    if field.type == "int":
        number: float | int = round(raw)
        text = str(number)
    else:
        text = f"{raw:.3f}"
        number = float(text)
    if field.scale == 1.0 and field.offset == 0.0:
        return text, number
    return text, number * field.scale + field.offset


class LineSimulator:
    """Writes ``profile``'s sentence to the serial device ``path`` every ``period`` seconds."""

    def __init__(
        self,
        profile: Profile,
        path: str,
        *,
        period: float = 1.0,
        baudrate: int = 9600,
        seed: int | None = None,
    ) -> None:
        if profile.line is None:
            raise ValueError(f"profile {profile.name!r} has no [line] table")
        self.profile = profile
        self.fmt: LineFormat = profile.line
        self.path = path
        self.period = period
        self.baudrate = baudrate
        self._rng = random.Random(seed)
        self._model = RainModel(self._rng)
        self._fault = "none"
        self._rate = 1.0
        self._forced: dict[str, float] = {}
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self.history: deque[dict[str, Value]] = deque(maxlen=256)
        self.counts = dict.fromkeys(FAULTS, 0)

    @property
    def fault(self) -> str:
        return self._fault

    def set_fault(self, kind: str, *, rate: float = 1.0) -> None:
        """Apply fault ``kind`` to each sentence with probability ``rate`` (``none`` clears)."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {', '.join(FAULTS)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        self._fault, self._rate = kind, rate
        log.info("event=line_sim_fault path=%s fault=%s rate=%.2f", self.path, kind, rate)

    def inject_alarm(self, name: str) -> None:
        """Hold the alarm's point at a value that trips it until :meth:`clear_alarms`."""
        rule = next((r for r in self.profile.alarms if r.name == name), None)
        if rule is None:
            known = ", ".join(r.name for r in self.profile.alarms) or "none"
            raise ValueError(f"profile {self.profile.name} has no alarm {name!r} ({known})")
        self._forced[rule.point] = alarm_value(rule)

    def set_point(self, name: str, value: Value) -> None:
        """Hold field ``name`` at ``value`` until :meth:`clear_alarms`."""
        known = [f.name for f in self.fmt.fields]
        if name not in known:
            raise ValueError(f"profile {self.profile.name} has no field {name!r} ({', '.join(known)})")
        self._forced[name] = value

    def clear_alarms(self) -> None:
        self._forced.clear()

    def frame(self) -> bytes:
        """Advance one period and return the bytes to write (empty when silent)."""
        values = self._model.step(self.period, self._forced)
        width = max(f.index for f in self.fmt.fields)
        texts = [""] * width
        decoded: dict[str, Value] = {}
        for field in self.fmt.fields:
            value = self._forced.get(field.name)
            if value is None:
                value = values.get(field.name)
            if value is None:
                value = self._model.other(field.name)
            texts[field.index - 1], decoded[field.name] = _field_text(field, value)
        data = encode_sentence(self.fmt.sentence, texts)
        fault = self._fault if self._rng.random() < self._rate else "none"
        self.counts[fault] += 1
        if fault in ("none", "garbage"):  # sentences a receiver gets intact
            self.history.append(decoded)
        return self._apply(fault, data)

    def _apply(self, fault: str, data: bytes) -> bytes:
        rng = self._rng
        if fault == "garbage":
            noise = bytes(b for b in rng.randbytes(rng.randint(1, 24)) if b != START)
            return noise + data
        if fault == "bad-checksum":
            wrong = int(data[-4:-2], 16) ^ rng.randint(1, 255)
            return data[:-4] + b"%02X\r\n" % wrong
        if fault == "silence":
            return b""
        if fault == "truncated":
            return data[: rng.randint(2, len(data) - 5)]
        return data

    async def start(self) -> None:
        """Open the device (raising if it cannot be opened) and start writing."""
        if self._task is not None:
            raise RuntimeError("simulator already started")
        await self._open()
        log.info("event=line_sim_started path=%s profile=%s period=%.3f",
                 self.path, self.profile.name, self.period)
        self._task = asyncio.create_task(self._run(), name=f"line-sim:{self.path}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            # abort, not close: close() drains output, which blocks if nobody reads.
            self._transport.abort()
            self._transport = None
        log.info("event=line_sim_stopped path=%s", self.path)

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, asyncio.Protocol, self.path, baudrate=self.baudrate
        )
        self._transport = transport

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.period
            await asyncio.sleep(max(0.0, due - loop.time()))
            data = self.frame()
            if await self._ensure_open() and data:
                self._write(data)

    async def _ensure_open(self) -> bool:
        """Reopen the device after it went away (an unplugged adapter, a restarted socat)."""
        if self._transport is not None and not self._transport.is_closing():
            return True
        if self._transport is not None:
            self._transport = None
            log.warning("event=line_sim_lost path=%s", self.path)
        try:
            await self._open()
        except (serial.SerialException, OSError):
            return False
        log.info("event=line_sim_reopened path=%s", self.path)
        return True

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        if self._transport.get_write_buffer_size() > _MAX_BACKLOG:
            return
        self._transport.write(data)
