"""NGSI-LD entities per device kind, and the JSON-lines / NGSI-LD writers.

Records are built the way the gateway builds them (agent/buffer/records.py, then the
sealed payload's CBOR encoding and decoding, which turns short decimals into Decimal), with
every value name of the shipped profiles, so a point renamed in config/profiles breaks
these tests instead of silently dropping an attribute. Entities are compared as the JSON
they are written as.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest

from agent.buffer import records as outbox_records
from agent.buffer.records import StoredRecord
from agent.seal import payload
from drivers.profiles import builtin_profiles
from ioc.ngsi_ld import CONTEXTS, CORE_CONTEXT, KINDS, entity_id, to_ngsi_ld
from ioc.output import JsonLinesWriter, NgsiLdWriter, OutputError, dumps_json, make_writer

TS = 1764000000.123
OBSERVED = "2025-11-24T16:00:00.123Z"
SOURCE = "gw-demo"

SAMPLE_VALUES: dict[str, dict[str, Any]] = {
    "streetlight": {
        "lamp_on": True, "dim_level": 80, "active_power": 121.5, "energy": 1234.56, "voltage": 230.1,
        "current": 0.528, "power_factor": 0.97, "lamp_fault": False, "driver_fault": False,
        "burning_hours": 10234, "ambient_lux": 3, "traffic_count": 7,
    },
    "water-meter": {
        "totaliser": 1523.417, "flow": 0.84, "pressure": 3.12, "battery": 87,
        "valve_position": 100, "valve_setpoint": 100,
        "leak": False, "tamper": False, "reverse_flow": False, "low_battery": False,
    },
    "flood-sensor": {"water_level": 123.4, "distance": 2766, "rainfall": 412.3, "battery": 3.71},
    "rain-gauge": {"rain_total": 12.4, "rain_rate": 3.2, "water_level": 41.5, "battery": 3.71, "status": 0},
}


def telemetry(kind: str, device_id: str, values: dict[str, Any], *, seq: int = 17, **kw: Any) -> dict[str, Any]:
    """One telemetry record exactly as the IOC receives it from a gateway."""
    new = outbox_records.telemetry(device_id, kind, TS, values, **kw)
    stored = StoredRecord(seq, new.prio, new.device_id, new.ts, new.body)
    return payload.decode(payload.encode(SOURCE, [stored], sent_ts=TS + 1)).records[0]


def entity_of(record: dict[str, Any], source: str = SOURCE) -> Any:
    """The entity as a consumer reads it: through the JSON the writer writes."""
    entity = to_ngsi_ld(source, record)
    return None if entity is None else json.loads(dumps_json(entity))


def prop(value: Any, unit: str | None = None) -> dict[str, Any]:
    out = {"type": "Property", "value": value, "observedAt": OBSERVED}
    if unit:
        out["unitCode"] = unit
    return out


def test_samples_use_every_value_of_the_shipped_profiles() -> None:
    by_kind = {p.kind: p for p in builtin_profiles().values()}
    assert set(SAMPLE_VALUES) == KINDS
    for kind, values in SAMPLE_VALUES.items():
        assert list(values) == by_kind[kind].value_names(), kind


def test_streetlight() -> None:
    entity = entity_of(telemetry("streetlight", "sl-001", SAMPLE_VALUES["streetlight"]))
    assert entity == {
        "id": "urn:ngsi-ld:Streetlight:gw-demo:sl-001",
        "type": "Streetlight",
        "powerState": prop("on"),
        "illuminanceLevel": prop(0.8),
        "powerConsumption": prop(121.5, "WTT"),
        "energyConsumed": prop(1234.56, "KWH"),
        "voltage": prop(230.1, "VLT"),
        "current": prop(0.528, "AMP"),
        "powerFactor": prop(0.97),
        "status": prop("ok"),
        "observationDateTime": {"type": "Property", "value": {"@type": "DateTime", "@value": OBSERVED}},
        "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:gw-demo:sl-001"},
        "dataProvider": {"type": "Property", "value": "gw-demo"},
        "@context": [
            "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld",
            CORE_CONTEXT,
        ],
    }


@pytest.mark.parametrize(("changes", "power_state", "status"), [
    ({"lamp_on": False}, "off", "ok"),
    ({"lamp_fault": True}, "on", "defectiveLamp"),
    ({"driver_fault": True}, "on", "defectiveLamp"),
])
def test_streetlight_state(changes: dict[str, Any], power_state: str, status: str) -> None:
    entity = entity_of(telemetry("streetlight", "sl-001", {**SAMPLE_VALUES["streetlight"], **changes}))
    assert entity is not None
    assert entity["powerState"]["value"] == power_state
    assert entity["status"]["value"] == status


def test_water_meter() -> None:
    entity = entity_of(telemetry("water-meter", "wm-pit-0231", SAMPLE_VALUES["water-meter"]))
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:WaterConsumptionObserved:gw-demo:wm-pit-0231"
    assert entity["type"] == "WaterConsumptionObserved"
    assert entity["waterConsumption"] == prop(1523.417, "MTQ")
    assert entity["flow"] == prop(0.84, "MQH")
    assert entity["valvePosition"] == prop(100, "P1")
    for attr in ("alarmStopsLeaks", "alarmTamper", "alarmWaterQuality", "alarmInProgress"):
        assert entity[attr] == prop(0), attr
    assert entity["@context"][0].endswith("/dataModel.WaterConsumption/master/context.jsonld")

    leaking = entity_of(telemetry(
        "water-meter", "wm-pit-0231", {**SAMPLE_VALUES["water-meter"], "leak": True, "reverse_flow": True}))
    assert leaking is not None
    assert leaking["alarmStopsLeaks"]["value"] == 1 and leaking["alarmWaterQuality"]["value"] == 1
    assert leaking["alarmTamper"]["value"] == 0 and leaking["alarmInProgress"]["value"] == 1


def test_flood_sensor() -> None:
    entity = entity_of(telemetry("flood-sensor", "flood-canal-07", SAMPLE_VALUES["flood-sensor"]))
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:FloodMonitoring:gw-demo:flood-canal-07"
    assert entity["currentLevel"] == prop(123.4, "CMT")
    assert entity["measuredDistance"] == prop(2766, "MMT")
    assert entity["stationID"] == {"type": "Property", "value": "flood-canal-07"}
    assert entity["observationDateTime"]["value"] == {"@type": "DateTime", "@value": OBSERVED}
    assert entity["@context"] == CONTEXTS["FloodMonitoring"]


def test_rain_gauge() -> None:
    entity = entity_of(telemetry("rain-gauge", "rg-01", SAMPLE_VALUES["rain-gauge"]))
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:WeatherObserved:gw-demo:rg-01"
    assert entity["precipitation"] == prop(12.4, "MMT")
    assert entity["dateObserved"]["value"]["@value"] == OBSERVED
    assert entity["@context"][0].endswith("/dataModel.Weather/master/context.jsonld")


def test_points_not_read_are_left_out() -> None:
    values = {k: v for k, v in SAMPLE_VALUES["streetlight"].items() if k not in ("voltage", "current")}
    record = telemetry("streetlight", "sl-001", values, quality="error",
                       point_quality={"voltage": "error", "current": "error"})
    entity = to_ngsi_ld(SOURCE, record)
    assert entity is not None
    assert "voltage" not in entity and "current" not in entity
    assert entity["powerConsumption"]["value"] == 121.5
    # A point flagged bad is left out even if a value came with it.
    record["values"]["voltage"] = 0
    entity = to_ngsi_ld(SOURCE, record)
    assert entity is not None and "voltage" not in entity


def test_records_without_a_model_map_to_none() -> None:
    failed_poll = telemetry("flood-sensor", "fl-1", {}, quality="error", error="timeout")
    alarm = {"seq": 18, "type": "alarm", "device_id": "fl-1", "kind": "flood-sensor", "ts": TS,
             "alarm": "flood_danger", "state": "raised", "severity": "critical", "point": "water_level",
             "value": 182.0, "threshold": 150}
    event = {"seq": 19, "type": "event", "device_id": "gw-demo", "ts": TS, "event": "device_offline"}
    unknown = telemetry("air-quality", "aq-1", {"pm25": 12})
    bad_ts = {**telemetry("flood-sensor", "fl-1", {"water_level": 1.0}), "ts": "yesterday"}
    for record in (failed_poll, alarm, event, unknown, bad_ts):
        assert to_ngsi_ld(SOURCE, record) is None, record


def test_decimal_values_and_odd_ids() -> None:
    record = {"seq": 1, "type": "telemetry", "device_id": "pit 7/a", "kind": "flood-sensor",
              "ts": Decimal("1764000000.123"), "values": {"water_level": Decimal("123.40"), "distance": 2766}}
    entity = to_ngsi_ld("gw:north", record)
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:FloodMonitoring:gw%3Anorth:pit%207%2Fa"
    assert entity_id("Device", "gw:north", "pit 7/a") == entity["refDevice"]["object"]
    assert entity["currentLevel"]["observedAt"] == OBSERVED
    line = dumps_json(entity)
    assert '"currentLevel":{"type":"Property","value":123.4,' in line


# --- writers -------------------------------------------------------------------------------

VERIFIED = {"signer": "CN=gw-demo,O=Province", "cert_serial": "4f2a"}


def test_json_lines_writer() -> None:
    out = io.StringIO()
    record = telemetry("flood-sensor", "fl-1", {"water_level": 123.4}, seq=5)
    record["values"]["rainfall"] = Decimal("412.3")
    record["values"]["count"] = Decimal("7")
    alarm = {"seq": 6, "type": "alarm", "device_id": "fl-1", "kind": "flood-sensor", "ts": TS,
             "alarm": "flood_alert", "state": "raised", "severity": "alert", "point": "water_level",
             "value": Decimal("151.0"), "threshold": 150}
    assert JsonLinesWriter(out).write(SOURCE, [record, alarm], verified=VERIFIED) == 2
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first)[:6] == ["source", "seq", "type", "device_id", "kind", "ts"]
    assert list(first)[-1] == "verified"
    assert first["source"] == SOURCE and first["seq"] == 5 and first["verified"] == VERIFIED
    assert first["values"] == {"water_level": 123.4, "rainfall": 412.3, "count": 7}
    assert '"count":7}' in lines[0]  # an integral Decimal is an integer
    assert dumps_json([Decimal("1E+3"), Decimal("5.0"), Decimal("-0.25")]) == "[1000,5.0,-0.25]"
    assert json.loads(lines[1])["value"] == 151.0


def test_json_lines_writer_refuses_what_json_cannot_say() -> None:
    out = io.StringIO()
    good = telemetry("flood-sensor", "fl-1", {"water_level": 1.0}, seq=1)
    for bad_value in (float("nan"), float("-inf"), Decimal("Infinity"), Decimal("NaN"), b"\x00"):
        bad = {**good, "seq": 2, "values": {"water_level": bad_value}}
        with pytest.raises(OutputError):
            JsonLinesWriter(out).write(SOURCE, [good, bad], verified=VERIFIED)
    assert out.getvalue() == ""  # nothing half-written


def test_ngsi_ld_writer_skips_what_has_no_model() -> None:
    out = io.StringIO()
    batch = [
        telemetry("streetlight", "sl-001", SAMPLE_VALUES["streetlight"], seq=1),
        {"seq": 2, "type": "event", "device_id": "gw-demo", "ts": TS, "event": "agent_started"},
        telemetry("water-meter", "wm-1", SAMPLE_VALUES["water-meter"], seq=3),
    ]
    assert NgsiLdWriter(out).write(SOURCE, batch, verified=VERIFIED) == 2
    assert [json.loads(line)["type"] for line in out.getvalue().splitlines()] == [
        "Streetlight", "WaterConsumptionObserved"]
    assert NgsiLdWriter(out).write(SOURCE, batch[1:2]) == 0


def test_make_writer() -> None:
    out = io.StringIO()
    assert isinstance(make_writer("json", out), JsonLinesWriter)
    assert isinstance(make_writer("ngsi-ld", out), NgsiLdWriter)
    with pytest.raises(ValueError, match="unknown output format 'xml'"):
        make_writer("xml", out)
