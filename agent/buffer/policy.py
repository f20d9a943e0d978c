"""[pure] What the outbox gives up when it is full.

The outbox is bounded by bytes. When it is over its limit it evicts whole rows, least
important class first (telemetry, then events, alarms last) and oldest first within a
class; the store applies the order, this module decides the counts. Eviction goes down
to a low-water mark below the limit, so one eviction pays for many appends instead of
one small delete on every append.

The byte model is deliberately simple: every row is charged the average size
``used_bytes / rows``. Pages shared by classes and fixed tables make the real figure
differ a little, so the store re-checks usage after evicting and asks again.

When the *disk* is full (not just the configured limit), :func:`plan_room` frees room
for a batch without ever touching stored alarms, and :func:`shed` picks which part of
the batch to give up when nothing more can be evicted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.buffer.records import NewRecord, Priority

# Least important first: the order in which rows are given up.
EVICTION_ORDER: tuple[Priority, ...] = (Priority.TELEMETRY, Priority.EVENT, Priority.ALARM)

DEFAULT_LOW_WATER = 0.9
# A full disk gives no byte figure to aim for; freeing twice what the batch needs
# leaves room for the next few batches instead of failing again on the very next one.
ROOM_FACTOR = 2.0
# Per-row bytes a record costs beyond its body and device id (rowid, ts, record header,
# cell pointer, page slack), measured on the store's schema.
ROW_OVERHEAD = 32


@dataclass(frozen=True, slots=True)
class Eviction:
    """Rows to evict per priority (only non-zero counts are present)."""

    rows: Mapping[Priority, int]

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def __bool__(self) -> bool:
        return self.total > 0


NOTHING = Eviction({})


def _take(rows_needed: int, depth: Mapping[Priority, int], order: Sequence[Priority]) -> Eviction:
    """Take ``rows_needed`` rows from the classes in ``order``, each up to its depth."""
    plan: dict[Priority, int] = {}
    for prio in order:
        if rows_needed <= 0:
            break
        n = min(rows_needed, max(0, depth.get(prio, 0)))
        if n > 0:
            plan[prio] = n
            rows_needed -= n
    return Eviction(plan)


def plan_eviction(
    used_bytes: int,
    max_bytes: int,
    depth: Mapping[Priority, int],
    low_water: float = DEFAULT_LOW_WATER,
) -> Eviction:
    """Rows to evict so that ``used_bytes`` falls to ``low_water * max_bytes``.

    Nothing is evicted while usage is within the limit. Alarms are taken only when no
    telemetry or event is left to take.
    """
    if not 0.0 < low_water <= 1.0:
        raise ValueError(f"low_water must be in (0, 1], got {low_water}")
    rows = sum(max(0, n) for n in depth.values())
    if used_bytes <= max_bytes or rows == 0:
        return NOTHING
    per_row = used_bytes / rows
    target = math.floor(max_bytes * low_water)
    needed = math.ceil((used_bytes - target) / per_row)
    return _take(needed, depth, EVICTION_ORDER)


def plan_room(
    needed_bytes: int, used_bytes: int, depth: Mapping[Priority, int]
) -> Eviction:
    """Rows to evict to make room for ``needed_bytes`` on a full disk; never alarms."""
    rows = sum(max(0, n) for n in depth.values())
    if rows == 0 or needed_bytes <= 0:
        return NOTHING
    per_row = max(1.0, used_bytes / rows)
    wanted = math.ceil(needed_bytes * ROOM_FACTOR / per_row)
    return _take(wanted, depth, (Priority.TELEMETRY, Priority.EVENT))


def record_bytes(records: Sequence[NewRecord]) -> int:
    """Rough bytes the records take once stored (for :func:`plan_room`)."""
    return sum(len(r.body) + len(r.device_id) + ROW_OVERHEAD for r in records)


def shed(records: Sequence[NewRecord]) -> tuple[list[NewRecord], list[NewRecord]]:
    """Split a batch into (kept, dropped), dropping every record of its least
    important class present; alarms go only when the batch holds nothing else."""
    if not records:
        return [], []
    worst = max(r.prio for r in records)
    kept = [r for r in records if r.prio != worst]
    dropped = [r for r in records if r.prio == worst]
    return kept, dropped
