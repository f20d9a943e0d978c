"""Device profiles: the declarative description of a device type.

A profile (``config/profiles/*.toml``) lists the points of a device — where each value
lives (Modbus register type and address, or field of a serial sentence), how it is
encoded and scaled — and the default alarm rules. Adding a device type is writing a
profile, not code. Profiles are validated here; errors name file, field and problem.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.errors import ProfileError

RegisterType = Literal["coil", "discrete_input", "holding", "input"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]
Value = bool | int | float

BIT_REGISTERS: frozenset[str] = frozenset({"coil", "discrete_input"})
WORDS: dict[str, int] = {
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Strict):
    """One named value of a Modbus device."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
    table: RegisterType
    address: Annotated[int, Field(ge=0, le=65535)]
    type: DataType = "uint16"
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    bit: Annotated[int | None, Field(ge=0, le=15)] = None
    writable: bool = False
    # Range a command may write (engineering units, inclusive); the gateway refuses values
    # outside it (``out_of_range``) before they reach the device.
    min: float | None = None
    max: float | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_encoding(self) -> Point:
        if (self.min is not None or self.max is not None) and not self.writable:
            raise ValueError("'min'/'max' limit writes: only for writable points")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' must not exceed 'max'")
        if self.table in BIT_REGISTERS and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: type must be 'bool'")
        if self.table not in BIT_REGISTERS and self.type == "bool" and self.bit is None:
            raise ValueError("a bool in a register needs 'bit' (0-15)")
        if self.bit is not None and self.type not in ("bool", "uint16"):
            raise ValueError("'bit' applies only to bool/uint16 points")
        if self.bit is not None and self.table in BIT_REGISTERS:
            raise ValueError("'bit' is only for holding/input registers")
        if self.address + self.width - 1 > 65535:
            raise ValueError("point runs past address 65535")
        return self

    @property
    def is_bit(self) -> bool:
        """True when the point lives in a coil or discrete input (addressed in bits)."""
        return self.table in BIT_REGISTERS

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return 1 if self.is_bit else WORDS[self.type]

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.width


class LineField(_Strict):
    """One comma-separated field of an ASCII sentence from a serial line sensor."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
    index: Annotated[int, Field(ge=1, le=64)]
    type: Literal["float", "int"] = "float"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    description: str = ""


class LineFormat(_Strict):
    """The sentence a serial line sensor emits: ``$<sentence>,f1,f2,...*HH\\r\\n``."""

    sentence: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{1,15}$")]
    fields: Annotated[tuple[LineField, ...], Field(min_length=1)]
    checksum: Literal["xor8"] = "xor8"


class AlarmRule(_Strict):
    """A threshold (``above``/``below`` with hysteresis) or a flag (``when``) rule on a point."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
    point: str
    above: float | None = None
    below: float | None = None
    when: bool | None = None
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    severity: Literal["info", "warning", "alert", "danger", "critical"] = "warning"
    description: str = ""

    @model_validator(mode="after")
    def _one_condition(self) -> AlarmRule:
        given = [c for c in (self.above, self.below, self.when) if c is not None]
        if len(given) != 1:
            raise ValueError("exactly one of 'above', 'below' or 'when' must be set")
        return self


_Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=48)]
_Severity = Literal["info", "warning", "alert", "danger", "critical"]
_HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class RateAboveRule(_Strict):
    """A value rising faster than ``rate`` per minute over the last ``window`` seconds
    (e.g. a flood level). Clears once the rate falls below ``rate - hysteresis``."""

    type: Literal["rate_above"]
    name: _Name
    point: str
    rate: Annotated[float, Field(gt=0)]
    window: Annotated[float, Field(gt=0, le=86400)] = 600.0
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    min_samples: Annotated[int, Field(ge=4, le=1000)] = 5
    severity: _Severity = "alert"
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> RateAboveRule:
        if self.hysteresis >= self.rate:
            raise ValueError("'hysteresis' must be smaller than 'rate' (the rule could never clear)")
        return self


