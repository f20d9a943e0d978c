"""A serial line that is as slow as a real one: a relay between two pty pairs that delivers
bytes no faster than the baud rate.

A pty delivers bytes instantly, so an RTU poll over socat measures only software. This
relay sits between two socat pairs (device side and master side) and models a half-duplex
RS-485 line: each frame occupies the line for ``3.5 + len(frame)`` character times (the
silent interval that must precede it, then its bytes), one frame at a time, whichever the
direction; a character is ``bits_per_char`` bits (11 for 8 data bits plus start, parity or
second stop, and stop). A frame is delivered when its last byte would have arrived.

Bytes that arrive while the line is still carrying the previous chunk of the same
direction continue that frame (no new silent interval): pymodbus writes a frame in one
call, but a pty may split it.

Run standalone::

    python bench/throttled_serial.py DEVICE_PTY MASTER_PTY --baud 9600

where DEVICE_PTY is the end of the simulator's pair and MASTER_PTY the end of the
client's pair that the relay owns. It prints ``relay ready`` and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import termios
import threading
import time
import tty

SILENT_CHARS = 3.5
DEFAULT_BITS_PER_CHAR = 11


class HalfDuplexLine:
    """When each chunk reaches the far end; shared by both directions (one bus)."""

    def __init__(self, baud: int, bits_per_char: int = DEFAULT_BITS_PER_CHAR) -> None:
        self.char_time = bits_per_char / baud
        self._lock = threading.Lock()
        self._free_at = 0.0
        self._last_dir = -1
        self.frames = 0
        self.chars = 0

    def schedule(self, direction: int, arrived: float, n: int) -> float:
        """Delivery time of ``n`` bytes that the sender wrote at ``arrived``."""
        with self._lock:
            continuing = direction == self._last_dir and arrived < self._free_at
            if continuing:
                done = self._free_at + n * self.char_time
            else:
                start = max(arrived, self._free_at)
                done = start + (SILENT_CHARS + n) * self.char_time
                self.frames += 1
            self._free_at = done
            self._last_dir = direction
            self.chars += n
            return done


def _raw(fd: int) -> None:
    # socat sets raw mode on its side; ours must not translate or echo either.
    tty.setraw(fd, termios.TCSANOW)


class Relay:
    """Two threads per direction: a reader that timestamps chunks as they arrive, and a
    writer that sleeps until each chunk's delivery time."""

    def __init__(self, device_end: str, master_end: str, baud: int,
                 bits_per_char: int = DEFAULT_BITS_PER_CHAR) -> None:
        self.line = HalfDuplexLine(baud, bits_per_char)
        self._fds = [os.open(p, os.O_RDWR | os.O_NOCTTY) for p in (device_end, master_end)]
        for fd in self._fds:
            _raw(fd)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        dev, master = self._fds
        for direction, (src, dst) in enumerate(((master, dev), (dev, master))):
            q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
            self._threads += [
                threading.Thread(target=self._reader, args=(direction, src, q), daemon=True),
                threading.Thread(target=self._writer, args=(dst, q), daemon=True),
            ]
        for t in self._threads:
            t.start()

    def _reader(self, direction: int, src: int, q: queue.Queue[tuple[float, bytes] | None]) -> None:
        while not self._stop.is_set():
            try:
                data = os.read(src, 4096)
            except OSError:
                break
            if not data:
                break
            q.put((self.line.schedule(direction, time.monotonic(), len(data)), data))
        q.put(None)

    @staticmethod
    def _writer(dst: int, q: queue.Queue[tuple[float, bytes] | None]) -> None:
        while (item := q.get()) is not None:
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                os.write(dst, data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for fd in self._fds:
            os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device_end")
    parser.add_argument("master_end")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--bits-per-char", type=int, default=DEFAULT_BITS_PER_CHAR)
    args = parser.parse_args()
    relay = Relay(args.device_end, args.master_end, args.baud, args.bits_per_char)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    relay.start()
    print("relay ready", flush=True)
    done.wait()
    relay.close()
    print(f"relay frames={relay.line.frames} chars={relay.line.chars}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
