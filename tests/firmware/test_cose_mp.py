"""The node's CBOR, batch payload and COSE envelope (firmware/ue/cbor.py, cose.py) under the
real ``micropython -X heapsize=100k``, checked against the gateway's CPython code and others'.

The node generates its signing key (``p256.keygen``) and keeps it in its own flash directory;
the test only sees the public key, for which it issues a ``node`` certificate from a
throw-away provincial PKI (cryptography + the issuing CA's ``CaDir``). The node's envelopes
must then open with the IOC's ``ioc.verify.Opener`` and with pycose, and its batch payload
must be byte-identical to ``agent.seal.payload.encode`` for the same records.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.buffer.records import Priority, StoredRecord, alarm, event, telemetry
from agent.seal.payload import compact_number
from agent.seal.payload import decode as decode_payload
from agent.seal.payload import encode as encode_payload
from ioc.verify import Opener, Rejected
from pki import certs
from pki.castore import CaDir
from pki.envelope import cert_thumbprint, decrypt, recipient_kid
from pki.keys import load_cert, load_crls, load_private_key
from pki.profiles import SubjectFields, end_entity_profile
from pki.throwaway import ThrowawayPki, build_throwaway_pki
from tests.integration.test_cose_interop import pycose_learn, pycose_open
from tests.support.micropython import run_mp

NODE_ID = "flood-canal-07"
T0_MS = 1_764_061_195_004
SENT_MS = 1_764_061_260_123
ANNOUNCE_MS = 1_764_061_100_500

# Converts the test's JSON encoding of values back to node objects: maps keep their key order
# (OrderedDict: MicroPython's dict does not), floats travel as their exact 64-bit pattern.
NODE_PRELUDE = r"""
import gc, json, struct, sys
from binascii import hexlify, unhexlify
from collections import OrderedDict

def conv(o):
    if isinstance(o, list):
        t = o[0]
        if t == "M":
            m = OrderedDict()
            for k, v in o[1]:
                m[conv(k)] = conv(v)
            return m
        if t == "L":
            return [conv(x) for x in o[1]]
        if t == "F":
            return struct.unpack(">d", unhexlify(o[1]))[0]
        if t == "B":
            return unhexlify(o[1])
    return o

class JsonlRecords:
    # Re-reads the records at each iteration, as the node agent reads them from its flash log:
    # batch_payload iterates twice and never needs them all in RAM.
    def __init__(self, path):
        self.path = path

    def __iter__(self):
        with open(self.path) as f:
            for line in f:
                r = json.loads(line)
                yield (r[0], r[1], r[2], r[3], conv(r[4]))

def h(b):
    return hexlify(b).decode()

def out(tag, data):
    # "tag hex", streamed in slices: a 5 KB payload as one hex string would not fit next to it.
    sys.stdout.write(tag + " ")
    mv = memoryview(data)
    for i in range(0, len(data), 256):
        sys.stdout.write(hexlify(mv[i:i + 256]).decode())
    sys.stdout.write("\n")
"""


def to_node(obj: Any) -> Any:
    if isinstance(obj, dict):
        return ["M", [[to_node(k), to_node(v)] for k, v in obj.items()]]
    if isinstance(obj, list | tuple):
        return ["L", [to_node(x) for x in obj]]
    if isinstance(obj, float):
        return ["F", struct.pack(">d", obj).hex()]
    if isinstance(obj, bytes):
        return ["B", obj.hex()]
    return obj


def outputs(text: str) -> dict[str, str]:
    """{tag: hex} from the node's "tag hex" lines."""
    got: dict[str, str] = {}
    for line in text.splitlines():
        tag, _, value = line.partition(" ")
        got[tag] = value
    return got


# --- the records both sides encode --------------------------------------------------------


