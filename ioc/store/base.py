"""What every verified-reading store does, and the pure parts they share.

A store keeps each verified record once per ``(source, seq)``: ``accept`` inserts a
message's records in one transaction and reports which were new, how many it already
had, and which holes in the source's sequence numbers the new ones opened. The per-source
bookkeeping (:mod:`ioc.gaps`) lives in a table next to the readings and is updated in the
same transaction, under a per-source lock, so it survives restarts and stays exact when
several receivers share one database.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypedDict

from ioc.gaps import Gap, SeqState, advance
from ioc.output import OutputError, dumps_json

SCHEMA_NAME = "urbanedge.ioc.readings"
SCHEMA_VERSION = 1
MAX_SEQ = 2**63 - 1  # BIGINT / SQLite INTEGER

META_TABLE = "reading_store_meta"
SOURCES_TABLE = "reading_sources"
READINGS_TABLE = "readings"


class StoreError(Exception):
    """Base of every error a reading store raises."""


class StoreConfigError(StoreError):
    """The store URL (or the installed extras) cannot give a store."""


class StoreConnectError(StoreError):
    """The database cannot be opened or reached."""


class SchemaError(StoreError):
    """The database is not a reading store this version understands."""


class InvalidRecordError(StoreError):
    """A record lacks what the store needs (seq, type, device_id, ts) or is not JSON."""


class StoreUnavailableError(StoreError):
    """A store operation failed midway (connection lost, disk full...); nothing was kept."""


class StoreClosedError(StoreError):
    """The store was closed."""


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """``new``: records not seen before, in seq order; ``duplicates``: how many were already
    stored (or repeated in the message); ``gaps``: holes this message opened."""

    new: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    gaps: list[Gap] = field(default_factory=list)


class SourceStats(TypedDict):
    stored: int
    duplicates: int
    first_seq: int | None
    highest_seq: int | None
    missing: int


@dataclass(frozen=True, slots=True)
class Row:
    """One record, checked and encoded for the readings table."""

    seq: int
    type: str
    device_id: str
    kind: str | None
    ts: float
    body: str
    record: dict[str, Any]


def _fail(index: int, record: Mapping[str, Any], problem: str) -> InvalidRecordError:
    seq = record.get("seq") if isinstance(record, Mapping) else None
    return InvalidRecordError(f"record {index} (seq {seq!r}): {problem}")


def _row(index: int, record: Any) -> Row:
    if not isinstance(record, Mapping):
        raise InvalidRecordError(f"record {index}: not a mapping but {type(record).__name__}")
    seq, rtype, device_id = record.get("seq"), record.get("type"), record.get("device_id")
    kind, ts = record.get("kind"), record.get("ts")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
        raise _fail(index, record, f"seq must be an integer in 0..{MAX_SEQ}")
    if not isinstance(rtype, str) or not rtype:
        raise _fail(index, record, "type must be a non-empty string")
    if not isinstance(device_id, str) or not device_id:
        raise _fail(index, record, "device_id must be a non-empty string")
    if kind is not None and not isinstance(kind, str):
        raise _fail(index, record, "kind must be a string")
    if isinstance(ts, bool) or not isinstance(ts, int | float | Decimal) or not math.isfinite(ts):
        raise _fail(index, record, "ts must be a finite number")
    plain = dict(record)
    try:
        body = dumps_json(plain)
    except OutputError as exc:
        raise _fail(index, record, str(exc)) from exc
    return Row(seq, rtype, device_id, kind, float(ts), body, plain)


def prepare(records: Sequence[Any]) -> tuple[list[Row], int]:
    """Check and encode a message's records: distinct rows in seq order, and how many
    records repeated a seq already in the message (the first one wins).

    Raises :class:`InvalidRecordError` for the first bad record: a message is stored whole
    or not at all.
    """
    by_seq: dict[int, Row] = {}
    repeated = 0
    for index, record in enumerate(records):
        row = _row(index, record)
        if row.seq in by_seq:
            repeated += 1
        else:
            by_seq[row.seq] = row
    return [by_seq[s] for s in sorted(by_seq)], repeated


def check_source(source: object) -> str:
    if not isinstance(source, str) or not source:
        raise InvalidRecordError("source must be a non-empty string")
    return source


@dataclass(frozen=True, slots=True)
class Settled:
    """What one accept changes: the result for the caller, the source's new state."""

    result: AcceptResult
    state: SeqState
    stored: int
    duplicates: int


def settle(source: str, state: SeqState, rows: Sequence[Row], inserted: set[int], repeated: int) -> Settled:
    """Turn what the database actually inserted into the caller's result and the new state."""
    new_rows = [r for r in rows if r.seq in inserted]
    new_state, gaps = advance(source, state, (r.seq for r in new_rows))
    duplicates = len(rows) - len(new_rows) + repeated
    return Settled(
        AcceptResult([r.record for r in new_rows], duplicates, gaps),
        new_state, len(new_rows), duplicates,
    )


class ReadingStore(ABC):
    """Verified readings, exactly once per ``(source, seq)``; see the module docstring."""

    #: Where the store is, for logs and errors (never a password).
    where: str

    def accept(
        self, source: str, records: Sequence[Mapping[str, Any]], *, received_at: float,
    ) -> AcceptResult:
        """Store the records of one verified message from ``source`` in one transaction."""
        check_source(source)
        rows, repeated = prepare(records)
        if not rows:
            return AcceptResult()
        return self._accept(source, rows, repeated, float(received_at))

    @abstractmethod
    def _accept(self, source: str, rows: list[Row], repeated: int, received_at: float) -> AcceptResult: ...

    @abstractmethod
    def stats(self) -> dict[str, SourceStats]:
        """Per source: records stored, duplicates dropped, first and highest seq, seqs missing."""

    @abstractmethod
    def open_gaps(self, source: str) -> list[Gap]:
        """The holes still open in ``source``'s seqs (from its first stored seq up)."""

    @abstractmethod
    def records(self, source: str, *, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored records of ``source`` with seq > ``after_seq``, in seq order."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.close()


def check_meta(where: str, meta: dict[str, str]) -> None:
    """Refuse a database whose reading-store schema is another one or another version."""
    if meta.get("schema") != SCHEMA_NAME:
        raise SchemaError(f"{where} is not an urbanedge reading store (schema {meta.get('schema')!r})")
    version = meta.get("version")
    if version != str(SCHEMA_VERSION):
        raise SchemaError(
            f"{where} has reading-store schema version {version}, this urbanedge understands "
            f"version {SCHEMA_VERSION}: use a matching urbanedge release or another store")


# SQL both backends run as is (the placeholder style differs: see ``_sql``).
OPEN_GAPS_SQL = (
    f"SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev"
    f" FROM {READINGS_TABLE} WHERE source = ? AND seq >= ?) AS s"
    f" WHERE seq > prev + 1 ORDER BY seq"
)
