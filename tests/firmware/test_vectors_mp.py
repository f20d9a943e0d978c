"""The node opens the shared test vectors (docs/test-vectors/) with its own code only, under the
real ``micropython -X heapsize=100k``: firmware/ue/{cbor,cose,p256,aead,kdf} (and identity.py's
certificate key reader).

The vectors were sealed by the gateway's CPython code (scripts/make_test_vectors.py). Whatever
the node would need to have written the same bytes, it must be able to read back, bit for bit:
the fixed headers are the node's constants, the CEK comes out of the node's ECDH + HKDF with the
published IOC key, the node's GCM decrypts, the node's ES256 verifies the gateway's signature,
and the node's batch encoder, given the decoded records as the node would hold them (floats,
times in ms, maps in key-table order), writes the payload inside the vector again byte for byte.

CPython only prepares inputs (the IOC scalar read from its PEM with ``cryptography``, the
certificates as DER, two tampered copies) and checks what the node printed against
expected.json and against its own decoders. One MicroPython run does all the node's work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.envelope import decrypt
from tests.support.micropython import run_mp

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"
BATCHES = ("batch.cose", "alarm.cose")
TYPES = {"batch.cose": 2, "alarm.cose": 0}  # telemetry / alarm (docs/wire-format.md)
CT_FLIPPED = "batch-ct-flipped.cose"
SIG_FLIPPED = "cert-sig-flipped.cose"

# Everything the node does. Each result is one JSON line [vector, step, value]; a step that
# raises prints [vector, "error", "<Type>: <message>"] and ends that vector, so a test below
# can tell which step failed (and a tampered vector must fail at the step it targets).
NODE_SCRIPT = r"""
import gc, hashlib, json, struct, sys
from binascii import hexlify
from collections import OrderedDict
from ue import aead, cbor, cose, identity, kdf, p256

DIR = sys.argv[1]
SCALAR = int(sys.argv[2], 16)


def rd(name):
    with open(DIR + "/" + name, "rb") as f:
        return f.read()


def h(b):
    return hexlify(b).decode()


def emit(name, step, value):
    print(json.dumps([name, step, value]))


def export(o):
    # Tagged JSON: floats as their 64-bit pattern, so nothing is lost in printing.
    if o is None or isinstance(o, (bool, int, str)):
        return o
    if isinstance(o, float):
        return ["F", h(struct.pack(">d", o))]
    if isinstance(o, cbor.Dec):
        return ["D", o.mantissa, o.exp]
    if isinstance(o, (bytes, bytearray)):
        return ["B", h(o)]
    if isinstance(o, list):
        return ["L", [export(x) for x in o]]
    if isinstance(o, dict):
        return ["M", [[export(k), export(v)] for k, v in o.items()]]
    if isinstance(o, cbor.Tag):
        return ["T", o.tag, export(o.value)]
    raise TypeError("cannot export %r" % (o,))


def ms_of(v):
    # float64 seconds -> integer milliseconds, correctly rounded, in integer arithmetic (the
    # node's times are ms ints); plus whether that ms value maps back to the very same float.
    bits = cbor.float_bits(v)
    m = (bits & 0xFFFFFFFFFFFFF) | (1 << 52)
    q = ((bits >> 52) & 0x7FF) - 1075
    if q >= 0:
        ms = (m * 1000) << q
    else:
        ms, r = divmod(m * 1000, 1 << -q)
        half = 1 << (-q - 1)
        if r > half or (r == half and ms & 1):
            ms += 1
    if bits >> 63:
        ms = -ms
    return ms, cbor.float_ratio(ms, 1000) == bits


def dec_float(d):
    # A decimal fraction back to the float reading it was made from (what a sensor gives the node).
    if d.exp >= 0:
        return float(d.mantissa * 10 ** d.exp)
    bits = cbor.float_ratio(d.mantissa, 10 ** -d.exp)
    return struct.unpack(">d", bits.to_bytes(8, "big"))[0]


def resolve(o, keys):
    # Index keys -> names. Maps become OrderedDicts in key-table order: the payload writes
    # them sorted by index, the node's decoder returns plain (unordered) dicts.
    if isinstance(o, dict):
        m = OrderedDict()
        for i in sorted(o):
            m[keys[i]] = resolve(o[i], keys)
        return m
    if isinstance(o, list):
        return [resolve(x, keys) for x in o]
    if isinstance(o, cbor.Dec):
        return dec_float(o)
    return o


def sig_digest(protected, payload):
    return hashlib.sha256(cbor.dumps(["Signature1", protected, b"", payload])).digest()


