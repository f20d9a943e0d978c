"""[pure] Line charts of recent readings as inline SVG, drawn on the gateway.

The gateway is offline and the page allows no external script, so the chart is plain SVG
markup: a polyline, one circle per reading (``class="pt"``, so a reading is something a
test or a screen-reader tree can count), and the y range and time range as text. It has
``role="img"`` with ``<title>``/``<desc>`` (what a screen reader announces); the page puts
the same numbers in a data table next to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Box:
    """The plot area inside the SVG, in SVG user units."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height


def value_range(values: Sequence[float]) -> tuple[float, float]:
    """(lo, hi) of the finite values with lo < hi: a flat series gets a band around it."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi - lo <= max(abs(hi), abs(lo), 1.0) * 1e-9:
        pad = abs(lo) * 0.05 or 0.5
        return lo - pad, hi + pad
    return lo, hi


def scale(points: Sequence[tuple[float, float]], box: Box) -> list[tuple[float, float]]:
    """Map (ts, value) pairs into ``box``: time left to right, larger values higher.

    Non-finite pairs are left out. A single timestamp is drawn in the middle."""
    pts = [(t, v) for t, v in points if math.isfinite(t) and math.isfinite(v)]
    if not pts:
        return []
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    lo, hi = value_range([v for _, v in pts])
    out = []
    for t, v in pts:
        x = box.left + box.width / 2 if t1 == t0 else box.left + (t - t0) / (t1 - t0) * box.width
        y = box.bottom - (v - lo) / (hi - lo) * box.height
        # Rounding to 0.1 unit keeps the markup small; clamp so float error never leaves the box.
        out.append((round(min(box.right, max(box.left, x)), 1), round(min(box.bottom, max(box.top, y)), 1)))
    return out


def fmt_value(v: float) -> str:
    """A reading for people: integers without a decimal point, others with up to 4 significant digits."""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def line_chart(points: Sequence[tuple[float, float]], *, chart_id: str, title: str, desc: str,
               fmt_time: Callable[[float], str], width: int = 360, height: int = 120) -> str:
    """An accessible SVG line chart of (ts, value) pairs."""
    box = Box(left=56, top=10, width=width - 66, height=height - 34)
    xy = scale(points, box)
    finite = [v for t, v in points if math.isfinite(t) and math.isfinite(v)]
    lo, hi = value_range(finite)
    ts = [t for t, v in points if math.isfinite(t) and math.isfinite(v)]
    tid, did = f"{chart_id}-title", f"{chart_id}-desc"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" role="img" '
        f'aria-labelledby="{escape(tid)} {escape(did)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        f'<title id="{escape(tid)}">{escape(title)}</title>',
        f'<desc id="{escape(did)}">{escape(desc)}</desc>',
        f'<rect class="plot" x="{box.left}" y="{box.top}" width="{box.width}" height="{box.height}"/>',
        f'<text class="axis" x="{box.left - 4}" y="{box.top + 4}" text-anchor="end">{escape(fmt_value(hi))}</text>',
        f'<text class="axis" x="{box.left - 4}" y="{box.bottom}" text-anchor="end">{escape(fmt_value(lo))}</text>',
    ]
    if ts:
        parts.append(f'<text class="axis" x="{box.left}" y="{height - 6}">{escape(fmt_time(min(ts)))}</text>')
        parts.append(f'<text class="axis" x="{box.right}" y="{height - 6}" text-anchor="end">'
                     f'{escape(fmt_time(max(ts)))}</text>')
    if len(xy) > 1:
        parts.append('<polyline class="line" points="' + " ".join(f"{x},{y}" for x, y in xy) + '"/>')
    parts.extend(f'<circle class="pt" cx="{x}" cy="{y}" r="2"/>' for x, y in xy)
    parts.append("</svg>")
    return "".join(parts)
