"""The uplink payload: seq spliced into stored bodies, round trip, strict decoding."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer.records import Priority, StoredRecord, alarm, telemetry
from agent.seal.encode import Batch, PayloadError, decode_batch, encode_batch

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# "seq", "type" and "device_id" are never in a body: the outbox row carries them.
_RESERVED = ("seq", "type", "device_id")
_bodies = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in _RESERVED), _values, max_size=5)


def _stored(seq: int, body: dict[str, Any], prio: Priority = Priority.TELEMETRY) -> StoredRecord:
    raw = json.dumps(body, separators=(",", ":")).encode()
    return StoredRecord(seq=seq, prio=prio, device_id="d1", ts=1.0, body=raw)


@given(
    source=st.text(min_size=1, max_size=20),
    bodies=st.lists(_bodies, max_size=20),
    first=st.integers(0, 2**62),
    sent=st.floats(0, 4e9),
)
def test_round_trip_keeps_every_record_and_seq(
    source: str, bodies: list[dict[str, Any]], first: int, sent: float
) -> None:
    records = [_stored(first + i * 7, b) for i, b in enumerate(bodies)]
    batch = decode_batch(encode_batch(source, records, sent_ts=sent))
    assert batch.source == source
    assert batch.sent == pytest.approx(round(sent, 3))
    assert [r["seq"] for r in batch.records] == [r.seq for r in records]
    for got, body in zip(batch.records, bodies, strict=True):
        assert got["type"] == "telemetry" and got["device_id"] == "d1"
        assert {k: v for k, v in got.items() if k not in ("seq", "type", "device_id")} == body


def test_real_record_bodies_are_spliced_byte_exact() -> None:
    tel = telemetry("pump-1", "pump", 100.0, {"level": 1.5})
    alm = alarm("pump-1", "pump", 101.0, "high", "raised", "alert", "level", 9.0, 8.0)
    records = [
        StoredRecord(5, tel.prio, tel.device_id, tel.ts, tel.body),
        StoredRecord(9, alm.prio, alm.device_id, alm.ts, alm.body),
    ]
    payload = encode_batch("gw-1", records, sent_ts=200.0)
    assert payload == (
        b'{"v":1,"source":"gw-1","sent":200.0,"records":['
        b'{"seq":5,"type":"telemetry","device_id":"pump-1",' + tel.body[1:]
        + b',{"seq":9,"type":"alarm","device_id":"pump-1",' + alm.body[1:] + b"]}"
    )
    decoded = decode_batch(payload).records
    assert decoded[0]["values"] == {"level": 1.5} and decoded[1]["alarm"] == "high"


def test_empty_body_and_empty_batch() -> None:
    one = encode_batch("gw", [_stored(3, {})], sent_ts=1.0)
    assert decode_batch(one).records == [{"seq": 3, "type": "telemetry", "device_id": "d1"}]
    assert decode_batch(encode_batch("gw", [], sent_ts=1.0)) == Batch("gw", 1.0, [])


@pytest.mark.parametrize("body", [b"", b"[1]", b'"x"', b"{", b'{"a":1'])
def test_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    rec = StoredRecord(1, Priority.EVENT, "d", 1.0, body)
    with pytest.raises(PayloadError, match="record 1"):
        encode_batch("gw", [rec], sent_ts=1.0)


def test_header_errors() -> None:
    with pytest.raises(PayloadError, match="source"):
        encode_batch("", [], sent_ts=1.0)
    with pytest.raises(PayloadError, match="header"):
        encode_batch("gw", [], sent_ts=float("nan"))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v":2,"source":"g","sent":1,"records":[]}', "version"),
        (b'{"v":1,"source":"","sent":1,"records":[]}', "source"),
        (b'{"v":1,"source":"g","sent":true,"records":[]}', "sent"),
        (b'{"v":1,"source":"g","sent":1,"records":{}}', "records"),
        (b'{"v":1,"source":"g","sent":1,"records":[1]}', r"records\[0\]"),
        (b'{"v":1,"source":"g","sent":1,"records":[{"seq":"1"}]}', "seq"),
        (b'{"v":1,"source":"g","sent":1,"records":[{"a":1}]}', "seq"),
        (b'{"v":1,"source":"g","sent":1,"records":[{"seq":-1}]}', "seq"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_decode_rejects_malformed(payload: bytes, problem: str) -> None:
    with pytest.raises(PayloadError, match=problem):
        decode_batch(payload)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_of_arbitrary_bytes_returns_or_raises_payload_error(payload: bytes) -> None:
    try:
        batch = decode_batch(payload)
    except PayloadError:
        return
    assert isinstance(batch, Batch)
