# The sealed envelope of docs/wire-format.md, built on the node: the batch payload (CBOR),
# signed by the node (COSE_Sign1, ES256, x5t), encrypted to the IOC (COSE_Encrypt, ECDH-ES +
# HKDF-256 on P-256, A128GCM). Same bytes layout as pki/envelope.py and agent/seal/payload.py;
# only the randomness (ephemeral key, IV) differs.
#
# Times are integer milliseconds on the node: the ESP32 port's float is binary32, which cannot
# hold a Unix time to the millisecond. They become the float64 seconds of the wire format by
# integer arithmetic (cbor.float_ratio), so both ports write identical bytes.

import gc
import hashlib
import os
import time

from ue import aead, cbor, kdf, p256

TAG_SIGN1 = 18
TAG_ENCRYPT = 96
IV_BYTES = 12
KID_BYTES = 8
VERSION = 2

# bstr .cbor {1: 1}, {1: -25}: fixed bytes, as pki/envelope.py writes them.
ENC_PROTECTED = b"\xa1\x01\x01"
RCPT_PROTECTED = b"\xa1\x01\x38\x18"


def _kdf_context():
    # RFC 9053 5.2 COSE_KDF_Context [1, [nil,nil,nil], [nil,nil,nil], [128, <<{1:-25}>>]]
    buf = bytearray(b"\x84\x01\x83\xf6\xf6\xf6\x83\xf6\xf6\xf6\x82\x18\x80")
    cbor.enc_bytes(buf, RCPT_PROTECTED)
    return bytes(buf)


def _enc_structure():
    # ["Encrypt", <<{1: 1}>>, h''] - the AAD of the content encryption
    buf = bytearray(b"\x83")
    cbor.enc_text(buf, "Encrypt")
    cbor.enc_bytes(buf, ENC_PROTECTED)
    buf.append(0x40)
    return bytes(buf)


KDF_CONTEXT = _kdf_context()
ENC_AAD = _enc_structure()


def sign1_protected(x5t):
    """<<{1: -7, 34: [-16, x5t]}>> (ES256, signer named by its certificate's SHA-256)."""
    if len(x5t) != 32:
        raise ValueError("x5t must be a SHA-256 (32 bytes)")
    return b"\xa2\x01\x26\x18\x22\x82\x2f\x58\x20" + x5t


def sign1(payload, d_sign, x5t, chain=None):
    """A tagged COSE_Sign1 (a bytearray) over payload; chain (DER list, leaf first) goes in
    the unprotected x5chain (33) when given."""
    protected = sign1_protected(x5t)
    size = 2 + cbor.head_len(len(protected)) + len(protected) + 1
    if chain:
        size += 2 + cbor.head_len(len(chain))
        for der in chain:
            size += cbor.head_len(len(der)) + len(der)
    size += cbor.head_len(len(payload)) + len(payload) + 2 + 64
    # The output first, at its exact size, while the heap is not yet strewn with the
    # signature's big-int garbage: one allocation, returned without a copy.
    out = cbor.Writer(size)
    cbor.head(out, 6, TAG_SIGN1)
    out.append(0x84)
    cbor.enc_bytes(out, protected)
    if chain:
        out.extend(b"\xa1\x18\x21")
        cbor.head(out, 4, len(chain))
        for der in chain:
            cbor.enc_bytes(out, der)
    else:
        out.append(0xA0)
    cbor.enc_bytes(out, payload)
    # Sig_structure ["Signature1", protected, h'', payload] hashed piecewise: the payload is
    # not copied into a second buffer.
    h = bytearray(b"\x84\x6aSignature1")
    cbor.enc_bytes(h, protected)
    h.append(0x40)
    cbor.head(h, 2, len(payload))
    digest = hashlib.sha256(h)
    digest.update(payload)
    cbor.enc_bytes(out, p256.sign(d_sign, digest.digest()))
    return out.value()


