"""[pure] Telemetry records as NGSI-LD entities from the FIWARE Smart Data Models.

An IOC platform (Orion-LD, Scorpio, Stellio...) takes these as they are: normalized form,
every measurement a ``Property`` with ``observedAt`` (the gateway's poll time, ISO 8601
UTC) and a UN/CEFACT ``unitCode`` where the unit has one. One entity per device: its id is
``urn:ngsi-ld:<Type>:<gateway>:<device>``, so an upsert of each record keeps the entity at
the device's latest reading and the platform's temporal store keeps the history.

Mapping (value names from ``config/profiles/*.toml``):

* ``streetlight`` → ``Streetlight`` (dataModel.Streetlighting): powerState (lamp_on),
  illuminanceLevel (dim_level / 100), powerConsumption (active_power), voltage, current,
  powerFactor, status (``ok``, or ``defectiveLamp`` when lamp_fault or driver_fault),
  observationDateTime; energyConsumed (energy, kWh) borrows the term of the same subject's
  StreetlightControlCabinet, the Streetlight model having none for a lamp's meter.
* ``water-meter`` → ``WaterConsumptionObserved`` (dataModel.WaterConsumption):
  waterConsumption (totaliser), alarmStopsLeaks (leak), alarmTamper (tamper),
  alarmWaterQuality (reverse_flow: the model's backflow alarm), alarmInProgress (any flag,
  low_battery included); ``flow`` is an extension (the model has only weekly min/max flow),
  and so is ``valvePosition`` (valve_position, %, on meters with a shut-off valve).
* ``flood-sensor`` → ``FloodMonitoring`` (dataModel.Environment): currentLevel (water_level),
  measuredDistance (distance), stationID (the device id), observationDateTime.
* ``rain-gauge`` → ``WeatherObserved`` (dataModel.Weather): precipitation (rain_total, the
  gauge's accumulated rain), dateObserved.

Every entity also has ``refDevice`` (a Relationship to ``urn:ngsi-ld:Device:<gateway>:<device>``)
and ``dataProvider`` (the gateway id). Values the gateway could not read are absent (a
point with quality ``error`` is left out, never sent as null). Alarms, events, unknown kinds
and polls that read nothing map to ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
_SDM = "https://raw.githubusercontent.com/smart-data-models/{}/master/context.jsonld"
CONTEXTS: dict[str, list[str]] = {
    "Streetlight": [_SDM.format("dataModel.Streetlighting"), CORE_CONTEXT],
    "WaterConsumptionObserved": [_SDM.format("dataModel.WaterConsumption"), CORE_CONTEXT],
    "FloodMonitoring": [_SDM.format("dataModel.Environment"), CORE_CONTEXT],
    "WeatherObserved": [_SDM.format("dataModel.Weather"), CORE_CONTEXT],
}

# UN/CEFACT Recommendation 20 common codes.
WATT, KILOWATT_HOUR, VOLT, AMPERE = "WTT", "KWH", "VLT", "AMP"
CUBIC_METRE, CUBIC_METRE_PER_HOUR = "MTQ", "MQH"
CENTIMETRE, MILLIMETRE = "CMT", "MMT"
PERCENT = "P1"

Entity = dict[str, Any]
Values = Mapping[str, Any]

# Characters an NGSI-LD id part may keep as they are; ':' separates the parts, so it is escaped.
_URN_SAFE = "-._~!$&'()*+,;=@"


def _urn_part(text: str) -> str:
    return quote(text, safe=_URN_SAFE)


def entity_id(entity_type: str, source: str, device_id: str) -> str:
    return f"urn:ngsi-ld:{entity_type}:{_urn_part(source)}:{_urn_part(device_id)}"


def iso_utc(ts: float | int | Decimal) -> str:
    """Unix seconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; ValueError/OverflowError if out of range."""
    when = datetime.fromtimestamp(float(ts), tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return False
    return value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)


def _flag(value: object) -> bool | None:
    """A bool point (bools, or 0/1 from a uint16 bit point); None if it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