def make_records(seed: int, n: int) -> list[StoredRecord]:
    """Telemetry of flood sensors and streetlights with every kind of number, plus alarms and events."""
    rng = random.Random(seed)
    recs: list[StoredRecord] = []
    for i in range(n):
        ts = (T0_MS + i * 1000 + rng.randint(0, 999)) / 1000
        dev = f"flood-{i % 4}" if i % 3 else f"sl-{i % 5}"
        if i % 17 == 5:
            new = alarm(dev, "flood-sensor", ts, "flood_danger", "raised", "danger", "water_level",
                        round(200 + rng.uniform(0, 20), 1), threshold=200)
        elif i % 23 == 7:
            new = event(dev, ts, "device_offline", kind="water-meter", reason="timeout", detail="no reply ☂")
        elif i % 3:
            values: dict[str, Any] = {
                "water_level": round(rng.uniform(0, 300), 1),      # short decimal: tag 4
                "distance": rng.randint(0, 5000),                  # int
                "battery": round(rng.uniform(3.0, 4.2), 2),
            }
            if i % 10 == 1:  # every kind of number, on some readings (a batch stays realistic in size)
                values["rainfall"] = rng.uniform(0, 500)           # float64
                values["gain"] = struct.unpack(">f", struct.pack(">f", rng.uniform(-1, 1)))[0]  # float32-exact
                values["flow"] = [0.5, -2.25, round(rng.uniform(0, 1), 4), 1e-7, 1.0e20, -3]
            quality = "good" if i % 11 else "error"
            new = telemetry(dev, "flood-sensor", ts, values, quality=quality,
                            point_quality={"rainfall": "error"} if quality == "error" else None,
                            error="timeout" if quality == "error" else None)
        else:
            new = telemetry(dev, "streetlight", ts, {"lamp_on": bool(i % 2), "voltage": 229.7 + i / 10,
                                                     "current": None, "power": 88.0})
        recs.append(StoredRecord(1041 + i, new.prio, new.device_id, new.ts, new.body))
    return recs


def node_records(recs: list[StoredRecord]) -> list[Any]:
    """The same records as the node holds them: time in ms, body without ts, key order kept."""
    out = []
    for r in recs:
        body = json.loads(r.body)
        body.pop("ts", None)
        out.append([r.seq, int(r.prio), r.device_id, round(r.ts * 1000), to_node(body)])
    return out


# --- the PKI, the node's key and certificate, and everything the node seals ---------------


@dataclass
class NodeRun:
    pki: ThrowawayPki
    cert: x509.Certificate
    chain: list[bytes]
    out: dict[str, str]
    records: list[StoredRecord]  # 60 records: payload only (byte-exact check)
    small: list[StoredRecord]  # 24 of them, sealed: a 100 KB heap seals up to ~3 KB of payload
    alarms: list[StoredRecord]


