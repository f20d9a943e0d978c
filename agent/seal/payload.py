"""[pure] The plaintext inside the envelope: one batch of outbox records as compact CBOR.

Format (version 2; version 1 was the unsealed JSON of the first release)::

    {"v": 2, "src": <source id>, "sent": <unix s, float>, "t0": <unix s, float>,
     "keys": [<text>, ...],                      ; every map key used in the records, once
     "recs": [[seq, type, device_id, dt_ms, body], ...]}

``type`` is 0 alarm, 1 event, 2 telemetry; ``dt_ms`` is the record time minus ``t0`` in
milliseconds; ``body`` is the record's JSON object with each map key (at any depth)
replaced by its index in ``keys``. A 60-reading batch of streetlights spends most of
its bytes on values, not names: that is what keeps a sealed reading under 18 bytes.

Numbers keep their value: an integral float goes as an integer, a float that fits
float32 exactly as float32, a short decimal (a scaled register, ``230.4``) as a CBOR
decimal fraction (tag 4, RFC 8949 §3.4.4), anything else as float64.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cbor2

from agent.buffer.records import Priority, StoredRecord

VERSION = 2
TYPE_NAMES = {int(Priority.ALARM): "alarm", int(Priority.EVENT): "event", int(Priority.TELEMETRY): "telemetry"}
_MAX_DECIMAL_DIGITS = 9  # a decimal fraction of up to 9 significant digits is ≤ 8 bytes
_F32 = struct.Struct(">f")
_F32_MAX = 3.4e38
_MAX_TIME = 2.0**40  # seconds: far beyond any real clock, small enough for float arithmetic


class PayloadError(ValueError):
    """A payload (or a record to put in one) is not what the format says."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded payload: who sent it, when, and its records as plain dicts (with ``seq``,
    ``type``, ``device_id`` and ``ts`` next to the body's own fields)."""

    source: str
    sent: float
    records: list[dict[str, Any]]


def compact_number(v: float) -> int | float | Decimal:
    """The smallest CBOR form that decodes to the same number (see the module docstring)."""
    if not math.isfinite(v):
        return v
    if v.is_integer() and abs(v) < 2**53:
        return int(v)
    if abs(v) < _F32_MAX and _F32.unpack(_F32.pack(v))[0] == v:
        return v  # cbor2 (canonical) writes it as float32
    text = repr(v)
    if "e" not in text and len(text) - 1 - (text[0] == "-") <= _MAX_DECIMAL_DIGITS:
        return Decimal(text)
    return v


class _KeyTable:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.keys: list[str] = []

    def compact(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                i = self.index.get(k)
                if i is None:
                    i = self.index[k] = len(self.keys)
                    self.keys.append(k)
                out[i] = self.compact(v)
            return out
        if isinstance(obj, float):
            return compact_number(obj)
        if isinstance(obj, list):
            return [self.compact(x) for x in obj]
        return obj


def encode(source: str, records: Sequence[StoredRecord], *, sent_ts: float) -> bytes:
    """The CBOR plaintext of one uplink message carrying ``records`` (in the order given)."""
    if not source:
        raise PayloadError("source must not be empty")
    # Whole milliseconds, as every record time is sent: the node (integer ms) writes the same bytes.
    t0 = round(min((r.ts for r in records), default=sent_ts), 3)
    table = _KeyTable()
    recs = []
    for r in records:
        try:
            body = json.loads(r.body)
        except ValueError as exc:
            raise PayloadError(f"record {r.seq}: body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise PayloadError(f"record {r.seq}: body is not a JSON object")
        body.pop("ts", None)
        recs.append([r.seq, int(r.prio), r.device_id, round((r.ts - t0) * 1000), table.compact(body)])
    doc = {"v": VERSION, "src": source, "sent": round(sent_ts, 3), "t0": t0, "keys": table.keys, "recs": recs}
    try:
        return cbor2.dumps(doc, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise PayloadError(f"cannot encode batch: {exc}") from exc


def _require(cond: bool, problem: str) -> None:
    if not cond:
        raise PayloadError(problem)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _expand(obj: Any, keys: list[str], depth: int = 0) -> Any:
    _require(depth < 8, "record body nested too deeply")
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            _require(_is_int(k) and 0 <= k < len(keys), f"map key {k!r} is not an index into 'keys'")
            out[keys[k]] = _expand(v, keys, depth + 1)
        return out
    if isinstance(obj, list):
        return [_expand(x, keys, depth + 1) for x in obj]
    if isinstance(obj, Decimal):
        # Back to the float it was made from (compact_number used its shortest repr).
        try:
            return float(obj)
        except (ValueError, OverflowError):
            raise PayloadError("decimal fraction out of range") from None
    _require(obj is None or isinstance(obj, str | bool | int | float), f"unexpected value {type(obj).__name__}")
    return obj


def decode(data: bytes) -> Batch:
    """Parse and check a payload; raise :class:`PayloadError` if it is malformed."""
    try:
        doc = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on junk; all mean "not our payload"
        raise PayloadError(f"payload is not CBOR ({type(exc).__name__})") from None
    _require(isinstance(doc, dict), "payload is not a map")
    _require(doc.get("v") == VERSION, f"unsupported payload version {doc.get('v')!r}")
    source, sent, t0, keys, recs = (doc.get(k) for k in ("src", "sent", "t0", "keys", "recs"))
    _require(isinstance(source, str) and source != "", "'src' must be a non-empty text string")
    _require(_is_num(sent) and _is_num(t0) and all(abs(float(x)) < _MAX_TIME for x in (sent, t0)),
             "'sent' and 't0' must be finite times")
    _require(isinstance(keys, list) and all(isinstance(k, str) for k in keys), "'keys' must be a list of text")
    _require(isinstance(recs, list), "'recs' must be a list")
    records: list[dict[str, Any]] = []
    for i, rec in enumerate(recs):
        _require(isinstance(rec, list) and len(rec) == 5, f"recs[{i}] is not [seq, type, device, dt_ms, body]")
        seq, typ, device, dt_ms, body = rec
        _require(_is_int(seq) and 0 <= seq < 2**63, f"recs[{i}]: seq must be a non-negative 64-bit integer")
        _require(typ in TYPE_NAMES, f"recs[{i}]: unknown type {typ!r}")
        _require(isinstance(device, str) and device != "", f"recs[{i}]: device id must be text")
        _require(_is_int(dt_ms) and abs(dt_ms) < _MAX_TIME * 1000, f"recs[{i}]: dt_ms must be a small integer")
        _require(isinstance(body, dict), f"recs[{i}]: body must be a map")
        fields = _expand(body, keys)
        _require(isinstance(fields, dict), f"recs[{i}]: body must be a map")
        out: dict[str, Any] = {"seq": seq, "type": TYPE_NAMES[typ], "device_id": device,
                               "ts": round(float(t0) + dt_ms / 1000, 3)}
        for k, v in fields.items():
            out.setdefault(k, v)
        records.append(out)
    return Batch(source=source, sent=float(sent), records=records)
