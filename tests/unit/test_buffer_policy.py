"""Property tests for the pure eviction policy of the outbox."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer import policy
from agent.buffer.records import NewRecord, Priority

depths = st.fixed_dictionaries({p: st.integers(0, 2_000_000) for p in Priority})
byte_counts = st.integers(0, 2**40)
limits = st.integers(1, 2**40)
low_waters = st.floats(0.05, 1.0)


def _per_row(used: int, depth: dict[Priority, int]) -> float:
    return used / sum(depth.values())


@given(used=byte_counts, limit=limits, depth=depths, low=low_waters)
def test_nothing_is_evicted_within_the_limit(
    used: int, limit: int, depth: dict[Priority, int], low: float
) -> None:
    plan = policy.plan_eviction(min(used, limit), limit, depth, low)
    assert not plan
    assert plan.total == 0


@given(used=byte_counts, limit=limits, depth=depths, low=low_waters)
def test_counts_stay_within_depth(
    used: int, limit: int, depth: dict[Priority, int], low: float
) -> None:
    plan = policy.plan_eviction(used, limit, depth, low)
    for prio, n in plan.rows.items():
        assert 0 < n <= depth[prio]


@given(used=byte_counts, limit=limits, depth=depths, low=low_waters)
def test_alarms_go_only_when_nothing_else_is_left(
    used: int, limit: int, depth: dict[Priority, int], low: float
) -> None:
    plan = policy.plan_eviction(used, limit, depth, low)
    if plan.rows.get(Priority.ALARM, 0):
        assert plan.rows.get(Priority.TELEMETRY, 0) == depth[Priority.TELEMETRY]
        assert plan.rows.get(Priority.EVENT, 0) == depth[Priority.EVENT]
    if plan.rows.get(Priority.EVENT, 0):
        assert plan.rows.get(Priority.TELEMETRY, 0) == depth[Priority.TELEMETRY]


@given(used=byte_counts, limit=limits, depth=depths, low=low_waters)
def test_brings_usage_to_the_low_water_mark_when_possible(
    used: int, limit: int, depth: dict[Priority, int], low: float
) -> None:
    plan = policy.plan_eviction(used, limit, depth, low)
    if used <= limit or sum(depth.values()) == 0:
        return
    per_row = _per_row(used, depth)
    left = used - plan.total * per_row
    target = math.floor(limit * low)
    if plan.total < sum(depth.values()):
        # Under the model (each row costs the average), usage ends at or below the mark,
        # so the next appends do not evict again at once...
        assert left <= target + 1e-6 * used
        # ...and not a row more than that is given up.
        assert left + per_row > target - 1e-6 * used
    else:
        assert left == pytest.approx(0.0, abs=1e-6 * used + 1e-9)


@given(used=byte_counts, depth=depths)
def test_room_on_a_full_disk_never_costs_an_alarm(used: int, depth: dict[Priority, int]) -> None:
    needed = 10_000
    plan = policy.plan_room(needed, used, depth)
    assert Priority.ALARM not in plan.rows
    rows = sum(depth.values())
    if rows and plan.rows.get(Priority.EVENT, 0):
        assert plan.rows.get(Priority.TELEMETRY, 0) == depth[Priority.TELEMETRY]
    evictable = depth[Priority.TELEMETRY] + depth[Priority.EVENT]
    if rows and plan.total < evictable:
        assert plan.total * max(1.0, used / rows) >= needed * policy.ROOM_FACTOR


records = st.lists(
    st.builds(
        NewRecord,
        prio=st.sampled_from(Priority),
        device_id=st.text(min_size=1, max_size=8),
        ts=st.floats(0, 2e9),
        body=st.binary(max_size=40),
    ),
    max_size=30,
)


@given(batch=records)
def test_shed_drops_the_least_important_class_and_keeps_order(batch: list[NewRecord]) -> None:
    kept, dropped = policy.shed(batch)
    assert sorted(map(id, kept + dropped)) == sorted(map(id, batch))
    assert kept == [r for r in batch if r in kept]
    if dropped:
        worst = dropped[0].prio
        assert all(r.prio == worst for r in dropped)
        assert all(r.prio < worst for r in kept)
        if worst == Priority.ALARM:
            assert not kept


def test_record_bytes_counts_body_device_and_overhead() -> None:
    rec = NewRecord(Priority.TELEMETRY, "dev-1", 1.0, b"x" * 100)
    assert policy.record_bytes([rec, rec]) == 2 * (100 + 5 + policy.ROW_OVERHEAD)


def test_low_water_outside_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="low_water"):
        policy.plan_eviction(10, 5, {Priority.TELEMETRY: 1}, low_water=0.0)