def flipped(sig):
    bad = bytearray(sig)
    bad[17] ^= 0x01
    return bytes(bad)


def open_batch(name):
    data = rd(name)
    env = cbor.loads(data)
    if not (isinstance(env, cbor.Tag) and env.tag == cose.TAG_ENCRYPT and len(env.value) == 4):
        raise ValueError("not a tagged COSE_Encrypt")
    protected, unprotected, ct, recipients = env.value
    emit(name, "enc_protected", protected == cose.ENC_PROTECTED)
    iv = unprotected[5]
    emit(name, "iv", [sorted(unprotected), len(iv)])
    [[r_protected, r_unprotected, r_ct]] = recipients
    emit(name, "rcpt_protected", r_protected == cose.RCPT_PROTECTED)
    emit(name, "rcpt_ct_empty", r_ct == b"")
    eph = r_unprotected[-1]
    emit(name, "eph_key", [sorted(r_unprotected), sorted(eph), eph[1], eph[-1]])
    kid = r_unprotected[4]
    emit(name, "kid", [h(kid), kid == cose.kid_of(IOC_DER)])
    # The CEK as cose._encrypt derives it, from the other side of the same ECDH.
    z = p256.ecdh(SCALAR, eph[-2] + eph[-3])
    cek = kdf.hkdf_sha256(z, None, cose.KDF_CONTEXT, 16)
    z = eph = env = data = None
    gc.collect()
    plain = aead.gcm_decrypt(cek, iv, ct, cose.ENC_AAD)
    ct = None
    emit(name, "plaintext", h(plain))
    sign1 = cbor.loads(plain)
    if not (isinstance(sign1, cbor.Tag) and sign1.tag == cose.TAG_SIGN1 and len(sign1.value) == 4):
        raise ValueError("not a tagged COSE_Sign1")
    s_protected, s_unprotected, payload, sig = sign1.value
    emit(name, "sign1_protected", s_protected == cose.sign1_protected(X5T))
    emit(name, "sign1_unprotected", export(s_unprotected))
    digest = sig_digest(s_protected, payload)
    emit(name, "sig_valid", p256.verify(LEAF_XY, digest, sig))
    emit(name, "flipped_sig_valid", p256.verify(LEAF_XY, digest, flipped(sig)))
    doc = cbor.loads(payload)
    emit(name, "payload_hex", h(payload))
    emit(name, "payload", export(doc))
    keys, src = doc["keys"], doc["src"]
    t0_ms, t0_exact = ms_of(doc["t0"])
    sent_ms, sent_exact = ms_of(doc["sent"])
    emit(name, "times", [t0_ms, t0_exact, sent_ms, sent_exact])
    records = []
    for seq, typ, device_id, dt_ms, body in doc["recs"]:
        records.append((seq, typ, device_id, t0_ms + dt_ms, resolve(body, keys)))
    emit(name, "records", [[r[0], r[1], r[2], r[3], export(r[4])] for r in records])
    doc = None
    gc.collect()
    again = cose.batch_payload(src, sent_ms, records)
    emit(name, "reencoded_hex", h(again))
    emit(name, "reencoded_identical", bytes(again) == bytes(payload))
    # The whole COSE_Sign1 but the signature, as the node's own sign1() lays it out.
    mine = cose.sign1(again, 1, X5T)
    emit(name, "sign1_layout_identical", bytes(mine[:-64]) == bytes(plain[:-64]))


def check_announcement(name):
    data = rd(name)
    ann = cbor.loads(data)
    if not (isinstance(ann, cbor.Tag) and ann.tag == cose.TAG_SIGN1 and len(ann.value) == 4):
        raise ValueError("not a tagged COSE_Sign1")
    protected, unprotected, payload, sig = ann.value
    x5chain = unprotected[33]
    emit(name, "unprotected_keys", sorted(unprotected))
    emit(name, "x5chain_is_gateway_chain", x5chain == CHAIN)
    leaf_xy = identity.cert_public_key(x5chain[0])
    emit(name, "leaf_xy", h(leaf_xy))
    emit(name, "protected", protected == cose.sign1_protected(cose.x5t_of(x5chain[0])))
    digest = sig_digest(protected, payload)
    emit(name, "sig_valid", p256.verify(leaf_xy, digest, sig))
    body = cbor.loads(payload)
    emit(name, "payload", export(body))
    ts_ms, exact = ms_of(body["ts"])
    emit(name, "ts", [ts_ms, exact])
    mine = cose.announcement(body["src"], ts_ms, 1, x5chain, cose.x5t_of(x5chain[0]))
    emit(name, "layout_identical", bytes(mine[:-64]) == bytes(data[:-64]))


