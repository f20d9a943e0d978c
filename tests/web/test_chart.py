"""Chart scaling (hypothesis) and the SVG's structure."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from agent.web.chart import Box, fmt_value, line_chart, scale, value_range

BOX = Box(left=50, top=10, width=300, height=80)
finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
anyfloat = st.floats(allow_nan=True, allow_infinity=True)
SVG = "{http://www.w3.org/2000/svg}"


@given(st.lists(st.tuples(st.floats(0, 2e9), anyfloat), max_size=80))
def test_points_stay_in_the_box_and_non_finite_values_are_left_out(pts: list[tuple[float, float]]) -> None:
    out = scale(pts, BOX)
    assert len(out) == sum(1 for _, v in pts if math.isfinite(v))
    for x, y in out:
        assert BOX.left <= x <= BOX.right and BOX.top <= y <= BOX.bottom


@given(st.lists(st.tuples(st.floats(0, 2e9), finite), min_size=2, max_size=80))
def test_time_runs_left_to_right_and_larger_values_are_higher(pts: list[tuple[float, float]]) -> None:
    pts = sorted(pts)
    out = scale(pts, BOX)
    for (_, v1), (_, v2), (x1, y1), (x2, y2) in zip(pts, pts[1:], out, out[1:], strict=False):
        assert x1 <= x2
        if v2 > v1:
            assert y2 <= y1
    # The extremes span the box (rounded to 0.1 unit), unless the series is flat to the chart's
    # resolution (value_range then draws a band around it).
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    if hi - lo > max(abs(hi), abs(lo), 1.0) * 1e-9:
        ys = [y for _, y in out]
        assert min(ys) <= BOX.top + 0.1 and max(ys) >= BOX.bottom - 0.1


@given(st.lists(finite, max_size=30))
def test_value_range_is_never_empty(vals: list[float]) -> None:
    lo, hi = value_range(vals)
    assert lo < hi
    if vals:
        assert lo <= min(vals) and max(vals) <= hi


def test_flat_series_sits_in_the_middle() -> None:
    out = scale([(1, 230.0), (2, 230.0), (3, 230.0)], BOX)
    assert {y for _, y in out} == {BOX.top + BOX.height / 2}
    assert scale([(5, 1.0)], BOX) == [(BOX.left + BOX.width / 2, BOX.top + BOX.height / 2)]


def test_svg_is_accessible_and_counts_every_reading() -> None:
    pts = [(1000.0 + i, float(i % 5)) for i in range(12)] + [(2000.0, math.nan)]
    svg = line_chart(pts, chart_id="chart-sl-1-voltage", title="sl-1: voltage (V) <&>", desc="12 readings",
                     fmt_time=lambda ts: f"t{ts:.0f}")
    root = ET.fromstring(svg)  # well-formed XML, the title escaped
    assert root.get("role") == "img"
    assert root.get("aria-labelledby") == "chart-sl-1-voltage-title chart-sl-1-voltage-desc"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert title is not None and title.text == "sl-1: voltage (V) <&>" and title.get("id") == "chart-sl-1-voltage-title"
    assert desc is not None and desc.text == "12 readings"
    assert len(root.findall(f"{SVG}circle")) == 12
    texts = [el.text for el in root.findall(f"{SVG}text")]
    assert texts == ["4", "0", "t1000", "t1011"]


def test_fmt_value() -> None:
    assert [fmt_value(v) for v in (3.0, -2.0, 0.004, 231.1234, 1e20)] == ["3", "-2", "0.004", "231.1", "1e+20"]
