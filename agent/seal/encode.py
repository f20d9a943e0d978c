"""[pure] The uplink payload: a batch of outbox records from one gateway, as bytes.

Everything that decides what an uplink message looks like on the wire goes through
:func:`encode_batch` (and back through :func:`decode_batch`), so replacing the plain JSON
with a signed and encrypted envelope later changes this module only.

Wire format (version 1, compact JSON)::

    {"v":1,"source":"<gateway id>","sent":<unix ts>,
     "records":[{"seq":N,"type":"telemetry","device_id":"...",...body...},...]}

The stored record bodies are already compact JSON objects; ``seq``, ``type`` (from the
row's priority) and ``device_id`` (from the row) are spliced in front of each body's
first key instead of parsing and re-serialising it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.buffer.records import Priority, StoredRecord

VERSION = 1
_EMPTY_TAIL = b"}"


class PayloadError(ValueError):
    """An uplink payload (or a record body to put in one) is not what the format says."""


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded uplink message: who sent it, when, and its records (each with ``seq``)."""

    source: str
    sent: float
    records: list[dict[str, Any]]


_TYPE_OF: dict[Priority, bytes] = {
    Priority.ALARM: b'"alarm"', Priority.EVENT: b'"event"', Priority.TELEMETRY: b'"telemetry"',
}


def _splice(rec: StoredRecord) -> bytes:
    # The outbox row already holds the priority and the device id, so the stored body
    # leaves out "type" and "device_id" (about 50 bytes a row, a sixth of a 48 h backlog);
    # they are put back here together with "seq". The body is trusted to be one JSON
    # object (the outbox only stores what records.py dumps); checking the braces keeps a
    # corrupt row from producing a payload that no receiver can parse.
    body = rec.body
    if len(body) < 2 or body[:1] != b"{" or body[-1:] != b"}":
        raise PayloadError(f"record {rec.seq}: body is not a JSON object")
    rest = body[1:].lstrip()
    head = b'{"seq":%d,"type":%s,"device_id":%s' % (
        rec.seq, _TYPE_OF[rec.prio], json.dumps(rec.device_id).encode())
    if rest == _EMPTY_TAIL:
        return head + _EMPTY_TAIL
    return head + b"," + rest


def encode_batch(source: str, records: Sequence[StoredRecord], *, sent_ts: float) -> bytes:
    """The payload of one uplink message carrying ``records`` (in the order given)."""
    if not source:
        raise PayloadError("source (gateway id) must not be empty")
    try:
        header = json.dumps(
            {"v": VERSION, "source": source, "sent": round(sent_ts, 3)},
            separators=(",", ":"),
            allow_nan=False,
        ).encode()
    except ValueError as exc:
        raise PayloadError(f"cannot encode batch header: {exc}") from exc
    body = b",".join(_splice(r) for r in records)
    return header[:-1] + b',"records":[' + body + b"]}"


def _require(cond: bool, problem: str) -> None:
    if not cond:
        raise PayloadError(problem)


def decode_batch(payload: bytes) -> Batch:
    """Parse and check an uplink payload; raise :class:`PayloadError` if it is malformed."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"not JSON: {exc}") from exc
    _require(isinstance(doc, dict), "payload is not a JSON object")
    _require(doc.get("v") == VERSION, f"unsupported version {doc.get('v')!r}")
    source, sent, records = doc.get("source"), doc.get("sent"), doc.get("records")
    _require(isinstance(source, str) and source != "", "'source' must be a non-empty string")
    _require(
        isinstance(sent, int | float) and not isinstance(sent, bool), "'sent' must be a number"
    )
    _require(isinstance(records, list), "'records' must be a list")
    for i, rec in enumerate(records):
        _require(isinstance(rec, dict), f"records[{i}] is not an object")
        seq = rec.get("seq")
        _require(
            isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0,
            f"records[{i}].seq must be a non-negative integer",
        )
    return Batch(source=source, sent=float(sent), records=records)
