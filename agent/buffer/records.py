"""What the outbox holds: records with a priority, in the wire encoding of their body.

A *record* is one row of the outbox and one element of an uplink message: a device poll
(telemetry, carrying many readings), an alarm transition, or an agent event. The body
is compact JSON *without* ``seq``: the outbox assigns the sequence number when the row
is committed and the encoder splices it in, so nothing is parsed twice on the hot path.
``type`` and ``device_id`` are not in the body either: the row's priority and device
column carry them, and the encoder puts them back (see ``agent/seal/encode.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    """Lower is sent first and evicted last."""

    ALARM = 0
    EVENT = 1
    TELEMETRY = 2


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record on its way into the outbox (no sequence number yet)."""

    prio: Priority
    device_id: str
    ts: float
    body: bytes


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed outbox row. ``seq`` is unique per gateway and never reused."""

    seq: int
    prio: Priority
    device_id: str
    ts: float
    body: bytes


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def telemetry(
    device_id: str,
    kind: str,
    ts: float,
    values: dict[str, Any],
    quality: str = "good",
    point_quality: dict[str, str] | None = None,
    error: str | None = None,
    command_id: str | None = None,
) -> NewRecord:
    """A device poll: ``quality`` is good / stale / error for the poll as a whole,
    ``point_quality`` names the points that are not good (with their own quality).
    ``command_id``: the poll was asked for by that command (``read-now``), not scheduled."""
    body: dict[str, Any] = {
        "kind": kind, "ts": round(ts, 3), "quality": quality, "values": values,
    }
    if point_quality:
        body["q"] = point_quality
    if error:
        body["error"] = error
    if command_id:
        body["trigger"] = "read-now"
        body["command_id"] = command_id
    return NewRecord(Priority.TELEMETRY, device_id, ts, _dump(body))


def alarm(
    device_id: str,
    kind: str,
    ts: float,
    name: str,
    state: str,
    severity: str,
    point: str,
    value: Any,
    threshold: Any = None,
) -> NewRecord:
    """An alarm transition: ``state`` is ``raised`` or ``cleared``."""
    body: dict[str, Any] = {
        "kind": kind, "ts": round(ts, 3),
        "alarm": name, "state": state, "severity": severity, "point": point, "value": value,
    }
    if threshold is not None:
        body["threshold"] = threshold
    return NewRecord(Priority.ALARM, device_id, ts, _dump(body))


def event(device_id: str, ts: float, name: str, **details: Any) -> NewRecord:
    """An agent or device event (device offline/online, outbox eviction, overload...)."""
    body: dict[str, Any] = {
        "ts": round(ts, 3), "event": name, **details,
    }
    return NewRecord(Priority.EVENT, device_id, ts, _dump(body))
