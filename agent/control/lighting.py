"""[pure] Local streetlight control: what each lamp should do now, and why.

The gateway runs this whether or not the uplink is up (docs/lighting.md). Inputs are the
local time of day, the latest ambient light and traffic readings of each streetlight, the
dimming schedule and the rules; output per streetlight is a :class:`Decision`:
``lamp_on``, ``level`` (0..100 %) and the ``reason`` that set it. Nothing here reads the
clock or does I/O: time is passed in (UNIX seconds), so a night replays in microseconds.

Precedence, highest first:

1. ``manual`` — an operator's on/off/dim command (or ``lighting manual``) holds the device
   until the next schedule step (or ``lighting auto``); only the points it set are held.
2. ``traffic`` — traffic above the threshold raises a lit lamp to ``boost`` (never below
   the schedule level) for ``hold`` seconds after the last busy reading.
3. ``ambient`` — with the rule configured, the lamp is on while it is dark (below
   ``on_below`` lux, until above ``off_above``: hysteresis), whatever the schedule's
   on/off says, and changes only after the condition held for ``dwell`` seconds.
4. ``schedule`` — the level of the step in force at this local time of day.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

Reason = Literal["schedule", "ambient", "traffic", "manual"]
DAY = 86_400

_STEP = re.compile(r"^\s*([01]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?\s*(?:=|->)\s*(off|[0-9]{1,3})\s*$",
                   re.IGNORECASE)
_OFFSET = re.compile(r"^([+-])([01][0-9]|2[0-3]):([0-5][0-9])$")


class LightingError(ValueError):
    """A schedule step or setting that cannot be used; the message names the culprit."""


@dataclass(frozen=True, slots=True)
class Step:
    """From ``second`` after local midnight on: ``level`` %, or None for off."""

    second: int
    level: int | None

    @property
    def time(self) -> str:
        h, m, sec = self.second // 3600, self.second // 60 % 60, self.second % 60
        return f"{h:02d}:{m:02d}" + (f":{sec:02d}" if sec else "")

    def __str__(self) -> str:
        return f"{self.time}={'off' if self.level is None else self.level}"


def parse_step(text: str) -> Step:
    """``"18:00=100"``, ``"05:30 -> off"``, ``"18:00:30=80"`` -> :class:`Step`;
    :class:`LightingError` otherwise. Seconds are optional (drills and tests)."""
    m = _STEP.match(text) if isinstance(text, str) else None
    if m is None:
        raise LightingError(f"step {text!r}: expected HH:MM=LEVEL (0-100) or HH:MM=off")
    level = None if m.group(4).lower() == "off" else int(m.group(4))
    if level is not None and level > 100:
        raise LightingError(f"step {text!r}: level {level} is outside 0..100")
    return Step(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3) or 0), level)


@dataclass(frozen=True)
class Schedule:
    """Steps sorted by time of day; the last one runs on past midnight to the first."""

    steps: tuple[Step, ...]

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Schedule:
        steps = sorted((parse_step(t) for t in texts), key=lambda s: s.second)
        if not steps:
            raise LightingError("a schedule needs at least one step")
        for a, b in itertools.pairwise(steps):
            if a.second == b.second:
                raise LightingError(f"two steps at {a.time}")
        return cls(tuple(steps))

    def texts(self) -> list[str]:
        return [str(s) for s in self.steps]

    def index_at(self, second_of_day: float) -> int:
        """Index of the step in force ``second_of_day`` seconds after local midnight."""
        sod = second_of_day % DAY
        idx = len(self.steps) - 1  # before the first step of the day: yesterday's last
        for i, s in enumerate(self.steps):
            if s.second <= sod:
                idx = i
        return idx

    def level_at(self, second_of_day: float) -> int | None:
        return self.steps[self.index_at(second_of_day)].level

    def next_change(self, second_of_day: float) -> float:
        """Seconds from ``second_of_day`` to the start of the next step (a full day with one step)."""
        sod = second_of_day % DAY
        later = [s.second for s in self.steps if s.second > sod]
        nxt = later[0] if later else self.steps[0].second + DAY
        return nxt - sod


def parse_utc_offset(text: str) -> int:
    """``"+07:00"`` -> seconds east of UTC (local = UTC + offset)."""
    m = _OFFSET.match(text)
    if m is None:
        raise LightingError(f"utc_offset {text!r}: expected +HH:MM or -HH:MM")
    seconds = int(m.group(2)) * 3600 + int(m.group(3)) * 60
    return -seconds if m.group(1) == "-" else seconds


@dataclass(frozen=True)
class AmbientRule:
    """Lamp on below ``on_below`` lux, off above ``off_above``; a change must hold for ``dwell``
    seconds first. ``level`` is used when it is dark in a schedule step that says off."""

    on_below: float
    off_above: float
    dwell: float = 120.0
    level: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.on_below < self.off_above:
            raise LightingError(f"ambient: need 0 <= on_below < off_above, got {self.on_below:g} / {self.off_above:g}")
        if self.dwell < 0 or not 0 <= self.level <= 100:
            raise LightingError("ambient: dwell must be >= 0 and level within 0..100")


@dataclass(frozen=True)
class TrafficRule:
    """A reading of more than ``above`` vehicles/pedestrians in the last minute raises a lit
    lamp to ``boost`` % for ``hold`` seconds after the last such reading."""

    above: float
    boost: int = 100
    hold: float = 120.0

    def __post_init__(self) -> None:
        if self.above < 0 or self.hold < 0 or not 0 <= self.boost <= 100:
            raise LightingError("traffic: need above >= 0, hold >= 0 and boost within 0..100")


@dataclass(frozen=True)
class Settings:
    schedule: Schedule
    utc_offset: int = 7 * 3600  # Vietnam
    ambient: AmbientRule | None = None
    traffic: TrafficRule | None = None
    lux_point: str = "ambient_lux"
    traffic_point: str = "traffic_count"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a streetlight should be set to. None: leave that point as it is (held by hand,
    or the dim level of a lamp that is off)."""

    lamp_on: bool | None
    level: int | None
    reason: Reason


