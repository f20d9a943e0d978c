"""The laptop's frame codec (provisioning.serial_proto): what it encodes it decodes, whatever
else shares the line and however the reads split it; a damaged frame is never taken for
another one."""

from __future__ import annotations

import json
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning.serial_proto import MAGIC, FrameDecoder, encode

# JSON values as the protocol carries them (text includes spaces, newlines, quotes, non-ASCII:
# Vietnamese site names, Wi-Fi passwords).
_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
frames = st.fixed_dictionaries({"id": st.integers(0, 2**31), "op": st.text(min_size=1, max_size=12)},
                               optional={"args": _json, "detail": st.text(max_size=60)})
# What else a node's console carries: log lines, a banner, REPL noise, a line that starts like a
# frame but is not one. No newline inside; \r endings happen (cooked consoles).
noise_line = st.one_of(
    st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=80),
    st.builds(lambda k, v: f"event={k} value={v}", st.text("abc_", min_size=1), st.integers()),
    st.just(">>> "), st.just("MicroPython v1.24.1 on 2024-11-29; Generic ESP32 module with ESP32"),
    st.just("UEP1 not a frame"), st.just("UEP1 {} 00000000"),
).map(lambda s: s.encode("utf-8"))


def _feed_in_pieces(decoder: FrameDecoder, stream: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        out += decoder.feed(stream[prev:cut])
        prev = cut
    return out


@given(frames)
def test_round_trip(obj: dict[str, Any]) -> None:
    line = encode(obj)
    assert line.startswith(MAGIC) and line.endswith(b"\n") and line.count(b"\n") == 1
    body, crc = line[len(MAGIC):-1].rsplit(b" ", 1)
    assert crc == b"%08x" % zlib.crc32(body)
    assert json.loads(body) == obj
    assert FrameDecoder().feed(line) == [obj]


@given(st.lists(st.one_of(frames.map(lambda f: ("frame", f)), noise_line.map(lambda n: ("noise", n))),
                max_size=12),
       st.lists(st.integers(0, 10**6), max_size=20), st.booleans())
@settings(max_examples=300)
def test_noise_and_split_reads_yield_exactly_the_frames(items: list[tuple[str, Any]], cuts: list[int],
                                                        crlf: bool) -> None:
    stream = b""
    expected = []
    for kind, value in items:
        if kind == "frame":
            line = encode(value)
            expected.append(value)
        else:
            line = value + b"\n"
        stream += line.replace(b"\n", b"\r\n") if crlf else line
    decoder = FrameDecoder()
    assert _feed_in_pieces(decoder, stream, cuts) == expected
    assert decoder.noise_lines == sum(1 for kind, _ in items if kind == "noise") - decoder.bad_crc - decoder.bad_frames


@given(st.lists(frames, min_size=1, max_size=6), st.data())
@settings(max_examples=300)
def test_damaged_bytes_never_yield_a_wrong_frame(objs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode(o) for o in objs))
    # Up to three bytes changed anywhere (newlines included: lines merge or split).
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(stream) - 1))
        stream[pos] = (stream[pos] + data.draw(st.integers(1, 255))) % 256  # a different byte
    got = _feed_in_pieces(FrameDecoder(), bytes(stream), data.draw(st.lists(st.integers(0, 10**6), max_size=8)))
    # Whatever survives is one of the frames sent, in order; nothing is made up.
    remaining = list(objs)
    for frame in got:
        assert frame in remaining, frame
        remaining = remaining[remaining.index(frame) + 1:]


def test_counters_say_what_the_line_carried() -> None:
    good = encode({"id": 1, "ok": True})
    body, crc = good[len(MAGIC):-1].rsplit(b" ", 1)
    d = FrameDecoder()
    stream = (b"event=node_started src=x\n" + MAGIC + body.replace(b"1", b"2") + b" " + crc + b"\n"
              + MAGIC + b"[1,2] " + b"%08x" % zlib.crc32(b"[1,2]") + b"\n" + MAGIC + b"{}\n" + good + b">>> ")
    assert d.feed(stream) == [{"id": 1, "ok": True}]
    assert (d.noise_lines, d.bad_crc, d.bad_frames) == (1, 1, 2)
    assert list(d.noise) == [b"event=node_started src=x"] and d.partial == b">>> "


def test_a_line_without_end_is_dropped_not_kept() -> None:
    d = FrameDecoder(max_line=1000)
    assert d.feed(b"\xff" * 5000) == []  # a wrong baud rate: bytes, never a newline
    assert d.oversize == 1 and len(d.partial) == 0
    frame = {"id": 7, "op": "hello"}
    assert d.feed(b"\xfe" * 10 + b"\n" + encode(frame)) == [frame]  # the tail of the long line goes too
