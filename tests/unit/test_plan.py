"""Read planning: coverage, limits, optimality against a brute-force DP, decode identity."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import (
    DEFAULT_MAX_GAP_BITS,
    DEFAULT_MAX_GAP_REGISTERS,
    ReadBlock,
    decode_block,
    plan_reads,
    rtu_bus_chars,
)
from drivers.modbus.registermap import decode_point, encode_point
from drivers.profiles import Point, builtin_profiles

BIT_TABLES = ("coil", "discrete_input")


def mk(name: str, table: str, address: int, type_: str = "uint16", **kw: object) -> Point:
    if table in BIT_TABLES:
        type_ = "bool"
    return Point.model_validate(
        {"name": name, "table": table, "address": address, "type": type_, **kw}
    )


# --- layouts -------------------------------------------------------------------------------

@st.composite
def register_layout(draw: st.DrawFn, table: str = "input", max_points: int = 12) -> list[Point]:
    """Non-overlapping register points, plus bit points sharing status registers."""
    points: list[Point] = []
    address = draw(st.integers(0, 20))
    for i in range(draw(st.integers(1, max_points))):
        if draw(st.integers(0, 3)) == 0:
            for bit in sorted(draw(st.sets(st.integers(0, 15), min_size=1, max_size=4))):
                points.append(mk(f"s{i}_{bit}", table, address, "bool", bit=bit))
            width = 1
        else:
            type_ = draw(st.sampled_from(("int16", "uint16", "int32", "uint32", "float32")))
            order = draw(st.sampled_from(("big", "little")))
            points.append(mk(f"p{i}", table, address, type_, word_order=order))
            width = points[-1].width
        address += width + draw(st.sampled_from((0, 0, 1, 3, 9, 10, 11, 40)))
    return points


@st.composite
def bit_layout(draw: st.DrawFn, table: str = "coil") -> list[Point]:
    addresses = draw(st.sets(st.integers(0, 900), min_size=1, max_size=12))
    return [mk(f"b{a}", table, a) for a in sorted(addresses)]


@st.composite
def device_layout(draw: st.DrawFn) -> list[Point]:
    points = draw(register_layout("input"))
    if draw(st.booleans()):
        points += [mk(f"h_{p.name}", "holding", p.address, p.type, bit=p.bit)
                   for p in draw(register_layout("holding", 4))]
    if draw(st.booleans()):
        points += draw(bit_layout("discrete_input"))
    return points


# --- brute force ---------------------------------------------------------------------------

def _feasible(points: Sequence[Point], limit: int, max_gap: int) -> bool:
    start, end = points[0].address, points[0].end
    for p in points[1:]:
        if p.address - end > max_gap:
            return False
        end = max(end, p.end)
    return end - start <= limit


def min_blocks(points: Sequence[Point], limit: int, max_gap: int) -> int:
    """DP over address-sorted points, splitting only where blocks cannot overlap."""
    ordered = sorted(points, key=lambda p: (p.address, p.end))
    inf = len(ordered) + 1
    best = [0] + [inf] * len(ordered)
    for i in range(1, len(ordered) + 1):
        for j in range(i):
            clean = j == 0 or max(p.end for p in ordered[:j]) <= ordered[j].address
            if clean and best[j] < inf and _feasible(ordered[j:i], limit, max_gap):
                best[i] = min(best[i], best[j] + 1)
    return best[-1]


# --- properties ----------------------------------------------------------------------------

limits = st.sampled_from((4, 8, 16, 125))
gaps = st.sampled_from((0, 2, 10))


def check_plan(points: list[Point], blocks: Sequence[ReadBlock], limit: int, bit_limit: int) -> None:
    seen = [p.name for b in blocks for p in b.points]
    assert sorted(seen) == sorted(p.name for p in points)  # every point exactly once
    for b in blocks:
        assert b.count <= (bit_limit if b.is_bit else limit)
        assert all(p.table == b.table and b.start <= p.address and p.end <= b.end for p in b.points)
        assert b.start == min(p.address for p in b.points)
        assert b.end == max(p.end for p in b.points)
    for table in {b.table for b in blocks}:
        spans = sorted((b.start, b.end) for b in blocks if b.table == table)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


@given(points=device_layout(), limit=limits, gap=gaps)
@settings(max_examples=200)
def test_plan_covers_each_point_once_within_limits(points: list[Point], limit: int, gap: int) -> None:
    blocks = plan_reads(points, max_registers=limit, max_bits=limit * 8,
                        max_gap_registers=gap, max_gap_bits=gap * 8)
    check_plan(points, blocks, limit, limit * 8)


@given(points=register_layout(), limit=limits, gap=gaps)
@settings(max_examples=200)
def test_register_plan_is_minimal(points: list[Point], limit: int, gap: int) -> None:
    blocks = plan_reads(points, max_registers=limit, max_gap_registers=gap)
    assert len(blocks) == min_blocks(points, limit, gap)


@given(points=bit_layout(), limit=st.sampled_from((8, 64, 2000)), gap=st.sampled_from((0, 16, 160)))
def test_bit_plan_is_minimal(points: list[Point], limit: int, gap: int) -> None:
    blocks = plan_reads(points, max_bits=limit, max_gap_bits=gap)
    assert len(blocks) == min_blocks(points, limit, gap)


@given(points=device_layout(), data=st.data())
def test_decode_block_inverts_encoding(points: list[Point], data: st.DataObject) -> None:
    expected = {}
    for block in plan_reads(points):
        image: list[int] = [0] * block.count
        bits: list[bool] = [False] * block.count
        for p in block.points:
            raw = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
            value = decode_point(p, [bool(raw[0] & 1)] if p.is_bit else raw[: p.width])
            if isinstance(value, float) and value != value:
                value = 0.0  # NaN never compares equal; any other float is exact
            expected[p.name] = value
            at = p.address - block.start
            encoded = encode_point(p, value)
            if p.is_bit:
                bits[at] = bool(encoded[0])
            elif p.bit is not None:
                image[at] |= int(encoded[0])
            else:
                image[at : at + p.width] = [int(w) for w in encoded]
        assert decode_block(block, bits if block.is_bit else image) == {
            p.name: expected[p.name] for p in block.points
        }


# --- examples ------------------------------------------------------------------------------

def test_default_gap_limits_follow_the_rtu_cost_model() -> None:
    assert DEFAULT_MAX_GAP_REGISTERS == 10
    assert DEFAULT_MAX_GAP_BITS == 160
    bridged = plan_reads([mk("a", "input", 0), mk("b", "input", 11)])
    assert [(b.start, b.count) for b in bridged] == [(0, 12)]
    split = plan_reads([mk("a", "input", 0), mk("b", "input", 12)])
    assert [(b.start, b.count) for b in split] == [(0, 1), (12, 1)]
    coils = plan_reads([mk("a", "coil", 0), mk("b", "coil", 161), mk("c", "coil", 400)])
    assert [(b.start, b.count) for b in coils] == [(0, 162), (400, 1)]


def test_reading_the_gap_is_cheaper_than_a_second_request() -> None:
    one = plan_reads([mk("a", "input", 0), mk("b", "input", 11)])
    two = plan_reads([mk("a", "input", 0), mk("b", "input", 11)], max_gap_registers=0)
    assert sum(map(rtu_bus_chars, one)) <= sum(map(rtu_bus_chars, two))


def test_request_limit_splits_blocks() -> None:
    points = [mk(f"p{i}", "holding", i * 2, "uint32") for i in range(100)]
    blocks = plan_reads(points)
    assert [(b.start, b.count) for b in blocks] == [(0, 124), (124, 76)]


def test_bit_points_of_one_register_share_a_block() -> None:
    points = [mk("f0", "input", 10, "bool", bit=0), mk("f1", "input", 10, "bool", bit=5),
              mk("v", "input", 9, "uint16")]
    (block,) = plan_reads(points, max_gap_registers=0)
    assert (block.start, block.count, len(block.points)) == (9, 2, 3)
    assert decode_block(block, [7, 0b100001]) == {"v": 7, "f0": True, "f1": True}


def test_overlap_wider_than_the_limit_is_rejected() -> None:
    points = [mk("a", "input", 0, "uint32"), mk("b", "input", 1, "uint32")]
    with pytest.raises(ValueError, match="overlap"):
        plan_reads(points, max_registers=2)


def test_rtu_bus_chars() -> None:
    assert rtu_bus_chars(ReadBlock("input", 0, 10, ())) == 40  # (20 + 2N), as in perf.md
    assert rtu_bus_chars(ReadBlock("coil", 0, 9, ())) == 22  # 2 data bytes


def test_shipped_streetlight_reads_in_one_request_per_table() -> None:
    blocks = plan_reads(builtin_profiles()["streetlight"].points)
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("coil", 0, 1), ("holding", 0, 1), ("input", 0, 16)
    ]
