"""Verified readings out of the IOC receiver as text lines: JSON lines or NGSI-LD entities.

A writer takes what :meth:`ioc.store.ReadingStore.accept` returned as new (the records of
one verified message) and writes one line per record to a text stream, flushing once per
message so a consumer reading a pipe sees each message as soon as it is stored.

Numbers: CBOR decimal fractions decode as :class:`decimal.Decimal`, which ``json`` cannot
write; :func:`dumps_json` writes them as JSON numbers (an integral Decimal without a
fractional exponent as an integer, any other through ``float``: exact for the 15
significant digits a sensor value never exceeds). NaN and infinities are not JSON: a
record carrying one is refused with :class:`OutputError`, never written as ``NaN``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, Protocol, TextIO

from ioc.ngsi_ld import to_ngsi_ld

Format = Literal["json", "ngsi-ld"]
FORMATS: tuple[Format, ...] = ("json", "ngsi-ld")

# The fields every line starts with, in this order; the rest of the record follows as sent.
_HEAD = ("seq", "type", "device_id", "kind", "ts")


class OutputError(ValueError):
    """A record cannot be written as JSON (a NaN or infinity, a type JSON has no form for)."""


def _default(obj: object) -> int | float:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"{obj} is not a JSON number")
        exponent = obj.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(obj)
        return float(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps_json(obj: Any) -> str:
    """Compact JSON text of ``obj``; Decimals as numbers; :class:`OutputError` if impossible."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_default)
    except (TypeError, ValueError, RecursionError) as exc:
        raise OutputError(f"not representable as JSON: {exc}") from exc


def json_line(source: str, record: Mapping[str, Any], verified: Mapping[str, Any] | None) -> str:
    """The JSON-lines form of one record: ``source``, the head fields, the rest, ``verified``."""
    out: dict[str, Any] = {"source": source}
    for key in _HEAD:
        if key in record:
            out[key] = record[key]
    for key, value in record.items():
        if key not in out and key != "verified":
            out[key] = value
    if verified is not None:
        out["verified"] = dict(verified)
    return dumps_json(out)


class RecordWriter(Protocol):
    def write(
        self, source: str, records: Sequence[Mapping[str, Any]], *,
        verified: Mapping[str, Any] | None = None,
    ) -> int:
        """Write the records of one verified message; return how many lines were written."""
        ...


class JsonLinesWriter:
    """One JSON object per record, with who signed it (``verified``, given by the caller)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(
        self, source: str, records: Sequence[Mapping[str, Any]], *,
        verified: Mapping[str, Any] | None = None,
    ) -> int:
        # Encode the whole message first: a record that cannot be written must not leave
        # half a message on the stream.
        lines = [json_line(source, rec, verified) for rec in records]
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        return len(lines)


class NgsiLdWriter:
    """One NGSI-LD entity (normalized form) per telemetry record that maps to a data model.

    Alarms, events and device kinds without a Smart Data Model are skipped; ``verified`` is
    not part of the entity (the data models have no place for it).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(
        self, source: str, records: Sequence[Mapping[str, Any]], *,
        verified: Mapping[str, Any] | None = None,
    ) -> int:
        lines = []
        for rec in records:
            entity = to_ngsi_ld(source, rec)
            if entity is not None:
                lines.append(dumps_json(entity))
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        return len(lines)


def make_writer(fmt: str, stream: TextIO) -> RecordWriter:
    """The writer for ``--format`` (``json`` or ``ngsi-ld``)."""
    if fmt == "json":
        return JsonLinesWriter(stream)
    if fmt == "ngsi-ld":
        return NgsiLdWriter(stream)
    raise ValueError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")
