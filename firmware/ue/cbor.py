# Minimal deterministic CBOR (RFC 8949) for the node: an encoder that appends to a bytearray
# and a small decoder (for records read back from flash, and for self-tests).
#
# Byte-exact with cbor2's canonical mode (what the gateway and the IOC use): shortest
# heads, maps sorted by the length then the bytes of each encoded key, floats in the
# shortest of float16/32/64 that keeps the value. Floats are handled as IEEE-754 bit
# patterns in integer arithmetic, so a float32 build (the ESP32 port) encodes float64
# values such as times exactly (see float_ratio).

import struct


class Tag:
    """A tagged value (major type 6)."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


class Dec:
    """A decimal fraction mantissa * 10**exp, written as tag 4 [exp, mantissa]: how a scaled
    register (2304 x 0.1 V) keeps its exact decimal value without float arithmetic."""

    def __init__(self, mantissa, exp):
        self.mantissa = mantissa
        self.exp = exp

    def __eq__(self, other):
        return isinstance(other, Dec) and self.mantissa == other.mantissa and self.exp == other.exp

    def __repr__(self):
        return "Dec(%d, %d)" % (self.mantissa, self.exp)


class Raw:
    """Bytes that are already CBOR, copied into the output as they are."""

    def __init__(self, data):
        self.data = data


class Float64:
    """A float value always written as float64 (cbor2's non-canonical mode does this), given
    as its 64-bit pattern."""

    def __init__(self, bits):
        self.bits = bits


# --- encoding ------------------------------------------------------------------------------
#
# Every encoder takes `buf`, anything with append(int) and extend(bytes-like): a bytearray, or
# a Writer. Prefer a Writer for anything over a few hundred bytes: MicroPython grows a
# bytearray by reallocating it a few bytes at a time, and the heap fragments until a 5 KB
# payload no longer finds a free block in 100 KB.


class Writer:
    """A preallocated output buffer; doubles when full (rarely, given a good first size)."""

    def __init__(self, cap=256):
        self.buf = bytearray(cap)
        self.n = 0

    def _room(self, k):
        need = self.n + k
        cap = len(self.buf)
        if need > cap:
            cap *= 2
            while cap < need:
                cap *= 2
            new = bytearray(cap)
            new[:self.n] = memoryview(self.buf)[:self.n]
            self.buf = new

    def append(self, b):
        if self.n >= len(self.buf):
            self._room(1)
        self.buf[self.n] = b
        self.n += 1

    def extend(self, data):
        k = len(data)
        if self.n + k > len(self.buf):
            self._room(k)
        self.buf[self.n:self.n + k] = data
        self.n += k

    def __len__(self):
        return self.n

    def view(self):
        return memoryview(self.buf)[:self.n]

    def value(self):
        """The bytes written, as the buffer itself (a bytearray): cut to length in place,
        no copy (the spare capacity stays allocated with it)."""
        if self.n < len(self.buf):
            self.buf[self.n:] = b""
        return self.buf



def head(buf, major, n):
    mt = major << 5
    if n < 24:
        buf.append(mt | n)
    elif n < 0x100:
        buf.append(mt | 24)
        buf.append(n)
    elif n < 0x10000:
        buf.extend(struct.pack(">BH", mt | 25, n))
    elif n < 0x100000000:
        buf.extend(struct.pack(">BI", mt | 26, n))
    else:
        buf.append(mt | 27)
        buf.extend(n.to_bytes(8, "big"))


def enc_int(buf, v):
    if v >= 0:
        if v >= 0x10000000000000000:
            _bignum(buf, 2, v)
        else:
            head(buf, 0, v)
    else:
        n = -1 - v
        if n >= 0x10000000000000000:
            _bignum(buf, 3, n)
        else:
            head(buf, 1, n)


def _bignum(buf, tag, n):
    size = (_bitlen(n) + 7) // 8
    head(buf, 6, tag)
    head(buf, 2, size)
    buf.extend(n.to_bytes(size, "big"))


def enc_bytes(buf, data):
    head(buf, 2, len(data))
    buf.extend(data)


def enc_text(buf, s):
    data = s.encode()
    head(buf, 3, len(data))
    buf.extend(data)


def _bitlen(n):
    return len(bin(n)) - 2 if n else 0


def float_bits(v):
    """The IEEE-754 binary64 pattern of v as an int."""
    return int.from_bytes(struct.pack(">d", v), "big")


def float_ratio(num, den):
    """The binary64 pattern of num/den correctly rounded (ties to even), for num/den in the
    normal range: times in milliseconds become seconds as a float64 even where the port's
    own float is binary32."""
    sign = 0
    if num < 0:
        sign, num = 1, -num
    if num == 0:
        return sign << 63
    e = _bitlen(num) - _bitlen(den)
    if (num << -e if e < 0 else num) < (den << e if e > 0 else den):
        e -= 1  # now 2**e <= num/den < 2**(e+1)
    s = 52 - e
    if s >= 0:
        m, r = divmod(num << s, den)
        twice = 2 * r
        d2 = den
    else:
        d2 = den << -s
        m, r = divmod(num, d2)
        twice = 2 * r
    if twice > d2 or (twice == d2 and m & 1):
        m += 1
        if m == 1 << 53:
            m >>= 1
            e += 1
    return (sign << 63) | ((e + 1023) << 52) | (m & 0xFFFFFFFFFFFFF)


def enc_float_bits(buf, bits):
    """Shortest of float16/32/64 that keeps the value exactly (cbor2 canonical)."""
    sign = bits >> 63
    e = (bits >> 52) & 0x7FF
    f = bits & 0xFFFFFFFFFFFFF
    if e == 0x7FF:
        if f:
            buf.extend(b"\xf9\x7e\x00")
        else:
            buf.extend(b"\xf9\xfc\x00" if sign else b"\xf9\x7c\x00")
        return
    if e == 0 and f == 0:
        buf.extend(b"\xf9\x80\x00" if sign else b"\xf9\x00\x00")
        return
    if e == 0:
        m, q = f, -1074
    else:
        m, q = f | (1 << 52), e - 1075
    while not m & 1:
        m >>= 1
        q += 1
    nb = _bitlen(m)
    top = q + nb - 1  # value in [2**top, 2**(top+1))
    # float16 only below 2**15: cbor2's C encoder (what the gateway runs) never writes a half
    # with the top exponent, so 32768.0 .. 65504.0 go as float32 there and here.
    if nb <= 11 and top <= 14 and q >= -24:
        if top >= -14:
            h = ((top + 15) << 10) | ((m << (11 - nb)) & 0x3FF)
        else:
            h = m << (q + 24)
        buf.extend(struct.pack(">BH", 0xF9, (sign << 15) | h))
    elif nb <= 24 and top <= 127 and q >= -149:
        if top >= -126:
            w = ((top + 127) << 23) | ((m << (24 - nb)) & 0x7FFFFF)
        else:
            w = m << (q + 149)
        buf.extend(struct.pack(">BI", 0xFA, (sign << 31) | w))
    else:
        buf.append(0xFB)
        buf.extend(bits.to_bytes(8, "big"))


def enc_float(buf, v):
    enc_float_bits(buf, float_bits(v))


def enc_float64_bits(buf, bits):
    buf.append(0xFB)
    buf.extend(bits.to_bytes(8, "big"))


def enc_dec(buf, d):
    head(buf, 6, 4)
    buf.append(0x82)
    enc_int(buf, d.exp)
    enc_int(buf, d.mantissa)


def enc(buf, obj):
    """Append obj; dicts in canonical key order."""
    if obj is None:
        buf.append(0xF6)
    elif obj is True:
        buf.append(0xF5)
    elif obj is False:
        buf.append(0xF4)
    elif isinstance(obj, int):
        enc_int(buf, obj)
    elif isinstance(obj, float):
        enc_float(buf, obj)
    elif isinstance(obj, str):
        enc_text(buf, obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        enc_bytes(buf, obj)
    elif isinstance(obj, (list, tuple)):
        head(buf, 4, len(obj))
        for x in obj:
            enc(buf, x)
    elif isinstance(obj, dict):
        enc_map(buf, obj)
    elif isinstance(obj, Dec):
        enc_dec(buf, obj)
    elif isinstance(obj, Tag):
        head(buf, 6, obj.tag)
        enc(buf, obj.value)
    elif isinstance(obj, Raw):
        buf.extend(obj.data)
    elif isinstance(obj, Float64):
        enc_float64_bits(buf, obj.bits)
    else:
        raise TypeError("cannot encode %s" % type(obj))


def enc_map(buf, d):
    items = []
    for k, v in d.items():
        kb = bytearray()
        enc(kb, k)
        items.append((len(kb), bytes(kb), v))
    items.sort(key=lambda it: (it[0], it[1]))
    head(buf, 5, len(items))
    for _, kbytes, v in items:
        buf.extend(kbytes)
        enc(buf, v)


def head_len(n):
    """How many bytes head() writes for argument n."""
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9


def dumps(obj):
    w = Writer()
    enc(w, obj)
    return bytes(w.view())


# --- decoding ------------------------------------------------------------------------------


class DecodeError(ValueError):
    pass


def _half(h):
    e = (h >> 10) & 0x1F
    f = h & 0x3FF
    if e == 0:
        v = f * 2.0 ** -24
    elif e == 31:
        v = float("nan") if f else float("inf")
    else:
        v = (1024 + f) * 2.0 ** (e - 25)
    return -v if h & 0x8000 else v


def _decode(data, pos, depth):
    if depth > 16:
        raise DecodeError("nested too deeply")
    if pos >= len(data):
        raise DecodeError("truncated")
    ib = data[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if major == 7:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22 or info == 23:
            return None, pos
        size = {25: 2, 26: 4, 27: 8}.get(info)
        if size is None or pos + size > len(data):
            raise DecodeError("unsupported simple value or truncated float")
        if info == 25:
            v = _half(struct.unpack_from(">H", data, pos)[0])
        else:
            v = struct.unpack_from(">f" if info == 26 else ">d", data, pos)[0]
        return v, pos + size
    if info < 24:
        n = info
    elif info <= 27:
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise DecodeError("truncated")
        n = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        raise DecodeError("indefinite lengths are not used here")
    if major == 0:
        return n, pos
    if major == 1:
        return -1 - n, pos
    if major == 2 or major == 3:
        if pos + n > len(data):
            raise DecodeError("truncated string")
        s = bytes(data[pos:pos + n])
        return (s.decode() if major == 3 else s), pos + n
    if major == 4:
        out = []
        for _ in range(n):
            v, pos = _decode(data, pos, depth + 1)
            out.append(v)
        return out, pos
    if major == 5:
        m = {}
        for _ in range(n):
            k, pos = _decode(data, pos, depth + 1)
            v, pos = _decode(data, pos, depth + 1)
            m[k] = v
        return m, pos
    v, pos = _decode(data, pos, depth + 1)
    if n == 4 and isinstance(v, list) and len(v) == 2:
        return Dec(v[1], v[0]), pos
    if (n == 2 or n == 3) and isinstance(v, bytes):
        big = int.from_bytes(v, "big")
        return (big if n == 2 else -1 - big), pos
    return Tag(n, v), pos


def loads(data):
    v, pos = _decode(data, 0, 0)
    if pos != len(data):
        raise DecodeError("trailing bytes")
    return v
