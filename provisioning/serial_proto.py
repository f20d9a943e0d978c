"""The provisioning protocol's line frames, laptop side (sans-IO).

One frame per line, in both directions (docs/provisioning-protocol.md)::

    UEP1 <compact JSON object> <crc32 of the JSON bytes as 8 lower-case hex>\\n

Everything else on the line (the boot banner, the node's ``event=...`` log lines, a REPL) is
not ours: it is counted and kept for diagnosis, never taken for a frame. The node has its own
codec (``firmware/ue/provision.py``); the two share this format, not code.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from typing import Any

MAGIC = b"UEP1 "
# A line longer than this is not a frame the node can send; kept from growing without end when
# a wrong baud rate turns the line into bytes without newlines.
MAX_LINE = 65536


def crc32_hex(body: bytes) -> bytes:
    return b"%08x" % (zlib.crc32(body) & 0xFFFFFFFF)


def encode(obj: dict[str, Any]) -> bytes:
    """One frame: ``obj`` as compact JSON (no newline can occur in it), its CRC, newline.

    ASCII only (non-ASCII text as \\u escapes, which MicroPython's json reads): a serial line
    and a console carry it unharmed, and text that is not valid Unicode (a command-line argument
    with undecodable bytes becomes lone surrogates) still encodes instead of crashing."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")
    return MAGIC + body + b" " + crc32_hex(body) + b"\n"


class FrameDecoder:
    """Feed it whatever the serial port returned, in any pieces; get back the frames completed.

    Counters (for telling the technician what the line carries when no answer comes):
    ``noise_lines`` lines that are not frames, ``bad_crc`` frames damaged on the way,
    ``bad_frames`` frames with a correct CRC whose content is not a JSON object, ``oversize``
    lines longer than ``max_line`` (dropped). ``noise`` keeps the last ``keep_noise`` noise
    lines (without their newline) for the same purpose.
    """

    def __init__(self, *, max_line: int = MAX_LINE, keep_noise: int = 200) -> None:
        self.max_line = max_line
        self.noise_lines = 0
        self.bad_crc = 0
        self.bad_frames = 0
        self.oversize = 0
        self.noise: deque[bytes] = deque(maxlen=keep_noise)
        self._buf = bytearray()
        self._skipping = False  # inside a line already counted as oversize

    @property
    def partial(self) -> bytes:
        """What arrived after the last newline (a REPL prompt has none)."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                self._append(data[start:])
                return out
            self._append(data[start:nl])
            if self._skipping:
                self._skipping = False
            else:
                frame = self._line(bytes(self._buf))
                if frame is not None:
                    out.append(frame)
            self._buf.clear()
            start = nl + 1

    def _append(self, piece: bytes) -> None:
        if self._skipping:
            return
        self._buf += piece
        if len(self._buf) > self.max_line:
            self.oversize += 1
            self._buf.clear()
            self._skipping = True

    def _line(self, line: bytes) -> dict[str, Any] | None:
        line = line.rstrip(b"\r")
        if not line.startswith(MAGIC):
            self.noise_lines += 1
            self.noise.append(line)
            return None
        body, sep, crc = line[len(MAGIC):].rpartition(b" ")
        if not sep or len(crc) != 8:
            self.bad_frames += 1
            return None
        if crc.lower() != crc32_hex(body):
            self.bad_crc += 1
            return None
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.bad_frames += 1
            return None
        if not isinstance(obj, dict):
            self.bad_frames += 1
            return None
        return obj
