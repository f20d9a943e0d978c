# Reading the node's sensors as the profiles table describes them, and alarm rules.
#
# Decoding matches the gateway's drivers/modbus/registermap.py value for value (the tests
# compare them on the same registers): integer points are scaled exactly with the table's
# precomputed integers, float32 points as f * scale + offset. Quality follows
# agent/poll/readers.py: a block answered with an exception marks its points "error"; a
# timeout or bad frame (after the master's retries) loses the whole poll.

import struct

from ue import cbor, modbus
from ue.profiles_table import PROFILES

_F32 = bytearray(4)


def profile(name):
    # The table entry of a profile; KeyError names it when the node does not know it.
    return PROFILES[name]


def _scaled(point, raw):
    div = point[7]
    if div == 0:
        return raw
    return (raw * point[5] + point[6]) / div


def _exact(point, raw):
    # (raw * mul + add) / div as an exact decimal when div is a power of ten: an int, or a
    # cbor.Dec. The ESP32's float is binary32 (7 digits): a water meter's 12345678 x 0.001 m3
    # must not reach the IOC as 12345.677734375.
    div = point[7]
    if div == 0:
        return raw
    num = raw * point[5] + point[6]
    k = 0
    d = div
    while d > 1 and d % 10 == 0:
        d //= 10
        k += 1
    if d != 1:
        return num / div
    while k and num % 10 == 0:
        num //= 10
        k -= 1
    return num if k == 0 else cbor.Dec(num, -k)


def as_number(v):
    # A value as a plain number for comparisons (alarm rules): Dec becomes a float.
    if isinstance(v, cbor.Dec):
        return v.mantissa / 10 ** -v.exp
    return v


def decode_point(point, data, is_bit, exact=False):
    # The engineering value of point from a response's data bytes. exact: scaled integer
    # registers as exact decimals (_exact) instead of floats.
    at = point[2]
    if is_bit:
        return bool(modbus.bit(data, at))
    kind = point[1]
    word = modbus.register(data, at)
    scale = _exact if exact else _scaled
    b = point[4]
    if b >= 0:
        flag = (word >> b) & 1
        return bool(flag) if kind == "bool" else scale(point, flag)
    if kind == "uint16":
        return scale(point, word)
    if kind == "int16":
        return scale(point, word - 0x10000 if word & 0x8000 else word)
    second = modbus.register(data, at + 1)
    whole = (second << 16) | word if point[3] else (word << 16) | second
    if kind == "uint32":
        return scale(point, whole)
    if kind == "int32":
        return scale(point, whole - 0x100000000 if whole & 0x80000000 else whole)
    buf = _F32
    buf[0] = whole >> 24
    buf[1] = (whole >> 16) & 0xFF
    buf[2] = (whole >> 8) & 0xFF
    buf[3] = whole & 0xFF
    number = struct.unpack(">f", buf)[0]
    if point[7] == 0:
        return number
    return number * point[8] + point[9]


def _finite(x):
    return x == x and x not in (float("inf"), float("-inf"))


def read_device(master, unit, prof, exact=False):
    # (values, quality, point_quality) of one poll of a Modbus device.
    # quality: "good"; "error" with point_quality {name: "error"} for the points of blocks
    # answered with an exception or holding a non-finite float; "error" with no values when
    # every block failed or the device did not answer properly (master.last_error says why).
    values = {}
    bad = {}
    for fc, _table, start, count, points in prof[2]:
        try:
            data = master.read(unit, fc, start, count)
        except modbus.ExceptionResponse:
            for p in points:
                bad[p[0]] = "error"
            continue
        except modbus.ModbusError:
            return {}, "error", {}
        is_bit = fc <= modbus.FC_DISCRETE
        for p in points:
            v = decode_point(p, data, is_bit, exact)
            if type(v) is float and not _finite(v):
                bad[p[0]] = "error"
            else:
                values[p[0]] = v
    if bad and not values:
        return {}, "error", {}
    return values, "error" if bad else "good", bad


def error_reason(master):
    # The gateway's reason word for the master's last failure ("timeout", "bad_frame", ...).
    err = master.last_error
    return None if err is None else err.reason


# --- serial line sensor (protocol "line"): $NAME,f1,f2,...*HH\r\n -------------------------

def parse_sentence(prof, line):
    # Values of one received line (bytes, without or with CR/LF), or None if it is not a
    # checksum-valid sentence of this profile with enough fields of the right types.
    sentence, fields = prof[2]
    end = len(line)
    while end and line[end - 1] in (10, 13):
        end -= 1
    if end < 5 or line[0] != 0x24 or line[end - 3] != 0x2A:
        return None
    x = 0
    for i in range(1, end - 3):
        c = line[i]
        if c < 0x20 or c > 0x7E:
            return None
        x ^= c
    try:
        if int(bytes(line[end - 2:end]), 16) != x:
            return None
        parts = bytes(line[1:end - 3]).decode().split(",")
    except ValueError:
        return None
    if parts[0] != sentence:
        return None
    values = {}
    for name, index, kind, scale, offset, _unit in fields:
        if index >= len(parts):
            return None
        text = parts[index].strip()
        if "_" in text:
            return None
        try:
            number = int(text, 10) if kind == "int" else float(text)
        except ValueError:
            return None
        if type(number) is float and not _finite(number):
            return None
        if scale != 1.0 or offset != 0.0:
            number = number * scale + offset
        values[name] = number
    return values


def read_line(uart, prof, timeout_ms, buf=None):
    # The freshest valid sentence seen within timeout_ms: (values, "good", {}), or
    # ({}, "error", {}) when none arrived. buf: a reusable bytearray of at least 128.
    if buf is None:
        buf = bytearray(128)
    import time

    deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
    n = 0
    found = None
    size = len(buf)
    while True:
        left = time.ticks_diff(deadline, time.ticks_ms())
        if left <= 0:
            break
        if not uart.read_into(buf, n, n + 1, left):
            break
        c = buf[n]
        if c == 0x24:  # '$' starts a sentence whatever came before (noise, a cut one)
            buf[0] = c
            n = 1
        elif n and c == 10:
            values = parse_sentence(prof, memoryview(buf)[:n + 1])
            if values is not None:
                found = values
                # Take what is already waiting too, so the newest sentence wins.
                deadline = time.ticks_add(time.ticks_ms(), 20)
            n = 0
        elif n:
            n = n + 1 if n + 1 < size else 0
    if found is None:
        return {}, "error", {}
    return found, "good", {}


# --- alarms (agent/poll/alarms.py) ---------------------------------------------------------

def check_alarms(prof, values, state):
    # Transitions caused by values: a list of (name, "raised"|"cleared", severity, point,
    # value, threshold). state: a dict {alarm name: raised bool} kept by the caller across
    # polls (persist it to keep alarms edge-triggered over resets). Rules whose point is
    # missing from values keep their state.
    out = []
    for name, point, op, threshold, hyst, severity in prof[3]:
        if point not in values:
            continue
        value = values[point]
        was = state.get(name, False)
        if op == "when":
            now = bool(value) == threshold
        elif op == "above":
            now = value > (threshold - hyst if was else threshold)
        else:
            now = value < (threshold + hyst if was else threshold)
        if now != was:
            out.append((name, "raised" if now else "cleared", severity, point, value,
                        threshold))
        state[name] = now
    return out
