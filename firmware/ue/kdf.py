# HMAC-SHA256 (RFC 2104) and HKDF-SHA256 (RFC 5869) over the port's native hashlib.sha256.
# MicroPython's sha256 object has only update() and digest() (no copy()), so the padded
# keys are rebuilt per call; that costs two 64-byte XORs, nothing next to the hashing.
import hashlib

_BLOCK = 64
_HASH_LEN = 32
_ZERO_SALT = bytes(_HASH_LEN)


def _pads(key):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = int.from_bytes(key + bytes(_BLOCK - len(key)), "big")
    # 0x36.. / 0x5c.. repeated over the block, XORed as one big int instead of a byte loop.
    ipad = (k ^ int.from_bytes(b"\x36" * _BLOCK, "big")).to_bytes(_BLOCK, "big")
    opad = (k ^ int.from_bytes(b"\x5c" * _BLOCK, "big")).to_bytes(_BLOCK, "big")
    return ipad, opad


def hmac_sha256(key, msg):
    ipad, opad = _pads(key)
    h = hashlib.sha256(ipad)
    h.update(msg)
    inner = h.digest()
    h = hashlib.sha256(opad)
    h.update(inner)
    return h.digest()


def hkdf_extract(salt, ikm):
    if salt is None or len(salt) == 0:
        salt = _ZERO_SALT
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk, info, length):
    if length <= 0 or length > 255 * _HASH_LEN:
        raise ValueError("hkdf length")
    ipad, opad = _pads(prk)
    nblk = (length + _HASH_LEN - 1) // _HASH_LEN
    out = bytearray(nblk * _HASH_LEN)  # sized once: no regrowth while filling
    t = b""
    for i in range(1, nblk + 1):
        h = hashlib.sha256(ipad)
        h.update(t)
        h.update(info)
        h.update(bytes((i,)))
        inner = h.digest()
        h = hashlib.sha256(opad)
        h.update(inner)
        t = h.digest()
        out[(i - 1) * _HASH_LEN:i * _HASH_LEN] = t
    return bytes(out) if len(out) == length else bytes(out[:length])


def hkdf_sha256(ikm, salt, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)