def encrypt(plaintext, recipient_xy, kid):
    """A tagged COSE_Encrypt of plaintext to the IOC key recipient_xy (64-byte X||Y), named by kid."""
    return _encrypt([plaintext], recipient_xy, kid)


class EphemeralCache:
    """Lets several messages share one ephemeral key and its derived CEK.

    Two of the three P-256 scalar multiplications of a sealed batch are the ephemeral key
    and the ECDH: about two thirds of an ESP32's sealing time. Reusing them for up to
    max_uses messages or max_age_ms (each message still has its own random 96-bit IV, far
    below GCM's limits for one key) trades per-message forward secrecy for a window of an
    hour at most. The wire format does not change: every message carries the ephemeral public
    key it was encrypted with, and the IOC derives the CEK from it as always."""

    def __init__(self, max_uses=60, max_age_ms=3600000):
        self.max_uses = max_uses
        self.max_age_ms = max_age_ms
        self._key = None  # (recipient_xy, eph_xy, cek)
        self._uses = 0
        self._born = time.ticks_ms()
        self.derivations = 0

    def get(self, recipient_xy):
        k = self._key
        if (k is None or k[0] != recipient_xy or self._uses >= self.max_uses
                or time.ticks_diff(time.ticks_ms(), self._born) >= self.max_age_ms):
            k = self._key = (recipient_xy,) + _derive(recipient_xy)
            self._uses = 0
            self._born = time.ticks_ms()
            self.derivations += 1
        self._uses += 1
        return k[1], k[2]


def _derive(recipient_xy):
    d_eph, eph_xy = p256.keygen()
    cek = kdf.hkdf_sha256(p256.ecdh(d_eph, recipient_xy), None, KDF_CONTEXT, 16)
    return eph_xy, cek


def _encrypt(box, recipient_xy, kid, cache=None):
    # box: [plaintext]. It is emptied once the ciphertext exists, so that when the caller holds
    # no other reference (seal) the plaintext's block is free before the output is allocated:
    # one plaintext-sized block less at the peak, which is what limits the batch size.
    if len(kid) != KID_BYTES:
        raise ValueError("kid must be 8 bytes")
    iv = os.urandom(IV_BYTES)
    eph_xy, cek = _derive(recipient_xy) if cache is None else cache.get(recipient_xy)
    gc.collect()  # the point arithmetic's garbage, before GCM asks for plaintext-sized buffers
    ct = aead.gcm_encrypt(cek, iv, box[0], ENC_AAD)
    box[0] = None
    gc.collect()
    out = cbor.Writer(_ENCRYPT_FIXED + cbor.head_len(len(ct)) + len(ct))  # exact: no copy at the end
    cbor.head(out, 6, TAG_ENCRYPT)
    out.append(0x84)
    cbor.enc_bytes(out, ENC_PROTECTED)
    out.extend(b"\xa1\x05")  # {5: iv}
    cbor.enc_bytes(out, iv)
    cbor.enc_bytes(out, ct)
    ct = None
    out.extend(b"\x81\x83")  # [[protected, unprotected, h'']]
    cbor.enc_bytes(out, RCPT_PROTECTED)
    # {-1: {1: 2, -1: 1, -2: x, -3: y}, 4: kid}
    out.extend(b"\xa2\x20\xa4\x01\x02\x20\x01\x21")
    cbor.enc_bytes(out, eph_xy[:32])
    out.append(0x22)
    cbor.enc_bytes(out, eph_xy[32:])
    out.append(0x04)
    cbor.enc_bytes(out, kid)
    out.append(0x40)
    return out.value()


# Everything in a COSE_Encrypt but its ciphertext: tag, array, protected, {5: iv}, recipients.
_ENCRYPT_FIXED = 2 + 1 + 4 + 2 + 13 + 2 + 5 + 8 + 34 + 1 + 34 + 1 + 9 + 1