def issue_node_certificate(pki: ThrowawayPki, device_id: str, xy: bytes) -> x509.Certificate:
    """What the provincial issuing CA does for a node's public key (no CSR: the node cannot make one)."""
    ca = CaDir.open(pki.dir / "issuing").unlock((pki.dir / "ca-passphrase").read_bytes().strip())
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big"),
                                           ec.SECP256R1()).public_key()
    subject = SubjectFields(device_id, pki.province, f"UrbanEdge {pki.province}", "canal", device_id.upper())
    now = datetime.now(UTC)
    return certs.sign_certificate(profile=end_entity_profile("node"), subject=subject.name(), subject_key=public,
                                  issuer_cert=ca.cert, issuer_key=ca.key,
                                  valid=certs.validity(now, 30, issuer=ca.cert), device_id=device_id,
                                  crl_url=ca.index.crl_url)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _xy(cert: x509.Certificate) -> bytes:
    raw = cert.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return raw[1:]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeRun:
    base = tmp_path_factory.mktemp("node")
    pki = build_throwaway_pki(base / "pki", [])
    flash = base / "flash"
    flash.mkdir()
    # 1. The node makes its key; only the public half comes out.
    got = outputs(run_mp(NODE_PRELUDE + """
from ue import p256
d, xy = p256.keygen()
with open(sys.argv[1] + "/sign.key", "wb") as f:
    f.write(d.to_bytes(32, "big"))
out("public", xy)
""", args=[str(flash)]))
    cert = issue_node_certificate(pki, NODE_ID, bytes.fromhex(got["public"]))
    ioc_cert = load_cert(pki.ioc_recipient_cert)
    chain = [_der(cert), _der(load_cert(pki.issuing_cert))]
    records = make_records(7, 60)
    alarms = [r for r in make_records(8, 40) if r.prio == Priority.ALARM]
    inputs = {
        "src": NODE_ID, "sent": SENT_MS, "announce": ANNOUNCE_MS,
        "x5t": cert_thumbprint(_der(cert)).hex(), "kid": recipient_kid(_der(ioc_cert)).hex(),
        "rcpt": _xy(ioc_cert).hex(), "chain": [c.hex() for c in chain],
    }
    (flash / "inputs.json").write_text(json.dumps(inputs))
    # One record per line: the node converts them one at a time (its heap is 100 KB).
    small = records[:24]
    for name, recs in (("batch", records), ("small", small), ("alarms", alarms)):
        (flash / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in node_records(recs)))
    # 2. The node encodes a 60-record batch and seals a smaller one, an alarm batch (twice: each
    #    seal is fresh) and its certificate announcement.
    got = outputs(run_mp(NODE_PRELUDE + """
from ue import cose
flash = sys.argv[1]
with open(flash + "/sign.key", "rb") as f:
    d = int.from_bytes(f.read(), "big")
inp = json.load(open(flash + "/inputs.json"))
x5t, kid, rcpt = unhexlify(inp["x5t"]), unhexlify(inp["kid"]), unhexlify(inp["rcpt"])
for name in ("batch", "small", "alarms"):
    payload = cose.batch_payload(inp["src"], inp["sent"], JsonlRecords(flash + "/" + name + ".jsonl"))
    out(name + ".payload", payload)
    if name != "batch":
        out(name + ".sealed", cose.seal(payload, d, x5t, rcpt, kid))
    if name == "alarms":
        out("alarms.sealed2", cose.seal(payload, d, x5t, rcpt, kid))
    payload = None
    gc.collect()
chain = [unhexlify(c) for c in inp["chain"]]
out("announcement", cose.announcement(inp["src"], inp["announce"], d, chain, x5t))
""", args=[str(flash)], timeout=300))
    return NodeRun(pki, cert, chain, got, records, small, alarms)