IOC_DER = rd("ioc.der")
CHAIN = identity.split_ders(rd("gateway-chain.der"))
LEAF_XY = identity.cert_public_key(CHAIN[0])
X5T = cose.x5t_of(CHAIN[0])
emit("-", "leaf_xy", h(LEAF_XY))
emit("-", "ioc_scalar_is_the_certs_key", p256.public_of(SCALAR) == identity.cert_public_key(IOC_DER))

for name, check in (("batch.cose", open_batch), ("alarm.cose", open_batch), ("BAD_CT", open_batch),
                    ("cert.cose", check_announcement), ("BAD_SIG", check_announcement)):
    try:
        check(name)
    except Exception as e:
        emit(name, "error", "%s: %s" % (type(e).__name__, e))
    gc.collect()
emit("-", "done", True)
"""


def from_node(o: Any) -> Any:
    """A value as the node's ``export`` printed it, back to Python (Decimal for tag 4, like cbor2)."""
    if isinstance(o, list):
        tag = o[0]
        if tag == "F":
            return struct.unpack(">d", bytes.fromhex(o[1]))[0]
        if tag == "D":
            return Decimal(o[1]).scaleb(o[2])
        if tag == "B":
            return bytes.fromhex(o[1])
        if tag == "L":
            return [from_node(x) for x in o[1]]
        if tag == "M":
            return {from_node(k): from_node(v) for k, v in o[1]}
        if tag == "T":
            return cbor2.CBORTag(o[1], from_node(o[2]))
        raise ValueError(f"unknown export tag {tag!r}")
    return o


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _flip(data: bytes, part: bytes, at: int) -> bytes:
    """data with bit 0 of byte ``at`` of ``part`` (which occurs exactly once in data) flipped."""
    pos = data.find(part)
    assert pos >= 0 and data.find(part, pos + 1) < 0
    out = bytearray(data)
    out[pos + at] ^= 0x01
    return bytes(out)


