"""Sans-IO framing of NMEA-0183-style sentences: ``$NAME,f1,f2,...*HH\\r\\n``.

Bytes go in with :meth:`LineFramer.receive_data`, sentences come out of
:meth:`LineFramer.next_sentence`. Nothing here raises on what the line delivers:
noise, bad checksums, cut and overlong lines are counted in :class:`FramerStats`
and dropped, and the framer resynchronises on the next ``$``. Memory stays bounded:
at most ``max_line`` bytes of a partial sentence and ``max_pending`` parsed ones.

HH is the XOR of every byte between ``$`` and ``*``, as two hex digits.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum

from drivers.errors import FrameError
from drivers.profiles import LineField, LineFormat, Value

START = 0x24  # '$'
_CHECK = 0x2A  # '*'
_NEWLINE = 0x0A
_FORBIDDEN = frozenset("$*,\r\n")
_LINE_END = re.compile(rb"[\n$]")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _State(Enum):
    HUNT = "hunt"  # outside a sentence: everything up to '$' is noise
    COLLECT = "collect"  # after '$', buffering up to max_line bytes
    SKIP = "skip"  # inside an overlong line, discarding up to its end


@dataclass(frozen=True, slots=True)
class Sentence:
    """One checksum-valid sentence: its name and its raw (text) fields."""

    name: str
    fields: tuple[str, ...]


@dataclass(slots=True)
class FramerStats:
    """What the framer saw since it was created."""

    sentences: int = 0
    garbage_bytes: int = 0  # bytes outside any sentence (line noise)
    bad_checksum: int = 0
    overlong: int = 0  # lines longer than max_line, dropped
    malformed: int = 0  # ended by a newline but not ``NAME...*HH`` in printable ASCII
    truncated: int = 0  # cut short by a new ``$`` before their newline
    dropped: int = 0  # good sentences discarded because nobody read them in time

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def checksum(body: bytes) -> int:
    """XOR of every byte of ``body`` (the part between ``$`` and ``*``)."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def encode_sentence(name: str, fields: Sequence[str]) -> bytes:
    """The wire form of a sentence, checksum and CRLF included.

    Raises ``ValueError`` for an empty name or for text that could not be framed
    back (non-ASCII, control characters, or one of ``$ * ,`` / line breaks).
    """
    if not name:
        raise ValueError("sentence name must not be empty")
    for part in (name, *fields):
        if not part.isascii() or not part.isprintable() or _FORBIDDEN.intersection(part):
            raise ValueError(f"cannot frame {part!r}: printable ASCII without '$*,' only")
    body = ",".join((name, *fields)).encode("ascii")
    return b"$%s*%02X\r\n" % (body, checksum(body))


class LineFramer:
    """Turns a byte stream into :class:`Sentence` objects (h11-style, no I/O)."""

    def __init__(self, *, max_line: int = 256, max_pending: int = 64) -> None:
        if max_line < 8 or max_pending < 1:
            raise ValueError("max_line must be >= 8 and max_pending >= 1")
        self.max_line = max_line
        self.stats = FramerStats()
        self._line = bytearray()  # bytes after '$' of the sentence being received
        self._state = _State.HUNT
        self._pending: deque[Sentence] = deque()
        self._max_pending = max_pending

    @property
    def buffered(self) -> int:
        """Bytes of the partial sentence held (never more than ``max_line``)."""
        return len(self._line)

    @property
    def pending(self) -> int:
        """Parsed sentences waiting for :meth:`next_sentence`."""
        return len(self._pending)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the line, in chunks of any size (the result does not depend on it)."""
        pos, size = 0, len(data)
        while pos < size:
            if self._state is _State.HUNT:
                pos = self._hunt(data, pos)
            elif self._state is _State.COLLECT:
                pos = self._collect(data, pos)
            else:
                pos = self._skip(data, pos)

    def next_sentence(self) -> Sentence | None:
        """The oldest complete sentence, or ``None`` when more data is needed."""
        return self._pending.popleft() if self._pending else None

    def _hunt(self, data: bytes, pos: int) -> int:
        start = data.find(b"$", pos)
        if start < 0:
            self.stats.garbage_bytes += len(data) - pos
            return len(data)
        self.stats.garbage_bytes += start - pos
        self._state = _State.COLLECT
        self._line.clear()
        return start + 1

    def _collect(self, data: bytes, pos: int) -> int:
        end = _line_end(data, pos)
        if len(self._line) + (end - pos) > self.max_line:
            # Drop it now rather than buffer it; its tail is skipped, not counted as noise.
            self.stats.overlong += 1
            self._state = _State.SKIP
            self._line.clear()
            return end
        self._line += data[pos:end]
        if end == len(data):
            return end
        if data[end] == START:
            self.stats.truncated += 1
            self._line.clear()
        else:
            self._state = _State.HUNT
            self._finish(bytes(self._line))
            self._line.clear()
        return end + 1

    def _skip(self, data: bytes, pos: int) -> int:
        end = _line_end(data, pos)
        if end == len(data):
            return end
        self._state = _State.HUNT
        # A '$' starts the next sentence, so leave it for _hunt; a newline ends the line.
        return end if data[end] == START else end + 1

    def _finish(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        star = len(line) - 3
        if star < 1 or line[star] != _CHECK or not _is_printable_ascii(line):
            self.stats.malformed += 1
            return
        digits = line[star + 1 :]
        if not _HEX.issuperset(digits):
            self.stats.malformed += 1
            return
        expected = int(digits, 16)
        body = line[:star]
        if checksum(body) != expected:
            self.stats.bad_checksum += 1
            return
        name, *fields = body.decode("ascii").split(",")
        if not name:
            self.stats.malformed += 1
            return
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            self.stats.dropped += 1
        self._pending.append(Sentence(name, tuple(fields)))
        self.stats.sentences += 1


def _line_end(data: bytes, pos: int) -> int:
    """Index of the first newline or '$' at or after ``pos``, else ``len(data)``."""
    found = _LINE_END.search(data, pos)
    return len(data) if found is None else found.start()


def _is_printable_ascii(line: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in line)


def parse_values(fmt: LineFormat, sentence: Sentence) -> dict[str, Value]:
    """Engineering values of ``sentence`` as described by the profile's ``[line]`` table.

    Raises :class:`FrameError` for another sentence name, too few fields, or a field
    that is not a finite number of its declared type. Extra trailing fields are
    ignored so a firmware that appends fields keeps working.
    """
    if sentence.name != fmt.sentence:
        raise FrameError(f"expected sentence {fmt.sentence}, got {sentence.name!r}")
    needed = max(f.index for f in fmt.fields)
    if len(sentence.fields) < needed:
        raise FrameError(
            f"{fmt.sentence}: {len(sentence.fields)} fields, profile needs {needed}"
        )
    return {f.name: _convert(f, sentence.fields[f.index - 1]) for f in fmt.fields}


def _convert(field: LineField, raw: str) -> Value:
    text = raw.strip()
    if "_" in text:  # int()/float() accept digit separators; no sensor sends them
        raise FrameError(f"field {field.name}: {raw!r} is not a {field.type}")
    try:
        number: float | int = int(text, 10) if field.type == "int" else float(text)
    except ValueError:
        raise FrameError(f"field {field.name}: {raw!r} is not a {field.type}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise FrameError(f"field {field.name}: {raw!r} is not finite")
    if field.scale == 1.0 and field.offset == 0.0:
        return number
    return number * field.scale + field.offset
