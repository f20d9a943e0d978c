"""Fuzz target: everything the IOC does with a message from the network.

The property: whatever bytes arrive, ``Opener.open`` / ``Opener.learn_announcement`` either
succeed or raise ``ioc.verify.Rejected`` — no other exception escapes.

    pip install atheris && python tests/fuzz/fuzz_ioc_open.py -max_total_time=600   # coverage-guided
    python tests/fuzz/fuzz_ioc_open.py --iterations 200000                         # without atheris

Seeds are the committed test vectors (docs/test-vectors/); without atheris the harness
mutates them at random (bit flips, truncations, splices, CBOR-significant bytes).
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from ioc.verify import Opener, Rejected
from pki.keys import load_cert, load_certs, load_private_key

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"
_INTERESTING = bytes([0x00, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x40, 0x5F, 0x60, 0x7F, 0x80, 0x9F, 0xA0, 0xBF,
                      0xC4, 0xD2, 0xD8, 0xF6, 0xF9, 0xFA, 0xFB, 0xFF])


def make_opener() -> Opener:
    import json

    key = load_private_key(VECTORS / "ioc-recipient.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    at = json.loads((VECTORS / "expected.json").read_text())["generated"]
    opener = Opener(key, load_cert(VECTORS / "ioc-recipient.pem"), load_cert(VECTORS / "root.pem"),
                    clock=lambda: at)
    opener.learn_chain(load_certs(VECTORS / "gateway-chain.pem"))
    return opener


def seeds() -> list[bytes]:
    return [(VECTORS / n).read_bytes() for n in ("batch.cose", "alarm.cose", "cert.cose")]


def target(opener: Opener) -> Callable[[bytes], None]:
    def one(data: bytes) -> None:
        for fn in (opener.open, opener.learn_announcement):
            with contextlib.suppress(Rejected):
                fn(data)
    return one


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(at, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[min(at, len(b) - 1)] = rng.choice(_INTERESTING)
        elif op == 2:
            del b[at:at + rng.randint(1, 16)]
        elif op == 3:
            other = rng.choice(pool)
            start = rng.randrange(len(other))
            b[at:at] = other[start:start + rng.randint(1, 32)]
        else:
            b = b[:at]
    return bytes(b)


def run_random(iterations: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    pool = seeds()
    one = target(make_opener())
    for _ in range(iterations):
        one(mutate(rng, rng.choice(pool), pool))
    return iterations


def main() -> None:
    if "--iterations" in sys.argv:
        n = int(sys.argv[sys.argv.index("--iterations") + 1])
        print(f"ran {run_random(n)} mutated messages: only Rejected escaped")
        return
    import atheris  # type: ignore[import-not-found]

    one = target(make_opener())
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