@dataclass
class NodeRun:
    steps: dict[str, dict[str, Any]]  # vector -> step -> value
    chain: list[bytes]
    ioc_der: bytes
    ioc_key: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeRun:
    work = tmp_path_factory.mktemp("vectors")
    key = serialization.load_pem_private_key((VECTORS / "ioc-recipient.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ioc_der = _der(x509.load_pem_x509_certificate((VECTORS / "ioc-recipient.pem").read_bytes()))
    chain = [_der(c) for c in x509.load_pem_x509_certificates((VECTORS / "gateway-chain.pem").read_bytes())]
    (work / "ioc.der").write_bytes(ioc_der)
    (work / "gateway-chain.der").write_bytes(b"".join(chain))
    for name in (*BATCHES, "cert.cose"):
        shutil.copyfile(VECTORS / name, work / name)
    # The tampered copies: one ciphertext byte (mid-message, not the tag), one signature byte.
    batch = (VECTORS / "batch.cose").read_bytes()
    ct = cbor2.loads(batch).value[2]
    (work / CT_FLIPPED).write_bytes(_flip(batch, ct, len(ct) // 2))
    cert = (VECTORS / "cert.cose").read_bytes()
    (work / SIG_FLIPPED).write_bytes(_flip(cert, cbor2.loads(cert).value[3], 40))
    script = NODE_SCRIPT.replace('"BAD_CT"', repr(CT_FLIPPED)).replace('"BAD_SIG"', repr(SIG_FLIPPED))
    out = run_mp(script, args=[str(work), f"{key.private_numbers().private_value:064x}"], timeout=120)
    steps: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        name, step, value = json.loads(line)
        steps.setdefault(name, {})[step] = value
    assert steps["-"].get("done") is True, out
    return NodeRun(steps, chain, ioc_der, key)


def _ok(node: NodeRun, name: str) -> dict[str, Any]:
    got = node.steps[name]
    assert "error" not in got, f"{name}: the node failed: {got['error']}"
    return got


def _xy(cert_der: bytes) -> str:
    pub = x509.load_der_x509_certificate(cert_der).public_key()
    raw = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return raw[1:].hex()


def test_the_node_reads_the_keys_it_was_given(node: NodeRun) -> None:
    # The node's certificate reader finds the same gateway key as cryptography, and the IOC
    # scalar (read by CPython from PKCS#8) is the private half of the IOC recipient certificate.
    assert node.steps["-"]["leaf_xy"] == _xy(node.chain[0])
    assert node.steps["-"]["ioc_scalar_is_the_certs_key"] is True


@pytest.mark.parametrize("name", BATCHES)
def test_envelope_headers_are_the_nodes_constants(node: NodeRun, name: str) -> None:
    got = _ok(node, name)
    assert got["enc_protected"] is True
    assert got["rcpt_protected"] is True and got["rcpt_ct_empty"] is True
    assert got["iv"] == [[5], 12]
    assert got["eph_key"] == [[-1, 4], [-3, -2, -1, 1], 2, 1]  # EC2 on P-256
    kid_hex, kid_same = got["kid"]
    assert kid_same is True
    assert kid_hex == hashlib.sha256(node.ioc_der).digest()[:8].hex()


@pytest.mark.parametrize("name", BATCHES)
def test_the_nodes_cek_and_gcm_decrypt_the_vector(node: NodeRun, name: str) -> None:
    got = _ok(node, name)
    data = (VECTORS / name).read_bytes()
    kid = cbor2.loads(data).value[3][0][1][4]
    assert bytes.fromhex(got["plaintext"]) == decrypt(data, node.ioc_key, kid)


@pytest.mark.parametrize("name", BATCHES)
def test_the_nodes_es256_verifies_the_gateways_signature(node: NodeRun, name: str) -> None:
    got = _ok(node, name)
    assert got["sign1_protected"] is True
    assert got["sign1_unprotected"] == ["M", []]
    assert got["sig_valid"] is True
    assert got["flipped_sig_valid"] is False


@pytest.mark.parametrize("name", BATCHES)
def test_the_node_decodes_the_records_of_expected_json(node: NodeRun, name: str) -> None:
    got = _ok(node, name)
    expected = json.loads((VECTORS / "expected.json").read_text())
    payload = bytes.fromhex(got["payload_hex"])
    # The node's CBOR decoder agrees with cbor2 on the whole payload (tag 4 as Decimal in both).
    assert from_node(got["payload"]) == cbor2.loads(payload)
    doc = cbor2.loads(payload)
    assert doc["src"] == expected["source"]
    t0_ms, t0_exact, sent_ms, sent_exact = got["times"]
    assert t0_exact is True and sent_exact is True
    assert sent_ms == Decimal(repr(expected["generated"])) * 1000
    records = []
    for seq, typ, device_id, ts_ms, body in got["records"]:
        assert typ == TYPES[name]
        records.append({"seq": seq, "device_id": device_id, "ts_ms": ts_ms, **from_node(body)})
    want = []
    for rec in expected[name]:
        rec = dict(rec)
        ts_ms = Decimal(repr(rec.pop("ts"))) * 1000
        assert ts_ms == int(ts_ms)
        want.append({**rec, "ts_ms": int(ts_ms)})
    # As JSON text: 80 vs 80.0 or True vs 1 would compare equal as Python values.
    assert json.dumps(records, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert min(r["ts_ms"] for r in records) == t0_ms


@pytest.mark.parametrize("name", BATCHES)
def test_the_nodes_encoder_rewrites_the_payload_byte_for_byte(node: NodeRun, name: str) -> None:
    got = _ok(node, name)
    assert got["reencoded_hex"] == got["payload_hex"]
    assert got["reencoded_identical"] is True
    assert got["sign1_layout_identical"] is True


def test_the_node_verifies_the_announcement(node: NodeRun) -> None:
    got = _ok(node, "cert.cose")
    assert got["unprotected_keys"] == [33]
    assert got["x5chain_is_gateway_chain"] is True
    assert got["leaf_xy"] == _xy(node.chain[0])
    assert got["protected"] is True
    assert got["sig_valid"] is True
    expected = json.loads((VECTORS / "expected.json").read_text())
    body = from_node(got["payload"])
    assert body == {"src": expected["source"], "ts": expected["generated"]}
    ts_ms, exact = got["ts"]
    assert exact is True and ts_ms == Decimal(repr(expected["generated"])) * 1000
    # Everything but the signature is what the node's own announcement() writes.
    assert got["layout_identical"] is True


def test_a_flipped_ciphertext_byte_fails_the_nodes_gcm_tag_check(node: NodeRun) -> None:
    got = node.steps[CT_FLIPPED]
    # Everything before the tag check still holds: the failure is the tag's, not the parse's.
    assert got["enc_protected"] is True and got["kid"][1] is True
    assert got["error"] == "ValueError: gcm: authentication failed"
    assert "plaintext" not in got


def test_a_flipped_signature_byte_fails_the_nodes_p256_verify(node: NodeRun) -> None:
    got = node.steps[SIG_FLIPPED]
    assert "error" not in got, got.get("error")
    assert got["protected"] is True and got["x5chain_is_gateway_chain"] is True
    assert got["sig_valid"] is False
