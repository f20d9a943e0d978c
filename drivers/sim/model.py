"""Plausible, changing device values for the simulators. [pure]

One :class:`UnitModel` per simulated unit. Time advances in whole ticks; each tick the
kind-specific physics takes one step with the unit's own seeded RNG, so two models with
the same seed, unit and start time produce the same values tick by tick.

Points a kind model does not know (a user-written profile, a renamed point) get a
generic slow random walk, so every profile can be simulated. Writes to writable points
become commands the physics honours (lamp switched off stays off). Injected alarms force
the point the alarm rule watches past its threshold until cleared; kind models apply
the forced value to their physical state so dependent points stay consistent (a forced
flood level also shortens the echo distance).

Times are UNIX seconds; day/night schedules use UTC hours (the water meter: local hours).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from drivers.profiles import AlarmRule, Point, Profile, Value

MAX_CATCH_UP_STEPS = 1000


def _hour(t: float) -> float:
    return (t % 86400.0) / 3600.0


def _clamp(x: float, low: float, high: float) -> float:
    return min(high, max(low, x))


class KindModel:
    """Physics of one device family: ``step`` advances it, ``values`` reads it out."""

    def __init__(self, rng: random.Random, start: float) -> None:
        self.rng = rng
        self.t = start

    def step(self, dt: float, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> None:
        """Advance the physics by ``dt`` seconds (the clock is advanced by the caller)."""

    def values(self, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> dict[str, Value]:
        """Current engineering values of the points this model knows."""
        return {}


class StreetlightModel(KindModel):
    """Dusk-to-dawn lamp with a midnight dimming step, metered at the mains; a radar/PIR
    counts passers-by per minute (rush hours busy, the small hours nearly empty)."""

    RATED_W = 60.0

    def __init__(self, rng: random.Random, start: float) -> None:
        super().__init__(rng, start)
        self.voltage = 230.0 + rng.uniform(-3, 3)
        self.energy = rng.uniform(100, 5000)
        self.hours = float(rng.randint(1000, 20000))
        self.noise = 1.0
        self.lux = self._daylight()
        self.traffic = self._traffic()

    def _traffic(self) -> int:
        hour = _hour(self.t)
        rush = math.exp(-((hour - 7.5) ** 2) / 2) + math.exp(-((hour - 17.5) ** 2) / 2)
        mean = 1.0 + 25.0 * rush + (4.0 if 6.0 <= hour < 22.0 else 0.0)
        return max(0, round(self.rng.gauss(mean, math.sqrt(mean))))

    def _daylight(self) -> float:
        sun = math.sin(math.pi * (_hour(self.t) - 6.0) / 12.0)
        return max(0.0, sun) * 20000.0 + self.rng.uniform(0, 5)

    def _lamp(self, commands: Mapping[str, Value]) -> tuple[bool, float]:
        on = bool(commands.get("lamp_on", self.lux < 50.0))
        hour = _hour(self.t)
        scheduled = 50.0 if hour >= 23.0 or hour < 5.0 else 100.0
        return on, float(commands.get("dim_level", scheduled))

    def _power(self, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> float:
        on, dim = self._lamp(commands)
        if not on or forced.get("lamp_fault") or forced.get("driver_fault"):
            return 0.5
        return max(0.5, self.RATED_W * dim / 100.0 * self.noise)

    def step(self, dt: float, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> None:
        self.voltage = _clamp(self.voltage + self.rng.gauss(0, 0.4), 225.0, 235.0)
        self.lux = self._daylight()
        self.traffic = self._traffic()
        self.noise = 1 + self.rng.uniform(-0.01, 0.01)
        self.energy += self._power(commands, forced) * dt / 3.6e6
        if self._lamp(commands)[0]:
            self.hours += dt / 3600.0

    def values(self, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> dict[str, Value]:
        on, dim = self._lamp(commands)
        power = self._power(commands, forced)
        pf = 0.95 * self.noise if power > 1 else 0.5
        return {
            "lamp_on": on, "dim_level": round(dim), "active_power": round(power, 2),
            "energy": self.energy, "voltage": self.voltage,
            "current": power / (self.voltage * pf), "power_factor": pf,
            "lamp_fault": False, "driver_fault": False,
            "burning_hours": math.floor(self.hours), "ambient_lux": round(self.lux),
            "traffic_count": self.traffic,
        }


class WaterMeterModel(KindModel):
    """A household behind the meter: water is drawn in events (a shower, a flush, a tap),
    often in the morning and evening, seldom at night, and between events nothing flows; so
    the night-flow leak rule stays quiet unless a leak is injected (``alarm leak``: a
    continuous trickle). A motorised valve throttles the flow; 0 % shuts it off. The battery
    drains slowly.

    Hours here are local (``UTC_OFFSET_H``, Vietnam, the profile's night-flow default), not
    UTC like the other models: household habits follow the local clock."""

    UTC_OFFSET_H = 7.0
    VALVE_RATE = 25.0  # % per second: a small motorised ball valve strokes in about 4 s
    LEAK_FLOW = 0.02  # m3/h (20 L/h: a running cistern)

    def __init__(self, rng: random.Random, start: float) -> None:
        super().__init__(rng, start)
        self.total = rng.uniform(10, 2000)
        self.flow = 0.0
        self.pressure = 3.5
        self.battery = rng.uniform(60, 100)
        self.valve = 100.0
        self.draw = 0.0  # m3/h of the water-use event under way, 0 between events
        self.draw_left = 0.0  # s left of that event

    def _events_per_hour(self) -> float:
        hour = ((self.t / 3600.0) + self.UTC_OFFSET_H) % 24.0
        peaks = math.exp(-((hour - 7.0) ** 2) / 2) + 0.8 * math.exp(-((hour - 19.5) ** 2) / 3)
        return 0.1 + 8.0 * peaks  # about one event in ten hours at 01:00-04:00

    def _valve(self, dt: float, commands: Mapping[str, Value]) -> None:
        want = _clamp(float(commands.get("valve_setpoint", 100.0)), 0.0, 100.0)
        travel = self.VALVE_RATE * dt
        self.valve = want if abs(want - self.valve) <= travel else self.valve + math.copysign(travel, want - self.valve)

    def step(self, dt: float, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> None:
        self._valve(dt, commands)
        if self.draw_left <= 0.0 and self.rng.random() < 1.0 - math.exp(-self._events_per_hour() * dt / 3600.0):
            self.draw = self.rng.uniform(0.3, 1.2)
            self.draw_left = self.rng.uniform(30.0, 300.0)
        demand = self.draw * (1 + self.rng.gauss(0, 0.05)) if self.draw_left > 0.0 else 0.0
        self.draw_left = max(0.0, self.draw_left - dt)
        if forced.get("leak"):
            demand = max(demand, self.LEAK_FLOW)
        flow = max(0.0, demand) * self.valve / 100.0
        if forced.get("reverse_flow"):
            flow = -abs(flow) * 0.1 - 0.005
        self.flow = flow
        self.total = max(0.0, self.total + flow * dt / 3600.0)
        self.battery = max(0.0, self.battery - dt * 2e-6)
        pressure = 3.5 - 0.3 * max(0.0, flow) + self.rng.gauss(0, 0.02)
        self.pressure = _clamp(pressure, 0.0, 10.0)

    def values(self, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> dict[str, Value]:
        return {
            "totaliser": self.total, "flow": round(self.flow, 4),
            "pressure": self.pressure, "battery": round(self.battery),
            "valve_position": round(self.valve), "valve_setpoint": commands.get("valve_setpoint", 100),
            "leak": False, "tamper": False, "reverse_flow": self.flow < 0,
            "low_battery": self.battery < 10.0,
        }


class FloodSensorModel(KindModel):
    """Level random walk around a dry-weather base; rain comes in bursts and raises it."""

    MOUNT_MM = 4000
    BASE_CM = 40.0

    def __init__(self, rng: random.Random, start: float) -> None:
        super().__init__(rng, start)
        self.level = self.BASE_CM + rng.uniform(-10, 10)
        self.rain_mm = round(rng.uniform(0, 500), 1)
        self.burst = 0
        self.battery = rng.uniform(3.5, 3.7)

    def step(self, dt: float, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> None:
        if self.burst == 0 and self.rng.random() < 0.01:
            self.burst = self.rng.randint(5, 60)
        inflow = 0.0
        if self.burst:
            self.burst -= 1
            tips = self.rng.randint(0, 5)
            self.rain_mm = round(self.rain_mm + tips * 0.1, 1)
            inflow = tips * 0.3
        drift = 0.02 * (self.BASE_CM - self.level) + self.rng.gauss(0, 0.3)
        self.level = _clamp(self.level + drift + inflow, -50.0, 390.0)
        self.battery = max(2.8, self.battery - dt * 1e-7 + self.rng.gauss(0, 0.0005))

    def values(self, commands: Mapping[str, Value], forced: Mapping[str, Value]) -> dict[str, Value]:
        level = float(forced.get("water_level", self.level))
        distance = max(0, round(self.MOUNT_MM - level * 10))
        return {
            "water_level": level, "distance": distance, "rainfall": self.rain_mm,
            "battery": self.battery,
        }


KIND_MODELS: dict[str, type[KindModel]] = {
    "streetlight": StreetlightModel,
    "water-meter": WaterMeterModel,
    "flood-sensor": FloodSensorModel,
}


def forced_value(rule: AlarmRule, resolution: float = 1.0) -> Value:
    """A value that clearly trips ``rule``: past threshold and hysteresis by 5 % of the
    threshold, and by at least two steps of the point's ``resolution`` (its scale) so
    the value still trips the rule once quantised into a register."""
    if rule.when is not None:
        return rule.when
    threshold = rule.above if rule.above is not None else rule.below
    assert threshold is not None  # AlarmRule guarantees exactly one condition
    margin = rule.hysteresis + max(abs(threshold) * 0.05, 2 * abs(resolution))
    return threshold + margin if rule.above is not None else threshold - margin


def _generic_start(point: Point, rng: random.Random) -> float:
    if point.type in ("bool",) or point.bit is not None:
        return 0.0
    return rng.uniform(10, 100) * point.scale + point.offset


class UnitModel:
    """The simulated state of one unit of a profile."""

    def __init__(self, profile: Profile, unit: int, *, seed: int | None, start: float,
                 tick: float) -> None:
        self.profile = profile
        self.tick = tick
        self.rng = random.Random(None if seed is None else f"{seed}:{unit}")
        model_cls = KIND_MODELS.get(profile.kind, KindModel)
        self.kind = model_cls(self.rng, start)
        self.start = start
        self.ticks = 0
        self.commands: dict[str, Value] = {}
        self.forced: dict[str, Value] = {}
        self.generic: dict[str, float] = {}
        self._readout: dict[str, Value] = {}
        self._refresh()

    def advance(self, ticks: int) -> None:
        """Step the physics up to tick number ``ticks`` (bounded catch-up)."""
        behind = ticks - self.ticks
        if behind <= 0:
            return
        steps = min(behind, MAX_CATCH_UP_STEPS)
        dt = self.tick * behind / steps
        for _ in range(steps):
            self.kind.t += dt
            self.kind.step(dt, self.commands, self.forced)
            for name in self.generic:
                self.generic[name] *= 1 + self.rng.gauss(0, 0.01)
        self.ticks = ticks
        self._refresh()

    def _refresh(self) -> None:
        known = self.kind.values(self.commands, self.forced)
        readout: dict[str, Value] = {}
        for point in self.profile.points:
            if point.name in known:
                readout[point.name] = known[point.name]
            elif point.is_bit or point.type == "bool":
                readout[point.name] = False
            else:
                if point.name not in self.generic:
                    self.generic[point.name] = _generic_start(point, self.rng)
                readout[point.name] = self.generic[point.name]
        readout.update({k: v for k, v in self.commands.items() if k in readout})
        readout.update({k: v for k, v in self.forced.items() if k in readout})
        self._readout = readout

    def values(self) -> dict[str, Value]:
        """Engineering values of every profile point (before register quantisation)."""
        return self._readout

    def command(self, name: str, value: Value) -> None:
        """A write from the master: the physics follows it from now on."""
        self.commands[name] = value
        self._refresh()

    def force_alarm(self, rule: AlarmRule) -> None:
        """Hold the rule's point past its threshold until :meth:`clear_alarms`."""
        point = next(p for p in self.profile.points if p.name == rule.point)
        self.forced[rule.point] = forced_value(rule, point.scale)
        self._refresh()

    def set_point(self, name: str, value: Value) -> None:
        """Hold ``name`` at ``value`` whatever the physics says (a stuck relay reporting
        off while the lamp draws power, a level rising fast), until :meth:`clear_alarms`."""
        self.forced[name] = value
        self._refresh()

    def clear_alarms(self) -> None:
        """Release every forced point."""
        self.forced.clear()
        self._refresh()
