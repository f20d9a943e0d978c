"""What the node's pure-MicroPython crypto (firmware/ue) costs on the real MicroPython unix port.

Under ``micropython -X heapsize=100k``, with random keys:

* **time** per operation (``time.ticks_us`` over ``--reps`` repetitions, GC pauses included):
  P-256 keygen, public key, ECDH, ECDSA sign (RFC 6979), ECDSA verify; HKDF-SHA256 (16 bytes
  out); AES-128-GCM encrypt and decrypt of 1 KB; GHASH alone over 1 KB, both the shipped
  4-bit table and a bit-by-bit shift-and-add written here (the alternative it was chosen over);
* **bytes allocated** per operation (``micropython.mem_total()`` before and after one call:
  garbage included, so the churn the collector has to clear) and bytes still held after a
  collection;
* **heap**: the modules' resident size after import (source compiled on the device's heap;
  ``.mpy`` files would be smaller) and the smallest ``-X heapsize`` in which a sealing-shaped
  sequence (keygen, ephemeral keygen, ECDH, HKDF, GCM of 1 KB, sign) completes, found by
  bisection over separate runs. That is the peak the node needs for its crypto, fragmentation
  included; a ``gc.mem_alloc()`` high-water mark inside a 100 KB heap would only show how
  much garbage piles up before the collector runs.

Baseline, same run: the same operations in CPython with pyca/cryptography (OpenSSL).
ESP32 estimates multiply the unix-port times by 120 (pystone ratio: this class of machine
vs. the ESP32 at 240 MHz, 1661 pystones/s, micropython#5673) and, pessimistic, by 186
(1075 pystones/s, ulab#296); see /work/shared/research/envelope.md section 3. They are
estimates, not measurements.

Run: ``.venv/bin/python bench/bench_node_crypto.py [--reps 50]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

from tests.support.micropython import MicroPythonFailed, run_mp  # noqa: E402

ESP32_FACTOR, ESP32_FACTOR_PESSIMISTIC = 120, 186

TIMING_SCRIPT = r"""
import gc, json, micropython, os, time
gc.collect()
base = gc.mem_alloc()
from ue import p256, aead, kdf
gc.collect()
imported = gc.mem_alloc() - base

R = 0xE1 << 120
def ghash_bits(y, data, h):
    for off in range(0, len(data), 16):
        x = y ^ int.from_bytes(data[off:off + 16], "big")
        z = 0
        v = h
        for i in range(127, -1, -1):
            if x >> i & 1:
                z ^= v
            v = (v >> 1) ^ (R if v & 1 else 0)
        y = z
    return y

p256.public_of(1)  # builds the fixed-base table once, as the node does at first use
gc.collect()
with_table = gc.mem_alloc() - base

d, pub = p256.keygen()
e, epub = p256.keygen()
digest = os.urandom(32)
sig = p256.sign(d, digest)
key, iv, pt, aad = os.urandom(16), os.urandom(12), os.urandom(1024), os.urandom(16)
ct = aead.gcm_encrypt(key, iv, pt, aad)
h = int.from_bytes(os.urandom(16), "big")
m = aead._mul_table(h)
assert ghash_bits(0, pt, h) == aead._ghash_blocks(0, pt, m)
z = p256.ecdh(e, pub)

