# Minimal Modbus RTU master: sans-IO framing (CRC, requests, response checks) and a thin
# ModbusMaster over a hal.Uart-like object.
#
# Only the four read functions the profiles need: 1 coils, 2 discrete inputs, 3 holding
# and 4 input registers. Buffers are allocated once per master; a read returns a
# memoryview into the master's receive buffer, valid until the next request.
#
# Framing without a silence detector: RTU marks frame ends by 3.5 character times of
# silence, which a pty (and a busy interpreter) cannot measure reliably. A read response's
# length is known from its header instead (unit, function, byte count, or 5 bytes for an
# exception), so the receiver reads exactly that many bytes and checks the CRC; anything
# else is garbage, and the line is drained until it goes quiet before the next request.

import time

FC_COILS = 1
FC_DISCRETE = 2
FC_HOLDING = 3
FC_INPUT = 4
MAX_REGISTERS = 125
MAX_BITS = 2000
MAX_FRAME = 256  # 5 + 250 data bytes fits; RTU's ADU limit

# Reasons, as the gateway names them (drivers/errors.py), for telemetry "error" fields.
R_TIMEOUT = "timeout"
R_FRAME = "bad_frame"
R_EXCEPTION = "exception"


class ModbusError(Exception):
    reason = "error"


class ModbusTimeout(ModbusError):
    reason = R_TIMEOUT


class FrameError(ModbusError):
    # kind: "crc", "unit" (answer from another unit), "function", "byte_count", "short"
    reason = R_FRAME

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class ExceptionResponse(ModbusError):
    reason = R_EXCEPTION

    def __init__(self, code):
        super().__init__(code)
        self.code = code


_crc_table = None


def _table():
    global _crc_table
    if _crc_table is None:
        from array import array

        t = array("H", bytes(512))
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
            t[i] = c
        _crc_table = t
    return _crc_table


def crc16(data, start=0, end=None):
    # CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) of data[start:end].
    t = _table()
    if end is None:
        end = len(data)
    crc = 0xFFFF
    for i in range(start, end):
        crc = (crc >> 8) ^ t[(crc ^ data[i]) & 0xFF]
    return crc


def data_bytes(fc, count):
    # Payload bytes of a read response: 2 per register, 1 per 8 bits.
    return (count + 7) >> 3 if fc <= FC_DISCRETE else 2 * count


def build_read(buf, unit, fc, start, count):
    # The 8-byte request into buf (a bytearray of at least 8); returns 8.
    if not 1 <= unit <= 247:
        raise ValueError("unit must be 1..247 for a read")
    if fc < FC_COILS or fc > FC_INPUT:
        raise ValueError("not a read function")
    limit = MAX_BITS if fc <= FC_DISCRETE else MAX_REGISTERS
    if not 1 <= count <= limit or start < 0 or start + count > 65536:
        raise ValueError("bad start/count")
    buf[0] = unit
    buf[1] = fc
    buf[2] = start >> 8
    buf[3] = start & 0xFF
    buf[4] = count >> 8
    buf[5] = count & 0xFF
    crc = crc16(buf, 0, 6)
    buf[6] = crc & 0xFF  # CRC goes low byte first, unlike the data
    buf[7] = crc >> 8
    return 8


def response_length(frame, n, unit, fc, count):
    # Total length of the response whose first n bytes are in frame, as far as those bytes
    # tell (a lower bound while n < 3). Raises FrameError as soon as the header is wrong.
    if n >= 1 and frame[0] != unit:
        raise FrameError("unit")
    if n < 2:
        return 5
    f = frame[1]
    if f == fc | 0x80:
        return 5
    if f != fc:
        raise FrameError("function")
    if n < 3:
        return 5
    if frame[2] != data_bytes(fc, count):
        raise FrameError("byte_count")
    return 5 + frame[2]


def check_response(frame, n, unit, fc, count):
    # Validate a complete response of n bytes; returns the offset of its data (3).
    # Raises FrameError (bad CRC, header, length) or ExceptionResponse.
    need = response_length(frame, n, unit, fc, count)
    if n < need:
        raise FrameError("short")
    if n > need:
        raise FrameError("long")
    crc = crc16(frame, 0, n - 2)
    if frame[n - 2] != crc & 0xFF or frame[n - 1] != crc >> 8:
        raise FrameError("crc")
    if frame[1] & 0x80:
        raise ExceptionResponse(frame[2])
    return 3