def seal(payload, d_sign, signer_cert_der_sha256, recipient_xy, recipient_kid, cache=None):
    """The sealed message: payload signed with d_sign, encrypted to the IOC recipient; with an
    EphemeralCache, the ephemeral key and CEK are shared with the cache's other messages."""
    gc.collect()  # the caller's garbage (e.g. building the payload), before the big buffers
    box = [sign1(payload, d_sign, signer_cert_der_sha256)]
    return _encrypt(box, recipient_xy, recipient_kid, cache)


def announcement(src, ts_ms, d_sign, chain_der_list, x5t):
    """The certificate announcement: COSE_Sign1 with x5chain, payload {"src": src, "ts": s}."""
    body = bytearray(b"\xa2\x63src")
    cbor.enc_text(body, src)
    body.extend(b"\x62ts")
    cbor.enc_float64_bits(body, cbor.float_ratio(ts_ms, 1000))
    return sign1(body, d_sign, x5t, chain_der_list)


# --- the batch payload ---------------------------------------------------------------------

_F32_MAX = 3.4e38


def compact_number(v):
    """The value to encode for float v, as agent/seal/payload.compact_number decides: an int
    when integral, the float when binary32 keeps it, a decimal fraction for a short decimal,
    else the float (written as float64)."""
    bits = cbor.float_bits(v)
    if (bits >> 52) & 0x7FF == 0x7FF:
        return v
    if v == int(v) and -(2.0 ** 53) < v < 2.0 ** 53:
        return int(v)
    if -_F32_MAX < v < _F32_MAX and _f32_exact(bits):
        return v
    d = _short_decimal(bits)
    return v if d is None else d


def _short_decimal(bits):
    """The decimal CPython's repr would print for this float64, as a Dec, when that is a plain
    decimal (no exponent) of at most 9 digits; else None. Found in integer arithmetic: the
    port's repr is not always the shortest (64.4 prints as 64.40000000000001)."""
    sign = bits >> 63
    e = (bits >> 52) & 0x7FF
    m, q = (bits & 0xFFFFFFFFFFFFF) | (1 << 52), e - 1075
    if e == 0 or q >= 0:
        return None  # subnormal (far below 1e-4) or integral (handled before)
    for k in range(1, 9):
        # The k-digit decimal nearest to the value m * 2**q, ties to even.
        num = m * 10 ** k
        mant, r = divmod(num, 1 << -q)
        half = 1 << (-q - 1)
        if r > half or (r == half and mant & 1):
            mant += 1
        scale = 10 ** k
        if cbor.float_ratio(mant, scale) != bits & 0x7FFFFFFFFFFFFFFF:
            continue
        # repr writes it without an exponent only from 1e-4 on; "0.x" counts its leading 0.
        if mant * 10000 < scale:
            return None
        whole = mant // scale
        if len(str(whole)) + k > 9:
            return None
        return cbor.Dec(-mant if sign else mant, -k)
    return None


def _f32_exact(bits):
    # A float64 pattern that binary32 holds exactly: few enough mantissa bits, exponent in range.
    e = (bits >> 52) & 0x7FF
    f = bits & 0xFFFFFFFFFFFFF
    if e == 0:
        return f == 0
    m, q = f | (1 << 52), e - 1075
    while not m & 1:
        m >>= 1
        q += 1
    nb = len(bin(m)) - 2
    return nb <= 24 and q >= -149 and q + nb - 1 <= 127


def _index_keys(obj, index, keys):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in index:
                index[k] = len(keys)
                keys.append(k)
            _index_keys(v, index, keys)
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _index_keys(x, index, keys)


def _enc_body(buf, obj, index):
    if isinstance(obj, dict):
        pairs = [(index[k], v) for k, v in obj.items()]
        pairs.sort(key=lambda kv: kv[0])
        cbor.head(buf, 5, len(pairs))
        for i, v in pairs:
            cbor.head(buf, 0, i)
            _enc_body(buf, v, index)
    elif isinstance(obj, (list, tuple)):
        cbor.head(buf, 4, len(obj))
        for x in obj:
            _enc_body(buf, x, index)
    elif isinstance(obj, float):
        cbor.enc(buf, compact_number(obj))
    else:
        cbor.enc(buf, obj)


