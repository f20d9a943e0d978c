"""Register decoding/encoding: byte-exact vectors and round-trip properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.registermap import EncodeError, decode_point, encode_point
from drivers.profiles import Point

INT_TYPES = ("int16", "uint16", "int32", "uint32")
SCALES = (1.0, 0.1, 0.01, 0.001, 0.5, 10.0)
OFFSETS = (0.0, -40.0, 273.15)


def point(type_: str = "uint16", **kw: object) -> Point:
    table = kw.pop("table", "input")
    return Point.model_validate({"name": "p", "table": table, "address": 0, "type": type_, **kw})


# --- vectors -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("type_", "order", "raw", "expected"),
    [
        ("uint16", "big", [0xFFFF], 65535),
        ("int16", "big", [0xFFFF], -1),
        ("int16", "big", [0x8000], -32768),
        ("uint32", "big", [0x0001, 0x0002], 0x0001_0002),
        ("uint32", "little", [0x0001, 0x0002], 0x0002_0001),
        ("int32", "big", [0xFFFF, 0xFFFE], -2),
        ("int32", "little", [0xFFFE, 0xFFFF], -2),
        ("float32", "big", [0x4148, 0x0000], 12.5),
        ("float32", "little", [0x0000, 0x4148], 12.5),
    ],
)
def test_decode_vectors(type_: str, order: str, raw: list[int], expected: float) -> None:
    p = point(type_, word_order=order)
    value = decode_point(p, raw)
    assert value == expected
    assert type(value) is (float if type_ == "float32" else int)
    assert encode_point(p, value) == raw


def test_scaled_values_are_clean_floats() -> None:
    assert decode_point(point("uint16", scale=0.1), [2301]) == 230.1
    assert decode_point(point("int16", scale=0.001), [0xFC18]) == -1.0
    assert decode_point(point("uint32", scale=0.01, word_order="little"), [0x86A0, 0x0001]) == 1000.0
    assert decode_point(point("uint16", scale=0.1, offset=-40.0), [0]) == -40.0
    assert type(decode_point(point("uint16", scale=1.0), [7])) is int


def test_bits_of_a_register() -> None:
    word = [0b1010]
    assert decode_point(point("bool", bit=1), word) is True
    assert decode_point(point("bool", bit=2), word) is False
    assert decode_point(point("uint16", bit=3), word) == 1
    assert encode_point(point("bool", bit=3), True) == [0b1000]
    assert encode_point(point("bool", bit=3), False) == [0]


def test_coils_and_discrete_inputs() -> None:
    coil = point("bool", table="coil")
    assert decode_point(coil, [True]) is True
    assert decode_point(coil, [False]) is False
    assert encode_point(coil, 1) == [True]


@pytest.mark.parametrize(
    ("type_", "value"),
    [("uint16", -1), ("uint16", 65536), ("int16", 40000), ("uint32", -0.6), ("int32", 2**31),
     ("int16", math.nan)],
)
def test_encode_rejects_unrepresentable(type_: str, value: float) -> None:
    with pytest.raises(EncodeError):
        encode_point(point(type_), value)


def test_encode_rejects_non_bit_value_for_bit_point() -> None:
    with pytest.raises(EncodeError):
        encode_point(point("uint16", bit=0), 2)


# --- properties --------------------------------------------------------------------------

words = st.integers(0, 0xFFFF)


@given(
    type_=st.sampled_from(INT_TYPES), order=st.sampled_from(("big", "little")),
    scale=st.sampled_from(SCALES), offset=st.sampled_from(OFFSETS),
    raw=st.lists(words, min_size=2, max_size=2),
)
def test_integer_raw_round_trip(type_: str, order: str, scale: float, offset: float,
                                raw: list[int]) -> None:
    p = point(type_, word_order=order, scale=scale, offset=offset)
    own = raw[: p.width]
    value = decode_point(p, own)
    assert encode_point(p, value) == own
    if scale == 1.0 and offset == 0.0:
        assert type(value) is int
    else:
        assert type(value) is float


@given(
    type_=st.sampled_from(INT_TYPES), scale=st.sampled_from(SCALES),
    offset=st.sampled_from(OFFSETS), data=st.data(),
)
def test_integer_value_round_trip(type_: str, scale: float, offset: float,
                                  data: st.DataObject) -> None:
    low, high = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1),
                 "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1)}[type_]
    p = point(type_, scale=scale, offset=offset)
    value = data.draw(st.floats(low * scale + offset, high * scale + offset))
    decoded = decode_point(p, encode_point(p, value))
    assert isinstance(decoded, int | float)
    assert abs(decoded - value) <= scale / 2 + 1e-9 * max(1.0, abs(value))


@given(order=st.sampled_from(("big", "little")), raw=st.lists(words, min_size=2, max_size=2))
def test_float32_raw_round_trip(order: str, raw: list[int]) -> None:
    p = point("float32", word_order=order)
    value = decode_point(p, raw)
    if math.isnan(value):
        return  # NaN payloads are not preserved by Python floats; nothing to compare
    assert encode_point(p, value) == raw


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False),
       order=st.sampled_from(("big", "little")))
def test_float32_value_round_trip(value: float, order: str) -> None:
    p = point("float32", word_order=order)
    assert decode_point(p, encode_point(p, value)) == value


@given(bits=st.lists(st.booleans(), min_size=16, max_size=16))
def test_bit_points_combine_into_one_register(bits: list[bool]) -> None:
    points = [point("bool", bit=i) for i in range(16)]
    word = 0
    for p, flag in zip(points, bits, strict=True):
        word |= int(encode_point(p, flag)[0])
    assert word == sum(1 << i for i, flag in enumerate(bits) if flag)
    assert [decode_point(p, [word]) for p in points] == bits
