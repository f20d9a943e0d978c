"""A serial line sensor that pushes sentences: pyserial-asyncio-fast feeding :mod:`framing`.

:class:`LineSensorPort` keeps the port open for as long as :meth:`LineSensorPort.run`
runs, keeps only the latest good reading (the sensor pushes faster than anyone needs
it, and the disk, not memory, is the queue), and reopens the port with jittered
exponential backoff when the device or adapter goes away. It logs transitions
(opened, lost, reopened, silent), not every bad byte: those are counted in ``stats``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import serial
import serial_asyncio_fast
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_random,
)

from drivers.errors import FrameError
from drivers.profiles import LineFormat, Value
from drivers.serial.framing import LineFramer, parse_values

log = logging.getLogger(__name__)

# Opening a port fails with these while a USB adapter is unplugged or a pty is gone;
# anything else (a bad baud rate, say) is a configuration error and must surface.
_TRANSIENT = (serial.SerialException, OSError)


class _Link(asyncio.Protocol):
    """Forwards bytes to the port and resolves ``lost`` when the transport closes."""

    def __init__(self, port: LineSensorPort, lost: asyncio.Future[Exception | None]) -> None:
        self._port = port
        self._lost = lost

    def data_received(self, data: bytes) -> None:
        self._port._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(exc)


class LineSensorPort:
    """Reads one sentence-pushing sensor on one serial port, forever."""

    def __init__(
        self,
        path: str,
        fmt: LineFormat,
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        silence_timeout: float = 10.0,
        max_line: int = 256,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self._serial_args: dict[str, object] = {
            "baudrate": baudrate, "parity": parity, "stopbits": stopbits, "bytesize": bytesize,
        }
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._silence_timeout = silence_timeout
        self._framer = LineFramer(max_line=max_line)
        self._latest: tuple[dict[str, Value], float] | None = None
        self._connected = False
        self._last_rx = time.monotonic()
        self._silent = False
        self._parse_ok = True
        self._counts = {
            "opens": 0, "reopens": 0, "open_failures": 0, "lost": 0,
            "parse_errors": 0, "silences": 0,
        }

    @property
    def connected(self) -> bool:
        """True while the port is open (the device may still be silent: see ``stats``)."""
        return self._connected

    @property
    def stats(self) -> dict[str, int]:
        """Framer counters plus opens, reopens, open failures, losses, parse errors, silences."""
        return {**self._framer.stats.as_dict(), **self._counts}

    def latest(self) -> tuple[dict[str, Value], float] | None:
        """The last good values and their wall-clock (``time.time()``) stamp, if any."""
        if self._latest is None:
            return None
        values, stamp = self._latest
        return dict(values), stamp

    async def run(self) -> None:
        """Open the port and read until cancelled, reopening it whenever it is lost."""
        flaps = 0
        try:
            while True:
                transport, lost = await self._open_with_backoff()
                opened_at = time.monotonic()
                try:
                    exc = await self._watch(lost)
                finally:
                    self._connected = False
                    if not transport.is_closing():
                        transport.abort()
                self._counts["lost"] += 1
                log.warning("event=line_port_lost path=%s error=%r", self.path, exc)
                # A port that opens and fails at once would otherwise be reopened in a spin.
                flaps = flaps + 1 if time.monotonic() - opened_at < self._backoff_max else 0
                await asyncio.sleep(self._flap_delay(flaps))
        finally:
            self._connected = False

    def _flap_delay(self, flaps: int) -> float:
        if flaps == 0:
            return 0.0
        ceiling = min(self._backoff_max, self._backoff_initial * 2 ** min(flaps, 30))
        return random.uniform(ceiling / 2, ceiling)

    async def _open_with_backoff(
        self,
    ) -> tuple[asyncio.Transport, asyncio.Future[Exception | None]]:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential(multiplier=self._backoff_initial, max=self._backoff_max)
            + wait_random(0, self._backoff_initial),
            stop=stop_never,
            before_sleep=self._open_failed,
            reraise=True,
        )
        opened = None
        async for attempt in retrying:
            with attempt:
                opened = await self._open()
        assert opened is not None  # reraise=True: the loop ends only after a success
        first = self._counts["opens"] == 0
        self._counts["opens"] += 1
        self._connected = True
        if first:
            log.info("event=line_port_opened path=%s", self.path)
        else:
            self._counts["reopens"] += 1
            log.info("event=line_port_reopened path=%s reopens=%d", self.path,
                     self._counts["reopens"])
        return opened

    async def _open(self) -> tuple[asyncio.Transport, asyncio.Future[Exception | None]]:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Exception | None] = loop.create_future()
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: _Link(self, lost), self.path, **self._serial_args
        )
        self._last_rx = time.monotonic()
        self._silent = False
        return transport, lost

    def _open_failed(self, state: RetryCallState) -> None:
        self._counts["open_failures"] += 1
        error = state.outcome.exception() if state.outcome is not None else None
        # One warning per outage; the retries that follow are expected.
        level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
        log.log(level, "event=line_port_open_failed path=%s attempt=%d error=%r",
                self.path, state.attempt_number, error)

    async def _watch(self, lost: asyncio.Future[Exception | None]) -> Exception | None:
        """Wait for the transport to close, flagging a silent device on the way."""
        while not lost.done():
            remaining = self._silence_timeout - (time.monotonic() - self._last_rx)
            if remaining <= 0:
                if not self._silent:
                    self._silent = True
                    self._counts["silences"] += 1
                    log.warning("event=line_port_silent path=%s seconds=%.1f",
                                self.path, self._silence_timeout)
                remaining = self._silence_timeout
            await asyncio.wait({lost}, timeout=remaining)
        return lost.result()

    def _on_data(self, data: bytes) -> None:
        self._last_rx = time.monotonic()
        if self._silent:
            self._silent = False
            log.info("event=line_port_data_resumed path=%s", self.path)
        self._framer.receive_data(data)
        while (sentence := self._framer.next_sentence()) is not None:
            try:
                values = parse_values(self.fmt, sentence)
            except FrameError as exc:
                self._counts["parse_errors"] += 1
                if self._parse_ok:
                    self._parse_ok = False
                    log.warning("event=line_parse_failed path=%s error=%s", self.path, exc)
                continue
            if not self._parse_ok:
                self._parse_ok = True
                log.info("event=line_parse_recovered path=%s", self.path)
            self._latest = (values, time.time())
