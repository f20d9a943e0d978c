"""Thin asyncio adapter over pymodbus: run a read plan, map failures to ``drivers.errors``.

No retries here (pymodbus ``retries=0``, no background reconnect): one request costs
at most ``timeout`` and the caller decides about backoff. A lost connection is reopened
on the next call.

How pymodbus outcomes map:

* no answer at all                  -> :class:`DeviceTimeout`
* exception response                -> :class:`DeviceExceptionResponse` (``code``), except
  code 11 (0x0B, "gateway target device failed to respond"): a TCP-to-RTU gateway's way
  of saying the unit behind it timed out, so it is a :class:`DeviceTimeout`
* bytes arrived but no valid frame  -> :class:`FrameError`. pymodbus silently drops a
  frame with a bad CRC (RTU) or waits forever on a bad MBAP header (TCP) and then just
  times out, so the framer's ``decode`` is watched: a timeout after bytes that were
  dropped as invalid, or with undecodable bytes still buffered, is a frame error; a
  timeout with nothing (or only valid frames meant for another request) is a timeout.
* a frame of the wrong function or size -> :class:`FrameError`
* transport closed / cannot open    -> :class:`ConnectionLost`

RTU has no transaction id, so a response arriving after its timeout could be taken as
the answer to the next request to the same unit. After a timeout or frame error on RTU
the next request to that unit first waits out one more ``timeout`` (late bytes are
dropped, and pymodbus clears its receive buffer when it sends). Requests to other units
are not delayed: pymodbus drops frames from a unit it did not ask. A device answering
later than twice the timeout can still confuse one read; set the timeout above the
device's worst-case answer time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from drivers.errors import ConnectionLost, DeviceExceptionResponse, DeviceTimeout, FrameError
from drivers.modbus.plan import ReadBlock, decode_block
from drivers.modbus.registermap import encode_point
from drivers.profiles import Point, Value

log = logging.getLogger(__name__)

_READS: dict[str, Callable[..., ModbusPDU]] = {
    "coil": ReadCoilsRequest,
    "discrete_input": ReadDiscreteInputsRequest,
    "holding": ReadHoldingRegistersRequest,
    "input": ReadInputRegistersRequest,
}
# pymodbus closes a TCP connection after a few unanswered requests; a TCP-to-RTU gateway
# with one dead unit behind it would then drop every other unit too. Never do that.
_NEVER = 1 << 30
_GATEWAY_TARGET_NO_RESPONSE = 0x0B


class ModbusBus:
    """One Modbus endpoint (a TCP server or an RTU serial line) shared by its units."""

    def __init__(self, factory: Callable[[], Any], *, endpoint: str, timeout: float,
                 rtu: bool) -> None:
        # pymodbus binds a client to the running loop: create it on first use, not here.
        self._factory = factory
        self._client: Any = None
        self._junk = False
        self.endpoint = endpoint
        self.timeout = timeout
        self.is_rtu = rtu
        self._resync_unit = -1
        self._resync_until = 0.0
        self._was_connected = False

    @classmethod
    def tcp(cls, host: str, port: int, *, timeout: float) -> ModbusBus:
        """A Modbus TCP server (or TCP-to-RTU gateway)."""
        return cls(
            lambda: AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0,
                                         reconnect_delay=0),
            endpoint=f"tcp://{host}:{port}", timeout=timeout, rtu=False,
        )

    @classmethod
    def rtu(cls, port: str, *, baudrate: int, parity: str, stopbits: int, bytesize: int,
            timeout: float) -> ModbusBus:
        """An RS-485 line driven as Modbus RTU master."""
        return cls(
            lambda: AsyncModbusSerialClient(
                port, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize,
                timeout=timeout, retries=0, reconnect_delay=0,
            ),
            endpoint=f"rtu://{port}", timeout=timeout, rtu=True,
        )

    def _make_client(self) -> Any:
        client = self._factory()
        client.set_max_no_responses(_NEVER)
        self._client = client
        self._watch_receive()
        return client

    def _watch_receive(self) -> None:
        """Two instance-level wraps of pymodbus internals (pinned to 3.16):

        * the framer's ``decode`` notes frames it drops as invalid (bad CRC), which
          pymodbus otherwise only reports as a timeout;
        * ``callback_data`` swallows the exception pymodbus raises from inside the asyncio
          protocol callback when noise decodes to an unknown PDU, which would close a TCP
          transport; the request then ends as a frame error.
        """
        ctx = self._client.ctx
        decode, receive = ctx.framer.decode, ctx.callback_data

        def watched_decode(data: bytes) -> tuple[int, int, int, bytes]:
            used, dev_id, tid, frame = decode(data)
            if used and not frame:
                self._junk = True
            return used, dev_id, tid, frame

        def guarded_receive(data: bytes, addr: tuple[Any, ...] | None = None) -> int:
            try:
                return int(receive(data, addr))
            except ModbusException:
                self._junk = True
                return len(data)

        ctx.framer.decode = watched_decode
        ctx.callback_data = guarded_receive

    @property
    def connected(self) -> bool:
        """True while the transport is open."""
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        """Open the transport; raise :class:`ConnectionLost` if it cannot be opened."""
        if self.connected:
            return
        client = self._make_client() if self._client is None else self._client
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            raise ConnectionLost(f"{self.endpoint}: {exc}") from exc
        if not ok:
            raise ConnectionLost(f"{self.endpoint}: cannot connect")
        self._was_connected = True
        log.info("event=modbus_connected endpoint=%s", self.endpoint)

    async def close(self) -> None:
        """Close the transport (a later call reopens it)."""
        if self._client is not None:
            self._client.close()
        self._was_connected = False

    async def _ensure(self, unit: int) -> None:
        if not self.connected:
            if self._was_connected:
                self._was_connected = False
                log.warning("event=modbus_connection_lost endpoint=%s", self.endpoint)
            await self.connect()
        if unit == self._resync_unit:
            wait = self._resync_until - time.monotonic()
            self._resync_unit = -1
            if wait > 0:
                await asyncio.sleep(wait)

    async def _execute(self, unit: int, request: ModbusPDU) -> ModbusPDU:
        await self._ensure(unit)
        self._junk = False
        try:
            response: ModbusPDU = await self._client.execute(False, request)
        except ConnectionException as exc:
            raise ConnectionLost(f"{self.endpoint}: {exc}") from exc
        except ModbusIOException as exc:
            if not self.connected:
                raise ConnectionLost(f"{self.endpoint}: connection lost") from exc
            if self.is_rtu:
                self._resync_unit = unit
                self._resync_until = time.monotonic() + self.timeout
            if self._junk or self._client.ctx.recv_buffer:
                raise FrameError(f"unit {unit}: no valid response frame") from exc
            raise DeviceTimeout(f"unit {unit}: no response within {self.timeout}s") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code == _GATEWAY_TARGET_NO_RESPONSE:
                raise DeviceTimeout(f"unit {unit}: gateway reports no response (exception 11)")
            raise DeviceExceptionResponse(code, f"unit {unit}: modbus exception code {code}")
        if response.function_code != request.function_code:
            raise FrameError(f"unit {unit}: answer to function {response.function_code}")
        return response

    async def read_block(self, unit: int, block: ReadBlock) -> list[int] | list[bool]:
        """Read one block with one request; raise a :class:`DeviceError` on failure."""
        request = _READS[block.table](address=block.start, count=block.count, dev_id=unit)
        response = await self._execute(unit, request)
        if block.is_bit:
            bits = response.bits
            if len(bits) < block.count:
                raise FrameError(f"unit {unit}: {len(bits)} bits for {block.count}")
            return list(bits[: block.count])
        registers = response.registers
        if len(registers) != block.count:
            raise FrameError(f"unit {unit}: {len(registers)} registers for {block.count}")
        return list(registers)

    async def read_device(
        self, unit: int, blocks: Sequence[ReadBlock]
    ) -> tuple[dict[str, Value], dict[str, str]]:
        """Values of every block that was answered, and ``{point: reason}`` for points of
        blocks answered with an exception (``"exception:<code>"``) or holding a non-finite
        float (``"invalid"``). Timeouts, frame errors and connection loss raise."""
        values: dict[str, Value] = {}
        failed: dict[str, str] = {}
        for block in blocks:
            try:
                data = await self.read_block(unit, block)
            except DeviceExceptionResponse as exc:
                for point in block.points:
                    failed[point.name] = f"exception:{exc.code}"
                continue
            for name, value in decode_block(block, data).items():
                if type(value) is float and not math.isfinite(value):
                    failed[name] = "invalid"
                else:
                    values[name] = value
        return values, failed

    async def write_point(self, unit: int, point: Point, value: Value) -> None:
        """Write a writable coil or holding register point (one request)."""
        if not point.writable or point.table not in ("coil", "holding"):
            raise ValueError(f"point {point.name} is not writable")
        if point.bit is not None:
            raise ValueError(f"point {point.name} is one bit of a register: not writable alone")
        words = encode_point(point, value)
        request: ModbusPDU
        if point.table == "coil":
            request = WriteSingleCoilRequest(address=point.address, bits=[bool(words[0])],
                                             dev_id=unit)
        elif len(words) == 1:
            request = WriteSingleRegisterRequest(address=point.address,
                                                 registers=[int(words[0])], dev_id=unit)
        else:
            request = WriteMultipleRegistersRequest(address=point.address,
                                                    registers=[int(w) for w in words],
                                                    dev_id=unit)
        await self._execute(unit, request)
