"""Register encoding of profile points: raw Modbus words/bits <-> engineering values. [pure]

``decode_point`` is on the poll hot path, so it does the least work per call: one
branch per type, no allocation beyond the result. ``encode_point`` is its inverse and
is used by the simulators (and for writes), so it validates ranges strictly.

Rules (also the contract with profile authors):

* 32-bit types span two registers; ``word_order = "big"`` means the first register holds
  the high word (Modbus convention), ``"little"`` the low word. Bytes inside a register
  are always big-endian, as the protocol defines.
* ``bit`` picks one bit (0 = least significant) of a register: a ``bool`` point yields
  ``True``/``False``, a ``uint16`` point yields 0/1 before scaling.
* Integer types are then scaled: ``value = raw * scale + offset``, rounded to the
  decimals of ``scale``/``offset`` so ``0.1 * 2301`` reads as ``230.1``, not
  ``230.10000000000002``. With ``scale == 1`` and ``offset == 0`` the result is the
  ``int`` itself; otherwise a ``float``. ``float32`` always yields a ``float``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from decimal import Decimal

from drivers.profiles import Point, Value

_FLOAT = struct.Struct(">f")
_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint32": (0, 0xFFFF_FFFF),
}
_decimals_cache: dict[tuple[float, float], int] = {}


class EncodeError(ValueError):
    """A value cannot be represented by the point's register type."""


def _decimals_of(x: float) -> int:
    exponent = Decimal(repr(x)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def value_decimals(scale: float, offset: float) -> int:
    """Decimal places that ``raw * scale + offset`` can carry (cached per pair)."""
    key = (scale, offset)
    found = _decimals_cache.get(key)
    if found is None:
        found = _decimals_cache[key] = max(_decimals_of(scale), _decimals_of(offset))
    return found


def _words32(point: Point, raw: Sequence[int] | Sequence[bool]) -> int:
    first, second = int(raw[0]), int(raw[1])
    if point.word_order == "big":
        return (first << 16) | second
    return (second << 16) | first


def _scaled(point: Point, raw: int) -> Value:
    scale, offset = point.scale, point.offset
    if scale == 1.0 and offset == 0.0:
        return raw
    return round(raw * scale + offset, value_decimals(scale, offset))


def decode_point(point: Point, raw: Sequence[int] | Sequence[bool]) -> Value:
    """Turn the point's own words (or single bit) into its engineering value."""
    if point.is_bit:
        return bool(raw[0])
    kind = point.type
    if point.bit is not None:
        flag = (int(raw[0]) >> point.bit) & 1
        return bool(flag) if kind == "bool" else _scaled(point, flag)
    if kind == "uint16":
        return _scaled(point, int(raw[0]))
    if kind == "int16":
        word = int(raw[0])
        return _scaled(point, word - 0x10000 if word & 0x8000 else word)
    whole = _words32(point, raw)
    if kind == "uint32":
        return _scaled(point, whole)
    if kind == "int32":
        return _scaled(point, whole - 0x1_0000_0000 if whole & 0x8000_0000 else whole)
    number: float = _FLOAT.unpack(whole.to_bytes(4, "big"))[0]
    if point.scale == 1.0 and point.offset == 0.0:
        return number
    return number * point.scale + point.offset


def _raw_int(point: Point, value: Value) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        raise EncodeError(f"{point.name}: {value} is not finite")
    raw = round((float(value) - point.offset) / point.scale)
    low, high = _RANGES[point.type]
    if not low <= raw <= high:
        raise EncodeError(f"{point.name}: {value} is outside {point.type} after scaling")
    return raw


def _split32(point: Point, whole: int) -> list[int]:
    high, low = (whole >> 16) & 0xFFFF, whole & 0xFFFF
    return [high, low] if point.word_order == "big" else [low, high]


def encode_point(point: Point, value: Value) -> list[int] | list[bool]:
    """The words (or single bit) that make ``decode_point`` return ``value``.

    A ``bit`` point encodes as a word with only its own bit possibly set; callers that
    lay out several bit points sharing a register OR their words together.
    """
    if point.is_bit:
        return [bool(value)]
    if point.bit is not None:
        flag = bool(value) if point.type == "bool" else _raw_int(point, value)
        if flag not in (0, 1):
            raise EncodeError(f"{point.name}: a bit holds 0 or 1, not {value}")
        return [int(flag) << point.bit]
    if point.type == "float32":
        number = (float(value) - point.offset) / point.scale
        try:
            packed = _FLOAT.pack(number)
        except OverflowError as exc:
            raise EncodeError(f"{point.name}: {value} overflows float32") from exc
        return _split32(point, int.from_bytes(packed, "big"))
    raw = _raw_int(point, value)
    if point.type in ("int16", "uint16"):
        return [raw & 0xFFFF]
    return _split32(point, raw & 0xFFFF_FFFF)
