"""The CBOR payload inside the envelope: round trip, compact numbers, strict decoding."""

from __future__ import annotations

import contextlib
import json
import math
from decimal import Decimal
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer.records import Priority, StoredRecord, alarm, event, telemetry
from agent.seal.payload import PayloadError, compact_number, decode, encode

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# "ts" is carried by the record itself; "seq", "type", "device_id" by the outbox row.
_RESERVED = ("seq", "type", "device_id", "ts")
_bodies = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in _RESERVED), _values, max_size=5)


def _plain(v: Any) -> Any:
    """Numbers as floats, so an integral float sent as int (or a decimal) compares by value."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        return float(v)
    return v


def _stored(seq: int, body: dict[str, Any], prio: Priority = Priority.TELEMETRY, ts: float = 1.0) -> StoredRecord:
    return StoredRecord(seq=seq, prio=prio, device_id="d1", ts=ts,
                        body=json.dumps({**body, "ts": ts}, separators=(",", ":")).encode())


@given(
    source=st.text(min_size=1, max_size=20),
    bodies=st.lists(_bodies, max_size=20),
    first=st.integers(0, 2**62),
    sent=st.floats(0, 4e9),
    t0=st.floats(1e9, 2e9),
)
def test_round_trip_keeps_every_record_value_and_seq(
    source: str, bodies: list[dict[str, Any]], first: int, sent: float, t0: float
) -> None:
    records = [_stored(first + i * 7, b, ts=round(t0 + i * 0.25, 3)) for i, b in enumerate(bodies)]
    batch = decode(encode(source, records, sent_ts=sent))
    assert batch.source == source
    assert batch.sent == pytest.approx(round(sent, 3))
    assert [r["seq"] for r in batch.records] == [r.seq for r in records]
    for got, body, rec in zip(batch.records, bodies, records, strict=True):
        assert got["type"] == "telemetry" and got["device_id"] == "d1"
        assert got["ts"] == pytest.approx(rec.ts, abs=0.001)
        assert _plain({k: v for k, v in got.items() if k not in _RESERVED}) == _plain(body)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_compact_number_keeps_the_value(v: float) -> None:
    c = compact_number(v)
    back = cbor2.loads(cbor2.dumps(c, canonical=True))
    assert float(back) == v
    got = decode(encode("gw", [_stored(1, {"x": v})], sent_ts=1.0)).records[0]["x"]
    assert got == v and type(got) is (int if v.is_integer() and abs(v) < 2**53 else float)


@pytest.mark.parametrize(("value", "size"), [(230.4, 6), (0.5, 3), (120.0, 2), (1234.567, 8), (math.pi, 9)])
def test_numbers_take_their_smallest_exact_form(value: float, size: int) -> None:
    assert len(cbor2.dumps(compact_number(value), canonical=True)) == size


def test_real_records_of_every_type_round_trip() -> None:
    recs = [
        telemetry("sl-1", "streetlight", 100.0, {"lamp_on": True, "voltage": 230.4},
                  quality="stale", point_quality={"voltage": "stale"}),
        alarm("fl-1", "flood-sensor", 101.5, "flood_danger", "raised", "critical", "water_level", 182.0, 150),
        event("gw", 102.0, "device_offline", device="sl-2", reason="timeout"),
    ]
    stored = [StoredRecord(i + 1, r.prio, r.device_id, r.ts, r.body) for i, r in enumerate(recs)]
    got = decode(encode("gw", stored, sent_ts=103.0)).records
    assert [r["type"] for r in got] == ["telemetry", "alarm", "event"]
    assert got[0]["values"] == {"lamp_on": True, "voltage": 230.4}
    assert got[0]["q"] == {"voltage": "stale"} and got[0]["quality"] == "stale"
    assert got[1]["alarm"] == "flood_danger" and got[1]["value"] == 182 and got[1]["ts"] == 101.5
    assert got[2]["event"] == "device_offline" and got[2]["device_id"] == "gw" and got[2]["reason"] == "timeout"


def test_keys_are_sent_once_per_batch() -> None:
    vals = {"a_rather_long_point_name": 1}
    stored = [StoredRecord(i, Priority.TELEMETRY, f"d{i}", 1.0, json.dumps({"values": vals}).encode())
              for i in range(50)]
    assert encode("gw", stored, sent_ts=1.0).count(b"a_rather_long_point_name") == 1


def test_corrupt_stored_body_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="record 7"):
        encode("gw", [StoredRecord(7, Priority.TELEMETRY, "d", 1.0, b"{not json")], sent_ts=1.0)
    with pytest.raises(PayloadError, match="source"):
        encode("", [], sent_ts=1.0)


def _doc(**over: Any) -> bytes:
    doc: dict[str, Any] = {"v": 2, "src": "gw", "sent": 1.0, "t0": 1.0, "keys": ["k"],
                           "recs": [[1, 2, "d", 0, {0: 1}]]}
    doc.update(over)
    return cbor2.dumps(doc)


@pytest.mark.parametrize(("payload", "problem"), [
    (b"\x82\x01", "not CBOR"),
    (cbor2.dumps([1, 2]), "not a map"),
    (_doc(v=1), "version"),
    (_doc(src=""), "src"),
    (_doc(sent=float("nan")), "finite"),
    (_doc(t0=1e300), "finite"),
    (_doc(keys=[1]), "keys"),
    (_doc(recs=[[1, 2, "d", 0]]), "recs\\[0\\]"),
    (_doc(recs=[[-1, 2, "d", 0, {}]]), "seq"),
    (_doc(recs=[[2**64, 2, "d", 0, {}]]), "seq"),
    (_doc(recs=[[1, 9, "d", 0, {}]]), "type"),
    (_doc(recs=[[1, 2, "", 0, {}]]), "device"),
    (_doc(recs=[[1, 2, "d", 10**30, {}]]), "dt_ms"),
    (_doc(recs=[[1, 2, "d", 0, {5: 1}]]), "index"),
    (_doc(recs=[[1, 2, "d", 0, []]]), "map"),
])
def test_malformed_payloads_are_rejected_precisely(payload: bytes, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem):
        decode(payload)


@given(st.binary(max_size=300))
def test_decoder_raises_only_payload_errors_on_random_bytes(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(data)


@given(st.binary(max_size=40), st.integers(0, 200))
def test_decoder_raises_only_payload_errors_on_mutated_payloads(junk: bytes, at: int) -> None:
    good = encode("gw", [_stored(1, {"values": {"x": 1.5, "y": [1, "a"]}})], sent_ts=2.0)
    at = at % (len(good) + 1)
    with contextlib.suppress(PayloadError):
        decode(good[:at] + junk + good[at + len(junk):])
