"""Read planning: coalesce a device's points into the fewest Modbus requests. [pure]

On an RS-485 line every request costs framing and silent intervals whatever its size,
so reading a few unused registers between two points is cheaper than a second request.
The default gap limits come from an RTU cost model, in characters of bus time:

* one extra request + response: 8 bytes of request, 5 bytes of response framing
  (address, function, byte count, CRC) and two 3.5-character silent intervals,
  ``8 + 5 + 7 = 20`` characters;
* one gap register in the response: 2 characters; one gap bit: 1/8 character.

A gap is bridged when reading it costs no more than a separate request: up to
``20 / 2 = 10`` registers or ``20 * 8 = 160`` bits.

Points that overlap (several ``bit`` points of one status register, a ``uint16`` and
its bits) always go in the same block. Within each table the points are grouped into
such overlap clusters, sorted, and packed greedily; packing greedily into the longest
feasible run is optimal here because feasibility (span and largest gap) can only get
better when a run is shortened.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.registermap import decode_point
from drivers.profiles import Point, Value

REQUEST_OVERHEAD_CHARS = 8 + 5 + 7
GAP_REGISTER_CHARS = 2
GAP_BITS_PER_CHAR = 8
DEFAULT_MAX_GAP_REGISTERS = REQUEST_OVERHEAD_CHARS // GAP_REGISTER_CHARS
DEFAULT_MAX_GAP_BITS = REQUEST_OVERHEAD_CHARS * GAP_BITS_PER_CHAR
TABLE_ORDER = ("coil", "discrete_input", "holding", "input")


@dataclass(frozen=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: str
    start: int
    count: int
    points: tuple[Point, ...]

    @property
    def is_bit(self) -> bool:
        """True for coils and discrete inputs (counted in bits)."""
        return self.table in ("coil", "discrete_input")

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


@dataclass
class _Cluster:
    start: int
    end: int
    points: list[Point]


def _clusters(points: Sequence[Point]) -> list[_Cluster]:
    ordered = sorted(points, key=lambda p: (p.address, p.end, p.name))
    found: list[_Cluster] = []
    for point in ordered:
        if found and point.address < found[-1].end:
            last = found[-1]
            last.end = max(last.end, point.end)
            last.points.append(point)
        else:
            found.append(_Cluster(point.address, point.end, [point]))
    return found


def _pack(table: str, clusters: list[_Cluster], limit: int, max_gap: int) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    current: _Cluster | None = None
    for cluster in clusters:
        if cluster.end - cluster.start > limit:
            raise ValueError(
                f"{table} points {[p.name for p in cluster.points]} overlap across more "
                f"than {limit} addresses: they cannot be read in one request"
            )
        if (
            current is not None
            and cluster.start - current.end <= max_gap
            and cluster.end - current.start <= limit
        ):
            current.end = cluster.end
            current.points.extend(cluster.points)
            continue
        if current is not None:
            blocks.append(_block(table, current))
        current = _Cluster(cluster.start, cluster.end, list(cluster.points))
    if current is not None:
        blocks.append(_block(table, current))
    return blocks


def _block(table: str, cluster: _Cluster) -> ReadBlock:
    return ReadBlock(table, cluster.start, cluster.end - cluster.start, tuple(cluster.points))


def plan_reads(
    points: Iterable[Point],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap_registers: int | None = None,
    max_gap_bits: int | None = None,
) -> tuple[ReadBlock, ...]:
    """The fewest read requests covering every point, per table, within the limits.

    Blocks come ordered by table (coil, discrete_input, holding, input) then address.
    ``max_gap_*`` of ``None`` use the RTU cost model (module docstring); 0 bridges only
    adjacent points, never unused addresses.
    """
    if max_registers < 1 or max_bits < 1:
        raise ValueError("request limits must be at least 1")
    gap_regs = DEFAULT_MAX_GAP_REGISTERS if max_gap_registers is None else max_gap_registers
    gap_bits = DEFAULT_MAX_GAP_BITS if max_gap_bits is None else max_gap_bits
    by_table: dict[str, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    blocks: list[ReadBlock] = []
    for table in TABLE_ORDER:
        if table not in by_table:
            continue
        bits = table in ("coil", "discrete_input")
        limit, gap = (max_bits, gap_bits) if bits else (max_registers, gap_regs)
        blocks.extend(_pack(table, _clusters(by_table[table]), limit, gap))
    return tuple(blocks)


def decode_block(block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
    """Values of the block's points, each decoded from its own slice of ``data``."""
    start = block.start
    return {
        p.name: decode_point(p, data[p.address - start : p.end - start]) for p in block.points
    }


def rtu_bus_chars(block: ReadBlock) -> int:
    """Characters of bus time for the block's RTU request and response, silent gaps included.

    Request: address, function, start (2), count (2), CRC (2) = 8. Response: address,
    function, byte count, data, CRC (2) = 5 + data. Plus 3.5 silent characters before
    each frame. Multiply by bits per character / baud rate for seconds.
    """
    data = (block.count + 7) // 8 if block.is_bit else 2 * block.count
    return REQUEST_OVERHEAD_CHARS + data