OPS = [
    ("P-256 keygen", lambda: p256.keygen()),
    ("P-256 public_of", lambda: p256.public_of(d)),
    ("P-256 ECDH", lambda: p256.ecdh(e, pub)),
    ("ECDSA sign (RFC 6979)", lambda: p256.sign(d, digest)),
    ("ECDSA verify", lambda: p256.verify(pub, digest, sig)),
    ("HKDF-SHA256, 16 B out", lambda: kdf.hkdf_sha256(z, None, b"COSE_KDF_Context", 16)),
    ("AES-128-GCM encrypt 1 KB", lambda: aead.gcm_encrypt(key, iv, pt, aad)),
    ("AES-128-GCM decrypt 1 KB", lambda: aead.gcm_decrypt(key, iv, ct, aad)),
    ("GHASH 1 KB, 4-bit table", lambda: aead._ghash_blocks(0, pt, m)),
    ("GHASH 1 KB, bit by bit", lambda: ghash_bits(0, pt, h)),
]
for name, fn in OPS:
    reps = REPS if "bit by bit" not in name else max(1, REPS // 5)
    gc.collect()
    t = time.ticks_us()
    for _ in range(reps):
        fn()
    us = time.ticks_diff(time.ticks_us(), t) / reps
    gc.collect()
    before = gc.mem_alloc()
    total = micropython.mem_total()
    fn()
    allocated = micropython.mem_total() - total
    gc.collect()
    print(json.dumps({"op": name, "us": us, "allocated": allocated, "held": gc.mem_alloc() - before}))
print(json.dumps({"imported": imported, "with_table": with_table}))
"""

SEAL_SHAPED = r"""
import os
from ue import p256, aead, kdf
d, pub = p256.keygen()
e, epub = p256.keygen()
z = p256.ecdh(e, pub)
k = kdf.hkdf_sha256(z, None, b"COSE_KDF_Context", 16)
ct = aead.gcm_encrypt(k, os.urandom(12), os.urandom(1024), b"Encrypt0")
sig = p256.sign(d, os.urandom(32))
print("ok")
"""


def _cpython_us(fn: Callable[[], object], reps: int) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e6


def cpython_baseline(reps: int) -> dict[str, float]:
    reps *= 10
    d = ec.generate_private_key(ec.SECP256R1())
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    digest = os.urandom(32)
    algo = ec.ECDSA(Prehashed(hashes.SHA256()))
    det = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)
    sig = d.sign(digest, algo)
    z = d.exchange(ec.ECDH(), peer)
    key, iv, pt, aad = os.urandom(16), os.urandom(12), os.urandom(1024), os.urandom(16)
    gcm = AESGCM(key)
    ct = gcm.encrypt(iv, pt, aad)
    return {
        "P-256 keygen": _cpython_us(lambda: ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers(),
                                    reps),
        "P-256 public_of": _cpython_us(lambda: d.public_key().public_numbers(), reps),
        "P-256 ECDH": _cpython_us(lambda: d.exchange(ec.ECDH(), peer), reps),
        "ECDSA sign (RFC 6979)": _cpython_us(lambda: d.sign(digest, det), reps),
        "ECDSA verify": _cpython_us(lambda: d.public_key().verify(sig, digest, algo), reps),
        "HKDF-SHA256, 16 B out": _cpython_us(
            lambda: HKDF(hashes.SHA256(), 16, None, b"COSE_KDF_Context").derive(z), reps),
        "AES-128-GCM encrypt 1 KB": _cpython_us(lambda: gcm.encrypt(iv, pt, aad), reps),
        "AES-128-GCM decrypt 1 KB": _cpython_us(lambda: gcm.decrypt(iv, ct, aad), reps),
    }


def min_heap_kib(lo: int = 8, hi: int = 100) -> int | None:
    """Smallest heapsize (KiB) in which SEAL_SHAPED completes, or None if not even ``hi``."""
    def fits(kib: int) -> bool:
        try:
            return run_mp(SEAL_SHAPED, heap=f"{kib}k", timeout=60).strip() == "ok"
        except MicroPythonFailed as exc:
            # The unix port prints an uncaught exception's traceback on stdout.
            if "MemoryError" in exc.stdout + exc.stderr:
                return False
            raise
    if not fits(hi):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _fmt_us(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50, help="repetitions per operation under MicroPython")
    args = ap.parse_args()

    out = run_mp(f"REPS = {args.reps}\n" + TIMING_SCRIPT, heap="100k", timeout=600)
    rows = [json.loads(line) for line in out.splitlines()]
    heap = rows.pop()
    base = cpython_baseline(args.reps)

    print(f"## Node crypto under `micropython -X heapsize=100k` (unix port), {args.reps} reps\n")
    print("| Operation | MicroPython | allocated / call | held after | ESP32 est. x120 (x186) | "
          "CPython + cryptography |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        esp = f"{_fmt_us(r['us'] * ESP32_FACTOR)} ({_fmt_us(r['us'] * ESP32_FACTOR_PESSIMISTIC)})"
        ref = _fmt_us(base[r["op"]]) if r["op"] in base else "—"
        print(f"| {r['op']} | {_fmt_us(r['us'])} | {r['allocated'] / 1024:.1f} KiB | {r['held']} B | {esp} | {ref} |")
    print()
    print(f"Resident after importing ue.p256, ue.aead, ue.kdf (compiled from source): "
          f"{heap['imported'] / 1024:.1f} KiB; with the fixed-base comb table built: "
          f"{heap['with_table'] / 1024:.1f} KiB")
    kib = min_heap_kib()
    shown = f"{kib} KiB" if kib is not None else "more than 100 KiB"
    print(f"Smallest -X heapsize for keygen + ephemeral keygen + ECDH + HKDF + GCM(1 KB) + sign, "
          f"imports included: {shown}")


if __name__ == "__main__":
    main()
