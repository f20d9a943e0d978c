"""The node may share one ephemeral key (and CEK) between a few messages
(firmware/ue/cose.py EphemeralCache) to save two of three P-256 multiplications per batch:
every such message still opens with the IOC's key alone, each has its own IV, and a new
ephemeral key comes after max_uses messages."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.envelope import decrypt, parse_sign1, recipient_kid
from pki.keys import load_cert, load_private_key
from tests.support import testpki
from tests.support.micropython import run_mp

SCRIPT = r"""
import sys, json
from binascii import hexlify
from ue import cose, p256, identity
with open(sys.argv[1], "rb") as f:
    ioc = f.read()
rxy = identity.cert_public_key(ioc)
kid = cose.kid_of(ioc)
d, pub = p256.keygen()
cache = cose.EphemeralCache(max_uses=2)
out = []
for i in range(5):
    payload = bytes([0xa1, 0x61, 0x6e, i])  # {"n": i}
    out.append(hexlify(cose.seal(payload, d, bytes(32), rxy, kid, cache)).decode())
print(json.dumps({"sealed": out, "derivations": cache.derivations}))
"""


def test_messages_sharing_an_ephemeral_key_each_open_with_the_ioc_key(tmp_path: Path) -> None:
    pki = testpki.shared_pki()
    cert = load_cert(pki.ioc_recipient_cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    (tmp_path / "ioc.der").write_bytes(der)
    # A functional check, not a heap budget (bench_node.py measures that): the script keeps
    # five hex-encoded messages and imports identity on top of the sealing code.
    got = json.loads(run_mp(SCRIPT, args=[str(tmp_path / "ioc.der")], heap="200k"))
    key = load_private_key(pki.ioc_recipient_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ephemerals, ivs = [], set()
    for i, hexed in enumerate(got["sealed"]):
        data = bytes.fromhex(hexed)
        s1 = parse_sign1(decrypt(data, key, recipient_kid(der)))
        assert cbor2.loads(s1.payload) == {"n": i}
        outer = cbor2.loads(data).value
        ivs.add(outer[1][5])
        ephemerals.append(outer[3][0][1][-1][-2])
    assert got["derivations"] == 3
    assert ephemerals[0] == ephemerals[1] != ephemerals[2] == ephemerals[3] != ephemerals[4]
    assert len(ivs) == 5