def register(data, i):
    # Register i (big-endian word) of a register response's data.
    return (data[2 * i] << 8) | data[2 * i + 1]


def bit(data, i):
    # Bit i of a coil/discrete response's data (LSB of the first byte is the first bit).
    return (data[i >> 3] >> (i & 7)) & 1


class ModbusMaster:
    # One RTU master on one UART. read() does the whole exchange: inter-frame silence,
    # stale-byte drain, request, response with a deadline, retries with backoff.
    #
    # timeout_ms: how long the slave has to start answering; the transmission time of the
    # expected response is added (a 125-register answer takes 265 ms at 9600 baud).
    # retries: extra attempts after a timeout or bad frame (an exception response is an
    # answer and is not retried). Backoff doubles from backoff_ms.

    def __init__(self, uart, baudrate=9600, timeout_ms=300, retries=2, backoff_ms=20):
        self.uart = uart
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.backoff_ms = backoff_ms
        # One character is 11 bits (start, 8 data, parity or second stop, stop). Above
        # 19200 baud the spec fixes the silent interval at 1.75 ms.
        self.char_us = 11000000 // baudrate
        self.silence_ms = 2 if baudrate > 19200 else (35 * self.char_us + 9999) // 10000
        self._req = bytearray(8)
        self._rsp = bytearray(MAX_FRAME)
        self._rspv = memoryview(self._rsp)
        self._last = time.ticks_ms()
        self.requests = 0
        self.ok = 0
        self.timeouts = 0
        self.crc_errors = 0
        self.exceptions = 0
        self.garbage = 0
        self.retried = 0
        self.stale = 0  # bytes found waiting before a request (late answers, noise)
        self.last_error = None

    def counters(self):
        return {"requests": self.requests, "ok": self.ok, "timeouts": self.timeouts,
                "crc_errors": self.crc_errors, "exceptions": self.exceptions,
                "garbage": self.garbage, "retries": self.retried, "stale_bytes": self.stale}

    def read(self, unit, fc, start, count):
        # Data bytes of the response (memoryview into the receive buffer) or raises
        # ModbusTimeout / FrameError / ExceptionResponse once the retries are used up.
        build_read(self._req, unit, fc, start, count)
        attempt = 0
        while True:
            try:
                off = self._exchange(unit, fc, count)
                self.ok += 1
                self.last_error = None
                return self._rspv[off:off + data_bytes(fc, count)]
            except ExceptionResponse as exc:
                self.exceptions += 1
                self.last_error = exc
                raise
            except ModbusTimeout as exc:
                self.timeouts += 1
                self.last_error = exc
                if attempt >= self.retries:
                    raise
            except FrameError as exc:
                if exc.kind == "crc":
                    self.crc_errors += 1
                else:
                    self.garbage += 1
                self.last_error = exc
                self._drain_until_quiet()
                if attempt >= self.retries:
                    raise
            self.retried += 1
            time.sleep_ms(self.backoff_ms << attempt)
            attempt += 1

    def _exchange(self, unit, fc, count):
        uart = self.uart
        wait = self.silence_ms - time.ticks_diff(time.ticks_ms(), self._last)
        if wait > 0:
            time.sleep_ms(wait)
        self.stale += uart.discard()
        self.requests += 1
        uart.write(self._req)
        sent = time.ticks_ms()
        buf = self._rsp
        expect = 5 + data_bytes(fc, count)
        # Our own request's transmission, the slave's reply time, then the reply itself.
        budget = self.timeout_ms + ((8 + expect) * self.char_us + 999) // 1000
        n = 0
        need = 5
        while n < need:
            left = budget - time.ticks_diff(time.ticks_ms(), sent)
            if left <= 0:
                break
            got = uart.read_into(buf, n, need, left)
            if got:
                n += got
                self._last = time.ticks_ms()
                need = response_length(buf, n, unit, fc, count)
        self._last = time.ticks_ms()
        if n == 0:
            raise ModbusTimeout()
        if n < need:
            raise FrameError("short")
        return check_response(buf, n, unit, fc, count)

    def _drain_until_quiet(self):
        # After garbage, let the rest of it arrive and drop it, so the next request's
        # answer does not start in the middle of noise.
        quiet = max(10, 3 * self.silence_ms)
        scratch = self._rsp
        while self.uart.read_into(scratch, 0, MAX_FRAME, quiet):
            pass
        self._last = time.ticks_ms()
