# NIST P-256 in pure MicroPython: key generation, ECDH, ECDSA (RFC 6979 deterministic k).
#
# NOT constant-time, and it cannot be made so here: MicroPython's arbitrary-precision ints
# take time (and allocate) in proportion to their value's length, the interpreter branches
# on every digit, and the scalar loops below skip zero windows. Timing and power
# side channels can leak the key to someone who can measure the node closely; where that
# matters use a secure element (e.g. an ATECC608 or the ESP32-H2's ECDSA peripheral).
#
# Points inside are Jacobian (X, Y, Z) tuples, x = X/Z^2, y = Y/Z^3; Z == 0 is infinity.
# On the wire a point is 64 bytes X||Y (affine, big-endian). Field reduction is plain
# `% P`: a 256-bit multiply-and-reduce is ~1 us of native mpz code on the unix port, less
# than the interpreter spends on the several operations a special reduction would need.
import os

from ue.kdf import hmac_sha256

P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_INF = (1, 1, 0)


def _dbl(pt):
    # dbl-2001-b (a = -3), with Z3 = 2*Y1*Z1: under MicroPython the count of bigint
    # operations matters more than multiplications against squarings.
    X1, Y1, Z1 = pt
    if Z1 == 0 or Y1 == 0:
        return _INF
    p = P
    delta = Z1 * Z1 % p
    gamma = Y1 * Y1 % p
    beta = X1 * gamma % p
    alpha = 3 * (X1 - delta) * (X1 + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = 2 * Y1 * Z1 % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return (X3, Y3, Z3)


def _add(p1, p2):
    # add-1998-cmo-2, 12M + 4S; falls back to doubling when the points are equal.
    X1, Y1, Z1 = p1
    X2, Y2, Z2 = p2
    if Z1 == 0:
        return p2
    if Z2 == 0:
        return p1
    p = P
    Z1Z1 = Z1 * Z1 % p
    Z2Z2 = Z2 * Z2 % p
    U1 = X1 * Z2Z2 % p
    U2 = X2 * Z1Z1 % p
    S1 = Y1 * Z2 * Z2Z2 % p
    S2 = Y2 * Z1 * Z1Z1 % p
    H = (U2 - U1) % p
    r = (S2 - S1) % p
    if H == 0:
        if r == 0:
            return _dbl(p1)
        return _INF
    HH = H * H % p
    HHH = H * HH % p
    V = U1 * HH % p
    X3 = (r * r - HHH - 2 * V) % p
    Y3 = (r * (V - X3) - S1 * HHH) % p
    Z3 = Z1 * Z2 * H % p
    return (X3, Y3, Z3)


def _add_affine(p1, x2, y2):
    # Mixed addition (second point affine, Z2 = 1): 8M + 3S.
    X1, Y1, Z1 = p1
    if Z1 == 0:
        return (x2, y2, 1)
    p = P
    Z1Z1 = Z1 * Z1 % p
    H = (x2 * Z1Z1 - X1) % p
    r = (y2 * Z1 * Z1Z1 - Y1) % p
    if H == 0:
        if r == 0:
            return _dbl(p1)
        return _INF
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (r * r - HHH - 2 * V) % p
    Y3 = (r * (V - X3) - Y1 * HHH) % p
    Z3 = Z1 * H % p
    return (X3, Y3, Z3)


def _to_affine(pt):
    X, Y, Z = pt
    if Z == 0:
        raise ValueError("point at infinity")
    p = P
    zi = pow(Z, p - 2, p)
    zi2 = zi * zi % p
    return X * zi2 % p, Y * zi2 * zi % p


def _mul(k, x, y):
    # Fixed 4-bit window over a table of 0..15 times the point, Jacobian throughout:
    # 252 doublings and at most 64 additions for a 256-bit scalar.
    tbl = [_INF, (x, y, 1)]
    for i in range(2, 16):
        tbl.append(_dbl(tbl[i >> 1]) if i & 1 == 0 else _add_affine(tbl[i - 1], x, y))
    kb = k.to_bytes(32, "big")
    q = _INF
    for byte in kb:
        for nib in (byte >> 4, byte & 15):
            if q[2] != 0:
                q = _dbl(_dbl(_dbl(_dbl(q))))
            if nib:
                q = _add(q, tbl[nib])
    return q


# Fixed-base comb for G (4 teeth, 64 bits apart): 63 doublings and at most 64 mixed
# additions per k*G, about 40 % of the time of _mul. Table entry i (1..15) is the affine
# sum of 2^(64*j)*G over the bits j of i; built on first use (~7 ms on the unix port: 192
# doublings and 15 inversions) and kept: 30 ints, about 5 KB of heap.
_comb = None


def _comb_table():
    global _comb
    if _comb is None:
        base = [(GX, GY, 1)]
        for _ in range(3):
            q = base[-1]
            for _ in range(64):
                q = _dbl(q)
            base.append(q)
        tbl = [None]
        for i in range(1, 16):
            acc = _INF
            for j in range(4):
                if i >> j & 1:
                    acc = _add(acc, base[j])
            tbl.append(_to_affine(acc))
        _comb = tbl
    return _comb


def _mul_g(k):
    tbl = _comb_table()
    kb = k.to_bytes(32, "big")
    q = _INF
    # Bit i of k is bit (i & 7) of kb[31 - (i >> 3)]; tooth j reads bit i + 64*j.
    for i in range(63, -1, -1):
        if q[2] != 0:
            q = _dbl(q)
        sh = i & 7
        o = 31 - (i >> 3)
        idx = (kb[o] >> sh & 1) | (kb[o - 8] >> sh & 1) << 1 | (kb[o - 16] >> sh & 1) << 2 | (kb[o - 24] >> sh & 1) << 3
        if idx:
            e = tbl[idx]
            q = _add_affine(q, e[0], e[1])
    return q


def _encode(xy):
    return xy[0].to_bytes(32, "big") + xy[1].to_bytes(32, "big")


def decode_point(data):
    """64-byte X||Y (or 65 bytes 0x04||X||Y) to affine ints; ValueError unless on the curve."""
    if len(data) == 65 and data[0] == 4:
        data = data[1:]
    if len(data) != 64:
        raise ValueError("point length")
    x = int.from_bytes(data[:32], "big")
    y = int.from_bytes(data[32:], "big")
    p = P
    # (0, 0) would be the usual encoding of infinity; it is not on the curve (B != 0).
    if x >= p or y >= p or (y * y - (x * x * x - 3 * x + B)) % p != 0:
        raise ValueError("point not on P-256")
    return x, y


def _check_scalar(d):
    if not 0 < d < N:
        raise ValueError("private scalar out of range")


def public_of(d):
    _check_scalar(d)
    return _encode(_to_affine(_mul_g(d)))


def keygen():
    # Rejection sampling keeps d uniform in [1, N-1]; a retry happens with probability ~2^-32.
    while True:
        d = int.from_bytes(os.urandom(32), "big")
        if 0 < d < N:
            return d, public_of(d)


def ecdh(d, peer_xy):
    _check_scalar(d)
    x, y = decode_point(peer_xy)
    # Cofactor 1 and a validated point: d*Q is infinity only if d = 0 mod N, excluded above.
    return _to_affine(_mul(d, x, y))[0].to_bytes(32, "big")


def _rfc6979_k(d, digest):
    # RFC 6979 section 3.2 with HMAC-SHA256; qlen = hlen = 256, so bits2int is a plain
    # conversion and bits2octets is that value mod N.
    x = d.to_bytes(32, "big")
    h1 = (int.from_bytes(digest, "big") % N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = bytes(32)
    k = hmac_sha256(k, v + b"\x00" + x + h1)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v + b"\x01" + x + h1)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        cand = int.from_bytes(v, "big")
        if 0 < cand < N:
            yield cand
        k = hmac_sha256(k, v + b"\x00")
        v = hmac_sha256(k, v)


def sign(d, digest32):
    """ECDSA over a 32-byte digest (the caller hashes); 64-byte r||s, s not normalised."""
    _check_scalar(d)
    if len(digest32) != 32:
        raise ValueError("digest length")
    n = N
    z = int.from_bytes(digest32, "big")
    for k in _rfc6979_k(d, digest32):
        r = _to_affine(_mul_g(k))[0] % n
        if r == 0:
            continue
        s = pow(k, n - 2, n) * (z + r * d) % n
        if s != 0:
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(pub_xy, digest32, sig64):
    if len(sig64) != 64 or len(digest32) != 32:
        return False
    try:
        qx, qy = decode_point(pub_xy)
    except ValueError:
        return False
    n = N
    r = int.from_bytes(sig64[:32], "big")
    s = int.from_bytes(sig64[32:], "big")
    if not (0 < r < n and 0 < s < n):
        return False
    w = pow(s, n - 2, n)
    z = int.from_bytes(digest32, "big")
    u1 = z * w % n
    u2 = r * w % n
    pt = _add(_mul_g(u1) if u1 else _INF, _mul(u2, qx, qy))
    if pt[2] == 0:
        return False
    return _to_affine(pt)[0] % n == r
