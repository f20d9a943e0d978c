"""drivers.serial.framing: byte vectors, then properties (noise, chunking, round trips)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import FrameError
from drivers.profiles import LineField, LineFormat, load_profile
from drivers.serial.framing import LineFramer, Sentence, encode_sentence, parse_values

PROFILE = Path(__file__).resolve().parents[2] / "config" / "profiles" / "rain-gauge.toml"
VECTOR = b"$UERGA,12.40,3.20,41.5,3.71,0*6B\r\n"
DECODED = Sentence("UERGA", ("12.40", "3.20", "41.5", "3.71", "0"))


def feed(framer: LineFramer, data: bytes) -> list[Sentence]:
    framer.receive_data(data)
    out = []
    while (sentence := framer.next_sentence()) is not None:
        out.append(sentence)
    return out


# -- byte vectors ---------------------------------------------------------------------


def test_known_vector_encodes_and_decodes() -> None:
    assert encode_sentence("UERGA", ["12.40", "3.20", "41.5", "3.71", "0"]) == VECTOR
    framer = LineFramer()
    assert feed(framer, VECTOR) == [DECODED]
    assert framer.stats.sentences == 1


def test_partial_sentence_needs_more_data() -> None:
    framer = LineFramer()
    assert feed(framer, VECTOR[:10]) == []
    assert framer.buffered == 9
    assert len(feed(framer, VECTOR[10:])) == 1
    assert framer.buffered == 0


def test_lowercase_checksum_and_bare_newline_are_accepted() -> None:
    framer = LineFramer()
    assert len(feed(framer, b"$UERGA,12.40,3.20,41.5,3.71,0*6b\n")) == 1


def test_bad_checksum_is_counted_and_dropped() -> None:
    framer = LineFramer()
    assert feed(framer, VECTOR.replace(b"*6B", b"*6C") + VECTOR) == [DECODED]
    assert (framer.stats.bad_checksum, framer.stats.sentences) == (1, 1)


@pytest.mark.parametrize(
    "line",
    [b"$UERGA,1,2\r\n", b"$UERGA,1*6\r\n", b"$UERGA,1*G1\r\n", b"$*00\r\n", b"$UE\xffRGA*00\r\n",
     b"$UERGA,1* 1\r\n"],
)
def test_malformed_lines_are_counted(line: bytes) -> None:
    framer = LineFramer()
    assert feed(framer, line + VECTOR) == [DECODED]
    assert framer.stats.malformed == 1


def test_noise_truncation_and_overlong_lines() -> None:
    framer = LineFramer(max_line=40)
    data = b"\x00\xffnoise\r\n" + VECTOR[:12] + b"$" + b"A" * 100 + b"\r\n" + VECTOR
    assert len(feed(framer, data)) == 1
    stats = framer.stats
    assert (stats.garbage_bytes, stats.truncated, stats.overlong) == (9, 1, 1)
    assert (stats.bad_checksum, stats.malformed, stats.sentences) == (0, 0, 1)


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_sentence_right_after_an_overlong_line_is_kept(cut: int) -> None:
    framer = LineFramer(max_line=40)
    data = b"$" + b"A" * 100 + VECTOR
    got = []
    for i in range(0, len(data), cut):
        got += feed(framer, data[i : i + cut])
    assert got == [DECODED]
    assert (framer.stats.overlong, framer.stats.garbage_bytes) == (1, 0)


def test_unread_sentences_are_capped() -> None:
    framer = LineFramer(max_pending=3)
    framer.receive_data(VECTOR * 5)
    assert framer.pending == 3
    assert framer.stats.dropped == 2


@pytest.mark.parametrize("bad", ["A$B", "A*", "A,B", "A\r", "é", "A\tB"])
def test_encode_rejects_unframeable_text(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_sentence("UERGA", [bad])
    with pytest.raises(ValueError):
        encode_sentence(bad, [])


def test_encode_rejects_empty_name() -> None:
    with pytest.raises(ValueError):
        encode_sentence("", ["1"])


# -- parse_values against the shipped rain-gauge profile ---------------------------------


def rain_format() -> LineFormat:
    fmt = load_profile(PROFILE).line
    assert fmt is not None
    return fmt


def test_parse_values_of_rain_gauge() -> None:
    sentence = feed(LineFramer(), VECTOR)[0]
    values = parse_values(rain_format(), sentence)
    assert values == {
        "rain_total": 12.4, "rain_rate": 3.2, "water_level": 41.5, "battery": 3.71, "status": 0,
    }
    assert isinstance(values["status"], int)


@pytest.mark.parametrize(
    "sentence",
    [
        Sentence("UERGB", ("1", "2", "3", "4", "0")),  # another sentence
        Sentence("UERGA", ("1", "2", "3", "4")),  # too few fields
        Sentence("UERGA", ("1", "x", "3", "4", "0")),  # not a number
        Sentence("UERGA", ("1", "2", "3", "4", "0.5")),  # not an int
        Sentence("UERGA", ("1", "nan", "3", "4", "0")),  # not finite
        Sentence("UERGA", ("1", "", "3", "4", "0")),  # empty
        Sentence("UERGA", ("1_0", "2", "3", "4", "0")),  # digit separator
    ],
)
def test_parse_values_rejects(sentence: Sentence) -> None:
    with pytest.raises(FrameError):
        parse_values(rain_format(), sentence)


def test_parse_values_applies_scale_and_offset_and_ignores_extra_fields() -> None:
    fmt = LineFormat(sentence="ABC", fields=(
        LineField(name="t", index=2, scale=0.1, offset=-40.0),
        LineField(name="n", index=1, type="int"),
    ))
    values = parse_values(fmt, Sentence("ABC", ("7", "650", "extra")))
    assert values["n"] == 7
    assert values["t"] == pytest.approx(25.0)


# -- properties ------------------------------------------------------------------------

field_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*,"),
    max_size=12,
)
sentence_st = st.builds(
    Sentence,
    name=st.from_regex(r"[A-Z][A-Z0-9]{0,7}", fullmatch=True),
    fields=st.lists(field_text, max_size=8).map(tuple),
)
noise = st.binary(max_size=40).map(lambda b: b.replace(b"$", b""))


@given(st.binary(max_size=4000), st.integers(min_value=8, max_value=64))
def test_random_bytes_never_raise_and_stay_bounded(data: bytes, max_line: int) -> None:
    framer = LineFramer(max_line=max_line, max_pending=4)
    for i in range(0, len(data), 97):
        framer.receive_data(data[i : i + 97])
        assert framer.buffered <= max_line
        assert framer.pending <= 4


@given(st.lists(st.tuples(noise, sentence_st), max_size=20), noise)
def test_sentences_survive_interleaved_noise(
    parts: list[tuple[bytes, Sentence]], tail: bytes
) -> None:
    stream = b"".join(junk + encode_sentence(s.name, s.fields) for junk, s in parts) + tail
    framer = LineFramer(max_pending=64)
    assert feed(framer, stream) == [s for _, s in parts]
    assert framer.stats.garbage_bytes == sum(len(j) for j, _ in parts) + len(tail)


@settings(max_examples=200)
@given(
    st.lists(st.one_of(sentence_st.map(lambda s: encode_sentence(s.name, s.fields)),
                       st.binary(max_size=60)), max_size=20),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
)
def test_chunking_does_not_change_the_result(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    whole = LineFramer(max_line=48, max_pending=64)
    expected = feed(whole, stream)
    chunked = LineFramer(max_line=48, max_pending=64)
    got: list[Sentence] = []
    pos, i = 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        got += feed(chunked, stream[pos : pos + size])
        pos, i = pos + size, i + 1
    assert got == expected
    assert chunked.stats == whole.stats


numbers = st.one_of(
    st.integers(min_value=-(10**9), max_value=10**9),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@given(st.lists(numbers, min_size=1, max_size=10))
def test_encode_then_parse_round_trips(values: list[int | float]) -> None:
    fmt = LineFormat(sentence="RT", fields=tuple(
        LineField(name=f"v{i}", index=i + 1, type="int" if isinstance(v, int) else "float")
        for i, v in enumerate(values)
    ))
    wire = encode_sentence("RT", [repr(v) for v in values])
    (sentence,) = feed(LineFramer(max_line=1024), wire)
    parsed = parse_values(fmt, sentence)
    assert list(parsed.values()) == values
    assert all(type(p) is type(v) for p, v in zip(parsed.values(), values, strict=True))
    assert all(math.isfinite(p) for p in parsed.values())