def _opener(pki: ThrowawayPki) -> Opener:
    key = load_private_key(pki.ioc_recipient_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Opener(key, load_cert(pki.ioc_recipient_cert), load_cert(pki.root_cert), crls=load_crls(pki.crl))


# --- byte-exact with the gateway ----------------------------------------------------------


@pytest.mark.parametrize("name", ["batch", "small", "alarms"])
def test_node_payload_is_byte_identical_to_the_gateways(node: NodeRun, name: str) -> None:
    recs = {"batch": node.records, "small": node.small, "alarms": node.alarms}[name]
    expected = encode_payload(NODE_ID, recs, sent_ts=SENT_MS / 1000)
    assert bytes.fromhex(node.out[f"{name}.payload"]) == expected


def test_node_envelope_has_the_gateways_structure(node: NodeRun) -> None:
    sealed = cbor2.loads(bytes.fromhex(node.out["small.sealed"]))
    assert isinstance(sealed, cbor2.CBORTag) and sealed.tag == 96
    protected, unprotected, _ciphertext, recipients = sealed.value
    assert protected == cbor2.dumps({1: 1}) and list(unprotected) == [5] and len(unprotected[5]) == 12
    [[r_protected, r_unprotected, r_ct]] = recipients
    assert r_protected == cbor2.dumps({1: -25}) and r_ct == b""
    assert list(r_unprotected) == [-1, 4]
    assert r_unprotected[4] == recipient_kid(_der(load_cert(node.pki.ioc_recipient_cert)))
    eph = r_unprotected[-1]
    assert list(eph) == [1, -1, -2, -3] and eph[1] == 2 and eph[-1] == 1 and len(eph[-2]) == len(eph[-3]) == 32
    key = load_private_key(node.pki.ioc_recipient_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    inner = decrypt(bytes.fromhex(node.out["small.sealed"]), key, r_unprotected[4])
    sign1 = cbor2.loads(inner)
    assert sign1.tag == 18
    s_protected, s_unprotected, payload, signature = sign1.value
    # The protected header is the gateway's, byte for byte (it is signed).
    assert s_protected == cbor2.dumps({1: -7, 34: [-16, cert_thumbprint(_der(node.cert))]})
    assert s_unprotected == {} and len(signature) == 64
    assert payload == bytes.fromhex(node.out["small.payload"])


def test_announcement_payload_and_headers_match_the_gateways(node: NodeRun) -> None:
    ann = cbor2.loads(bytes.fromhex(node.out["announcement"]))
    protected, unprotected, payload, _ = ann.value
    assert protected == cbor2.dumps({1: -7, 34: [-16, cert_thumbprint(_der(node.cert))]})
    assert unprotected == {33: node.chain}
    assert payload == cbor2.dumps({"src": NODE_ID, "ts": round(ANNOUNCE_MS / 1000, 3)})


# --- opened by the IOC and by pycose --------------------------------------------------------


def test_the_ioc_learns_the_node_and_opens_its_batches(node: NodeRun) -> None:
    opener = _opener(node.pki)
    signer = opener.learn_announcement(bytes.fromhex(node.out["announcement"]))
    assert signer.device_id == NODE_ID
    for name, recs in (("small", node.small), ("alarms", node.alarms)):
        batch = opener.open(bytes.fromhex(node.out[f"{name}.sealed"]))
        assert batch.source == NODE_ID and batch.sent == pytest.approx(SENT_MS / 1000, abs=1e-6)
        # What the IOC reads is what the gateway's own encoder would have carried.
        assert batch.records == decode_payload(encode_payload(NODE_ID, recs, sent_ts=SENT_MS / 1000)).records
        assert [r["seq"] for r in batch.records] == [r.seq for r in recs]


def test_each_seal_is_fresh_and_each_opens(node: NodeRun) -> None:
    one, two = bytes.fromhex(node.out["alarms.sealed"]), bytes.fromhex(node.out["alarms.sealed2"])
    assert one != two  # new ephemeral key and IV every time
    eph = [cbor2.loads(x).value[3][0][1][-1][-2] for x in (one, two)]
    iv = [cbor2.loads(x).value[1][5] for x in (one, two)]
    assert eph[0] != eph[1] and iv[0] != iv[1]
    opener = _opener(node.pki)
    opener.learn_chain(node.chain)
    assert opener.open(one).records == opener.open(two).records


def test_a_tampered_node_envelope_is_refused(node: NodeRun) -> None:
    opener = _opener(node.pki)
    opener.learn_chain(node.chain)
    data = bytearray.fromhex(node.out["alarms.sealed"])
    data[40] ^= 1  # inside the ciphertext
    with pytest.raises(Rejected) as exc:
        opener.open(bytes(data))
    assert exc.value.reason == "bad_ciphertext"


def test_pycose_opens_the_node_envelopes(node: NodeRun, tmp_path: Path) -> None:
    signer = pycose_learn(bytes.fromhex(node.out["announcement"]), node.pki.root_cert, tmp_path)
    assert _der(signer) == node.chain[0]
    key_pem = node.pki.ioc_recipient_key.read_text()
    for name in ("small", "alarms"):
        payload = pycose_open(bytes.fromhex(node.out[f"{name}.sealed"]), key_pem, signer)
        assert payload == bytes.fromhex(node.out[f"{name}.payload"])


# --- the CBOR encoder itself ----------------------------------------------------------------


def _corpus(seed: int) -> list[Any]:
    rng = random.Random(seed)
    edges = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**100]
    ints: list[Any] = [s * e for e in edges for s in (1, -1)] + [-(2**64), -(2**64) - 1]
    texts = ["", "a", "v", "t0", "sent", "ünïcödé ☂", "x" * 23, "y" * 24, "z" * 260]
    floats = [0.0, -0.0, 0.5, 65504.0, 32768.0, 1e-8, 2.0**-24, 2.0**-149, 3.4028234663852886e38, 0.1,
              230.4, 1764061200.123, float("inf"), float("-inf")]
    floats += [struct.unpack(">d", rng.randbytes(8))[0] for _ in range(30)]
    floats = [f for f in floats if f == f]

    def value(depth: int) -> Any:
        pick = rng.randrange(8 if depth < 2 else 6)
        if pick == 0:
            return rng.choice(ints)
        if pick == 1:
            return rng.choice(texts)
        if pick == 2:
            return rng.randbytes(rng.choice([0, 1, 24, 100]))
        if pick == 3:
            return rng.choice(floats)
        if pick == 4:
            return rng.choice([True, False, None])
        if pick == 5:
            return rng.randint(-1000, 1000)
        if pick == 6:
            return [value(depth + 1) for _ in range(rng.choice([0, 1, 5, 24]))]
        if pick == 7 and rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.choice([0, 2]))]
        keys: list[Any] = [rng.choice(ints + texts) for _ in range(rng.choice([0, 1, 6, 12]))]
        return {k: value(depth + 1) for k in keys}

    return ints + texts + floats + [value(0) for _ in range(40)]