class _Builder:
    """Adds Properties to one entity, all observed at the record's time."""

    def __init__(self, entity: Entity, observed_at: str, values: Values, bad: frozenset[str]) -> None:
        self.entity = entity
        self.observed_at = observed_at
        self.values = values
        self.bad = bad
        self.measured = 0

    def value(self, point: str) -> Any:
        """The point's value, or None if it was not read (or not read well)."""
        return None if point in self.bad else self.values.get(point)

    def put(self, attr: str, value: Any, unit: str | None = None) -> None:
        prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": self.observed_at}
        if unit is not None:
            prop["unitCode"] = unit
        self.entity[attr] = prop
        self.measured += 1

    def number(self, attr: str, point: str, unit: str | None = None) -> None:
        value = self.value(point)
        if _is_number(value):
            self.put(attr, value, unit)

    def alarm(self, attr: str, point: str) -> bool | None:
        flag = _flag(self.value(point))
        if flag is not None:
            self.put(attr, int(flag))
        return flag

    def date_time(self, attr: str) -> None:
        self.entity[attr] = {"type": "Property", "value": {"@type": "DateTime", "@value": self.observed_at}}


def _streetlight(b: _Builder) -> None:
    on = _flag(b.value("lamp_on"))
    if on is not None:
        b.put("powerState", "on" if on else "off")
    dim = b.value("dim_level")
    if _is_number(dim):
        b.put("illuminanceLevel", min(max(dim / 100, 0), 1))
    b.number("powerConsumption", "active_power", WATT)
    b.number("energyConsumed", "energy", KILOWATT_HOUR)
    b.number("voltage", "voltage", VOLT)
    b.number("current", "current", AMPERE)
    b.number("powerFactor", "power_factor")
    faults = [_flag(b.value(p)) for p in ("lamp_fault", "driver_fault")]
    if any(faults):
        b.put("status", "defectiveLamp")
    elif all(f is False for f in faults):
        b.put("status", "ok")
    if b.measured:
        b.date_time("observationDateTime")


def _water_meter(b: _Builder) -> None:
    b.number("waterConsumption", "totaliser", CUBIC_METRE)
    b.number("flow", "flow", CUBIC_METRE_PER_HOUR)
    b.number("valvePosition", "valve_position", PERCENT)
    flags = [
        b.alarm("alarmStopsLeaks", "leak"),
        b.alarm("alarmTamper", "tamper"),
        b.alarm("alarmWaterQuality", "reverse_flow"),
    ]
    low_battery = _flag(b.value("low_battery"))
    if any(flags) or low_battery:
        b.put("alarmInProgress", 1)
    elif all(f is False for f in flags) and low_battery is False:
        b.put("alarmInProgress", 0)


def _flood_sensor(b: _Builder) -> None:
    b.number("currentLevel", "water_level", CENTIMETRE)
    b.number("measuredDistance", "distance", MILLIMETRE)
    if b.measured:
        b.date_time("observationDateTime")


def _rain_gauge(b: _Builder) -> None:
    b.number("precipitation", "rain_total", MILLIMETRE)
    if b.measured:
        b.date_time("dateObserved")


_MODELS: dict[str, tuple[str, Callable[[_Builder], None]]] = {
    "streetlight": ("Streetlight", _streetlight),
    "water-meter": ("WaterConsumptionObserved", _water_meter),
    "flood-sensor": ("FloodMonitoring", _flood_sensor),
    "rain-gauge": ("WeatherObserved", _rain_gauge),
}
KINDS: frozenset[str] = frozenset(_MODELS)


def to_ngsi_ld(source: str, record: Mapping[str, Any]) -> Entity | None:
    """The NGSI-LD entity for one verified telemetry record, or None if it maps to none."""
    if record.get("type") != "telemetry":
        return None
    model = _MODELS.get(str(record.get("kind")))
    device_id, values = record.get("device_id"), record.get("values")
    ts: Any = record.get("ts")
    if model is None or not isinstance(device_id, str) or not isinstance(values, Mapping):
        return None
    if not _is_number(ts):
        return None
    try:
        observed_at = iso_utc(ts)
    except (ValueError, OverflowError, OSError):
        return None
    point_quality = record.get("q")
    bad = frozenset(
        name for name, q in point_quality.items() if q == "error"
    ) if isinstance(point_quality, Mapping) else frozenset()

    entity_type, fill = model
    entity: Entity = {"id": entity_id(entity_type, source, device_id), "type": entity_type}
    builder = _Builder(entity, observed_at, values, bad)
    fill(builder)
    if not builder.measured:
        return None
    if entity_type == "FloodMonitoring":
        entity["stationID"] = {"type": "Property", "value": device_id}
    entity["refDevice"] = {"type": "Relationship", "object": entity_id("Device", source, device_id)}
    entity["dataProvider"] = {"type": "Property", "value": source}
    entity["@context"] = list(CONTEXTS[entity_type])
    return entity