class _Counter:
    # Stands in for a Writer to measure an encoding without storing it.
    def __init__(self):
        self.n = 0

    def append(self, b):
        self.n += 1

    def extend(self, data):
        self.n += len(data)


def batch_payload(src, sent_ms, records):
    """The CBOR batch payload (version 2) of records.

    records: an iterable of (seq, type, device_id, ts_ms, body) that can be iterated twice
    (a list, or an object whose __iter__ reads the records again from flash: only one
    record needs to be in RAM at a time). type is 0 alarm / 1 event / 2 telemetry, ts_ms
    the record time in Unix milliseconds, body a dict (an OrderedDict keeps its key order;
    keys are numbered in order of first appearance). sent_ms: now, in Unix milliseconds.
    Byte-identical to agent.seal.payload.encode for the same records.
    """
    if not src:
        raise ValueError("src must not be empty")
    # Pass 1: the key table, t0, the record count and the exact size of the records (a body
    # needs only the indexes of its own keys, known once its record is indexed).
    t0 = None
    count = 0
    index: "dict[str, int]" = {}
    keys: "list[str]" = []
    size = _Counter()
    for seq, typ, device_id, ts_ms, body in records:
        if not isinstance(body, dict):
            raise ValueError("record body must be a map")
        if t0 is None or ts_ms < t0:
            t0 = ts_ms
        _index_keys(body, index, keys)
        _enc_record(size, seq, typ, device_id, 0, body, index)
        count += 1
    if t0 is None:
        t0 = sent_ms
    key_table = cbor.Writer(cbor.head_len(len(keys)) + sum(cbor.head_len(len(k.encode())) + len(k.encode())
                                                            for k in keys))
    cbor.head(key_table, 4, len(keys))
    for k in keys:
        cbor.enc_text(key_table, k)
    # The key strings were allocated between the garbage of pass 1, all over the heap: drop
    # them and collect before allocating the output, so it finds one free block.
    del index, keys
    gc.collect()
    t0_bits = cbor.float_ratio(t0, 1000)
    sent_bits = cbor.float_ratio(sent_ms, 1000)
    total = 15 + _float_len(t0_bits) + cbor.head_len(len(src.encode())) + len(src.encode()) + \
        len(key_table) + 5 + cbor.head_len(count) + size.n + _float_len(sent_bits)
    buf = cbor.Writer(total + 8 * count)  # + the dt_ms heads, measured as 0 (at most 8 more each)
    index = {}
    for i, k in enumerate(cbor.loads(key_table.view())):
        index[k] = i
    # Canonical key order of the top-level map: v, t0, src, keys, recs, sent.
    buf.extend(b"\xa6\x61v\x02\x62t0")
    cbor.enc_float_bits(buf, t0_bits)
    buf.extend(b"\x63src")
    cbor.enc_text(buf, src)
    buf.extend(b"\x64keys")
    buf.extend(key_table.view())
    del key_table
    buf.extend(b"\x64recs")
    cbor.head(buf, 4, count)
    # Pass 2: the records.
    for seq, typ, device_id, ts_ms, body in records:
        count -= 1
        _enc_record(buf, seq, typ, device_id, ts_ms - t0, body, index)
    if count:
        raise ValueError("records changed between the two passes")
    buf.extend(b"\x64sent")
    cbor.enc_float_bits(buf, sent_bits)
    return buf.value()


def _enc_record(buf, seq, typ, device_id, dt_ms, body, index):
    buf.append(0x85)
    cbor.enc_int(buf, seq)
    cbor.enc_int(buf, typ)
    cbor.enc_text(buf, device_id)
    cbor.enc_int(buf, dt_ms)
    _enc_body(buf, body, index)


def _float_len(bits):
    w = cbor.Writer(9)
    cbor.enc_float_bits(w, bits)
    return len(w)


def x5t_of(cert_der):
    return hashlib.sha256(cert_der).digest()


def kid_of(cert_der):
    return hashlib.sha256(cert_der).digest()[:KID_BYTES]