def test_cbor_encoder_is_byte_exact_with_cbor2_canonical(tmp_path: Path) -> None:
    corpus = _corpus(3)
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(to_node(v)) + "\n" for v in corpus))
    got = run_mp(NODE_PRELUDE + """
from ue import cbor
with open(sys.argv[1]) as f:
    for line in f:
        v = conv(json.loads(line))
        data = cbor.dumps(v)
        print(h(data))
        back = cbor.loads(data)
        # Compared re-encoded: MicroPython's == between an OrderedDict and a dict with big-int
        # keys is False even when they hold the same items.
        print("same" if cbor.dumps(back) == data else "DIFF %r" % (back,))
""", args=[str(tmp_path / "corpus.jsonl")]).splitlines()
    assert len(got) == 2 * len(corpus)
    for i, v in enumerate(corpus):
        assert got[2 * i] == cbor2.dumps(v, canonical=True).hex(), f"item {i}: {v!r}"[:200]
        assert got[2 * i + 1] == "same", f"item {i}: decoder gave {got[2 * i + 1]}"[:200]


def test_cbor_float_ratio_is_correctly_rounded() -> None:
    rng = random.Random(5)
    cases = [(1_764_061_200_123, 1000), (1, 3), (2, 3), (-7, 1000), (10**20 + 1, 7), (1, 10**10)]
    cases += [(rng.randint(1, 2**45), 1000) for _ in range(200)]
    got = run_mp("from ue import cbor\n" + "\n".join(f"print('%016x' % cbor.float_ratio({n}, {d}))" for n, d in cases))
    assert got.split() == [struct.pack(">d", n / d).hex() for n, d in cases]


def test_compact_numbers_match_the_gateways_choice(tmp_path: Path) -> None:
    """Integral → int, float32-exact → float, short decimal → tag 4, else float64: the node
    decides as agent.seal.payload.compact_number does, for the same float64 values."""
    rng = random.Random(11)
    values = [64.4, 86.9, 0.682, 95.6, 230.4, 3.71, 0.0001, 0.00012, 0.00009, 1e-5, 12345678.9, 123456789.5,
              1234567.89, -0.3, -1234.5678, 2.0**53 + 2, 1e16, 1e22, 0.1, 1 / 3, 2.5, -0.0]
    for digits in range(1, 11):
        for _ in range(40):
            values.append(round(rng.uniform(-10**digits, 10**digits) / 10 ** rng.randint(0, digits), rng.randint(1, 9)))
    values += [struct.unpack(">d", rng.randbytes(8))[0] for _ in range(100)]
    values = [v for v in values if v == v and abs(v) != float("inf")]
    (tmp_path / "values.txt").write_text("".join(struct.pack(">d", v).hex() + "\n" for v in values))
    got = run_mp(NODE_PRELUDE + """
from ue import cbor, cose
with open(sys.argv[1]) as f:
    for line in f:
        print(h(cbor.dumps(cose.compact_number(struct.unpack(">d", unhexlify(line.strip()))[0]))))
""", args=[str(tmp_path / "values.txt")]).split()
    assert got == [cbor2.dumps(compact_number(v), canonical=True).hex() for v in values]