@dataclass
class _Manual:
    lamp_on: bool | None = None
    level: int | None = None
    until: float = math.inf


@dataclass
class DeviceState:
    dark: bool | None = None  # ambient verdict in force; None until the first lux reading
    changed_at: float = -math.inf  # when ``dark`` last changed
    pending_since: float | None = None  # the opposite verdict has been seen since then
    boost_until: float = -math.inf
    manual: _Manual | None = None


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


@dataclass
class Controller:
    """Per-device state (hysteresis, dwell, boost holds, manual overrides) and the decision."""

    settings: Settings
    mode: Literal["auto", "manual"] = "auto"
    devices: dict[str, DeviceState] = field(default_factory=dict)

    def _state(self, device: str) -> DeviceState:
        return self.devices.setdefault(device, DeviceState())

    def local_second(self, now: float) -> float:
        return (now + self.settings.utc_offset) % DAY

    def feed(self, device: str, ts: float, values: Mapping[str, object]) -> None:
        """A good poll of ``device`` taken at ``ts``: update its ambient and traffic state."""
        st, s = self._state(device), self.settings
        lux = _number(values.get(s.lux_point))
        if s.ambient is not None and lux is not None:
            self._ambient(st, s.ambient, ts, lux)
        count = _number(values.get(s.traffic_point))
        if s.traffic is not None and count is not None and count > s.traffic.above:
            st.boost_until = max(st.boost_until, ts + s.traffic.hold)

    @staticmethod
    def _ambient(st: DeviceState, rule: AmbientRule, ts: float, lux: float) -> None:
        verdict = True if lux < rule.on_below else False if lux > rule.off_above else st.dark
        if st.dark is None:
            if verdict is not None:
                st.dark, st.changed_at = verdict, ts  # first reading: no flip, take it as it is
            return
        if verdict is None or verdict == st.dark:
            st.pending_since = None  # a passing headlight or cloud: the count starts again
            return
        if st.pending_since is None or ts < st.pending_since:  # (or the clock stepped back)
            st.pending_since = ts
        if ts - st.pending_since >= rule.dwell:
            st.dark, st.changed_at, st.pending_since = verdict, ts, None

    def manual(self, device: str, now: float, *, lamp_on: bool | None = None, level: int | None = None) -> None:
        """An operator set ``device`` by hand: hold what was set until the next schedule step."""
        st = self._state(device)
        until = now + self.settings.schedule.next_change(self.local_second(now))
        m = st.manual if st.manual is not None and now < st.manual.until else _Manual()
        if lamp_on is not None:
            m.lamp_on = lamp_on
        if level is not None:
            m.level = max(0, min(100, int(level)))
        m.until = until
        st.manual = m

    def set_schedule(self, schedule: Schedule, now: float) -> None:
        """A new schedule from the IOC. A manual hold lasts "until the next schedule step", and
        the steps are now these: a hold ends at this schedule's next step if that comes sooner."""
        self.settings = replace(self.settings, schedule=schedule)
        until = now + schedule.next_change(self.local_second(now))
        for st in self.devices.values():
            if st.manual is not None:
                st.manual.until = min(st.manual.until, until)

    def holds(self, now: float) -> dict[str, dict[str, object]]:
        """The manual holds and traffic boosts still in force at ``now``, as JSON for the state
        file: a restart must not undo an operator's dim or cut a boost short."""
        out: dict[str, dict[str, object]] = {}
        for device, st in self.devices.items():
            item: dict[str, object] = {}
            m = st.manual
            if m is not None and now < m.until:
                item["manual"] = {"lamp_on": m.lamp_on, "level": m.level,
                                  "until": m.until if math.isfinite(m.until) else None}
            if now < st.boost_until:
                item["boost_until"] = st.boost_until
            if item:
                out[device] = item
        return out

    def restore(self, saved: object, now: float) -> list[str]:
        """Take back what :meth:`holds` gave (those ended meanwhile are dropped). Anything
        malformed is skipped; returns what was skipped, to be logged."""
        skipped: list[str] = []
        if not isinstance(saved, dict):
            return [] if saved is None else ["holds: not an object"]
        for device, item in saved.items():
            try:
                m, boost = item.get("manual"), item.get("boost_until")
                if m is not None:
                    until = math.inf if m["until"] is None else float(m["until"])
                    lamp_on, level = m["lamp_on"], m["level"]
                    if lamp_on is not None and not isinstance(lamp_on, bool):
                        raise TypeError("lamp_on")
                    if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                                              or not 0 <= level <= 100):
                        raise TypeError("level")
                    if now < until:
                        self._state(device).manual = _Manual(lamp_on, level, until)
                if boost is not None and now < float(boost):
                    self._state(device).boost_until = float(boost)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                skipped.append(f"{device}: {exc}")
        return skipped

    def resume(self) -> None:
        """``lighting auto``: drop every manual hold."""
        self.mode = "auto"
        for st in self.devices.values():
            st.manual = None

    def decide(self, device: str, now: float) -> Decision:
        st, s = self._state(device), self.settings
        if self.mode == "manual":
            return Decision(None, None, "manual")
        m = st.manual
        if m is not None and now >= m.until:
            st.manual = m = None
        if m is not None:
            return Decision(m.lamp_on, m.level, "manual")
        scheduled = s.schedule.level_at(self.local_second(now))
        on, level = scheduled is not None, scheduled
        reason: Reason = "schedule"
        if s.ambient is not None and st.dark is not None and st.dark != on:
            on, reason = st.dark, "ambient"
            level = s.ambient.level if on else None
        if s.traffic is not None and level is not None and now < st.boost_until and s.traffic.boost > level:
            level, reason = s.traffic.boost, "traffic"
        # An unlit lamp keeps its set-point: nothing to write, and the next switch-on is at it.
        return Decision(on, level if on else None, reason)