class NightFlowRule(_Strict):
    """Flow that never stops during a night window: the signature of a leak after the meter.

    ``point`` is a flow (zero when ``|flow| <= zero_below``) or, with ``counter = true``, a
    volume counter (zero when it rose by no more than ``zero_below`` for ``zero_period``
    seconds). Raised at most once per night, after ``min_duration`` seconds of flow seen in
    the window with no zero (polls more than ``max_gap`` seconds apart start the count
    again: flow nobody saw is no evidence); cleared by the first zero seen, at any hour."""

    type: Literal["night_flow"]
    name: _Name
    point: str
    counter: bool = False
    zero_below: Annotated[float, Field(ge=0)] = 0.0
    zero_period: Annotated[float, Field(gt=0, le=86400)] = 900.0
    start: Annotated[str, Field(pattern=_HHMM)] = "01:00"
    end: Annotated[str, Field(pattern=_HHMM)] = "04:00"
    utc_offset: Annotated[str, Field(pattern=r"^[+-]([01][0-9]|2[0-3]):[0-5][0-9]$")] = "+07:00"
    min_duration: Annotated[float, Field(gt=0)] = 7200.0
    max_gap: Annotated[float, Field(gt=0)] = 1800.0
    severity: _Severity = "warning"
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> NightFlowRule:
        if self.start == self.end:
            raise ValueError("'start' and 'end' must differ")
        if self.min_duration > self.window_seconds:
            raise ValueError(f"'min_duration' ({self.min_duration:g} s) is longer than the "
                             f"window {self.start}-{self.end} ({self.window_seconds} s)")
        return self

    @staticmethod
    def _minutes(hhmm: str) -> int:
        hours, minutes = hhmm.split(":")
        return int(hours) * 60 + int(minutes)

    @property
    def start_seconds(self) -> int:
        """Window start, seconds after local midnight."""
        return self._minutes(self.start) * 60

    @property
    def window_seconds(self) -> int:
        """Length of the window (it may span midnight)."""
        return ((self._minutes(self.end) - self._minutes(self.start)) % 1440) * 60

    @property
    def offset_seconds(self) -> int:
        """``utc_offset`` in seconds (local = UTC + offset)."""
        sign = -1 if self.utc_offset[0] == "-" else 1
        return sign * self._minutes(self.utc_offset[1:]) * 60


class PowerWhileOffRule(_Strict):
    """A device drawing power while its switch reports off (theft or a stuck relay):
    ``switch`` false and ``point`` above ``above`` for ``polls`` consecutive polls.
    Clears when the switch is on or the power is back below ``above - hysteresis``."""

    type: Literal["power_while_off"]
    name: _Name
    switch: str
    point: str
    above: Annotated[float, Field(ge=0)] = 5.0
    hysteresis: Annotated[float, Field(ge=0)] = 0.0
    polls: Annotated[int, Field(ge=1, le=1000)] = 3
    severity: _Severity = "alert"
    description: str = ""


EdgeRule = Annotated[RateAboveRule | NightFlowRule | PowerWhileOffRule, Field(discriminator="type")]


class Profile(_Strict):
    """A device type: its points (Modbus) or sentence (serial line), and its alarm rules."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    kind: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    protocol: Literal["modbus", "line"] = "modbus"
    description: str = ""
    points: tuple[Point, ...] = ()
    line: LineFormat | None = None
    alarms: tuple[AlarmRule, ...] = ()
    rules: tuple[EdgeRule, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.protocol == "modbus" and not self.points:
            raise ValueError("a modbus profile needs at least one [[points]] entry")
        if self.protocol == "line" and self.line is None:
            raise ValueError("a line profile needs a [line] table")
        names = self.value_names()
        if len(set(names)) != len(names):
            raise ValueError("point names must be unique")
        for rule in self.alarms:
            if rule.point not in names:
                raise ValueError(f"alarm {rule.name!r} refers to unknown point {rule.point!r}")
        for i, edge in enumerate(self.rules):
            refs = [("point", edge.point)]
            if isinstance(edge, PowerWhileOffRule):
                refs.append(("switch", edge.switch))
            for key, ref in refs:
                if ref not in names:
                    raise ValueError(f"rules[{i}] ({edge.name!r}): {key} {ref!r} is not a point "
                                     f"of this profile")
        alarm_names = [r.name for r in self.alarms] + [r.name for r in self.rules]
        dupes = sorted({n for n in alarm_names if alarm_names.count(n) > 1})
        if dupes:
            raise ValueError(f"alarm/rule names must be unique: {', '.join(dupes)}")
        return self

    def value_names(self) -> list[str]:
        """Names of every value a poll of this device yields, in profile order."""
        if self.protocol == "line" and self.line is not None:
            return [f.name for f in self.line.fields]
        return [p.name for p in self.points]

    def units(self) -> dict[str, str]:
        """Unit of each value (empty string when unitless)."""
        if self.protocol == "line" and self.line is not None:
            return {f.name: f.unit for f in self.line.fields}
        return {p.name: p.unit for p in self.points}


def _loc(error: dict[str, object]) -> str:
    parts = [str(p) for p in error.get("loc", ()) if p not in ("function-after",)]  # type: ignore[attr-defined]
    return ".".join(parts) or "(top level)"


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file; raise :class:`ProfileError` naming the problem."""
    name = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(name, "(file)", f"cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(name, "(syntax)", f"invalid TOML: {exc}") from exc
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ProfileError(name, _loc(dict(first)), str(first["msg"])) from exc


def builtin_profiles_dir() -> Path:
    """The profiles shipped with the package (``config/profiles`` in the source tree)."""
    return Path(str(resources.files("urbanedge_config") / "profiles"))


def load_profiles(dirs: Iterable[Path] = ()) -> dict[str, Profile]:
    """Load the built-in profiles, then those in ``dirs`` (later ones override by name)."""
    found: dict[str, Profile] = {}
    for folder in (builtin_profiles_dir(), *dirs):
        for path in sorted(folder.glob("*.toml")):
            profile = load_profile(path)
            found[profile.name] = profile
    return found


@cache
def builtin_profiles() -> dict[str, Profile]:
    """The shipped profiles, loaded once per process."""
    return load_profiles()
