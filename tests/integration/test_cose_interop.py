"""No lock-in: an implementation we did not write (pycose 1.1) decrypts and verifies our
envelopes given only the IOC's private key and the provincial root certificate; the chain
from the root to the signer is checked by openssl. Run on the committed test vectors
(docs/test-vectors/) and on envelopes sealed now by the agent's own code path."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pycose.keys import CoseKey
from pycose.messages import CoseMessage

from agent.buffer.records import StoredRecord, telemetry
from tests.support import testpki

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "test-vectors"


def _cose_key_from_pem(pem: str) -> Any:
    return CoseKey.from_pem_private_key(pem)


def pycose_open(envelope: bytes, ioc_key_pem: str, signer: x509.Certificate) -> bytes:
    """Decrypt with pycose, then verify the inner COSE_Sign1 with pycose; return the payload."""
    msg = CoseMessage.decode(envelope)
    rcpt = msg.recipients[0]
    rcpt.key = _cose_key_from_pem(ioc_key_pem)
    inner = msg.decrypt(rcpt)
    sign1 = CoseMessage.decode(inner)
    # x5t in the protected header names the signer's certificate.
    x5t = cbor2.loads(sign1.phdr_encoded)[34]
    assert x5t == [-16, hashlib.sha256(signer.public_bytes(serialization.Encoding.DER)).digest()]
    sign1.key = CoseKey.from_pem_public_key(
        signer.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    if not sign1.verify_signature():
        raise AssertionError("pycose: signature does not verify")
    return bytes(sign1.payload)


def pycose_learn(announcement: bytes, root: Path, tmp_path: Path) -> x509.Certificate:
    """The signer's certificate from an announcement's x5chain, checked by openssl to the root
    and by pycose for the announcement's own signature."""
    sign1 = CoseMessage.decode(announcement)
    chain = cbor2.loads(announcement).value[1][33]
    leaf = x509.load_der_x509_certificate(chain[0])
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "rest.pem").write_bytes(b"".join(
        x509.load_der_x509_certificate(c).public_bytes(serialization.Encoding.PEM) for c in chain[1:]))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(tmp_path / "rest.pem"),
                          str(tmp_path / "leaf.pem")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    sign1.key = CoseKey.from_pem_public_key(
        leaf.public_key().public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    assert sign1.verify_signature()
    return leaf


def _records(payload: bytes) -> list[dict[str, Any]]:
    """Read the batch payload with plain cbor2, by the documented format (not our decoder)."""
    doc = cbor2.loads(payload)
    keys = doc["keys"]

    def expand(o: Any) -> Any:
        if isinstance(o, dict):
            return {keys[k]: expand(v) for k, v in o.items()}
        return float(o) if type(o).__name__ == "Decimal" else o

    return [{"seq": seq, "type": {0: "alarm", 1: "event", 2: "telemetry"}[t], "device_id": dev,
             "ts": doc["t0"] + dt / 1000, **expand(body)} for seq, t, dev, dt, body in doc["recs"]]


def test_committed_vectors_open_with_pycose(tmp_path: Path) -> None:
    expected = json.loads((VECTORS / "expected.json").read_text())
    signer = pycose_learn((VECTORS / "cert.cose").read_bytes(), VECTORS / "root.pem", tmp_path)
    key_pem = (VECTORS / "ioc-recipient.key").read_text()
    for name in ("batch.cose", "alarm.cose"):
        payload = pycose_open((VECTORS / name).read_bytes(), key_pem, signer)
        assert cbor2.loads(payload)["src"] == expected["source"]
        got = _records(payload)
        assert [r["seq"] for r in got] == [r["seq"] for r in expected[name]]
        for g, e in zip(got, expected[name], strict=True):
            assert g["device_id"] == e["device_id"] and g["ts"] == pytest.approx(e["ts"], abs=0.002)
            assert {k: v for k, v in g.items() if k not in ("seq", "type", "device_id", "ts")} == \
                {k: v for k, v in e.items() if k not in ("seq", "device_id", "ts")}


def test_committed_vectors_open_with_urbanedge_ioc_verify(tmp_path: Path) -> None:
    """The same vectors through our own offline verifier (`urbanedge ioc verify`), at the time they
    were made (certificates in the vectors expire; the CLI takes --at for captures)."""
    from urbanedge.cli import main

    expected = json.loads((VECTORS / "expected.json").read_text())
    args = ["ioc", "verify", str(VECTORS / "cert.cose"), str(VECTORS / "batch.cose"), str(VECTORS / "alarm.cose"),
            "--root", str(VECTORS / "root.pem"), "--key", str(VECTORS / "ioc-recipient.key"),
            "--cert", str(VECTORS / "ioc-recipient.pem"), "--at", str(expected["generated"])]
    assert main(args) == 0


def test_fresh_envelopes_from_the_agent_code_open_with_pycose(tmp_path: Path) -> None:
    pki = testpki.shared_pki()
    sealer = testpki.batch_sealer("gw-interop")
    recs = []
    for i in range(60):
        r = telemetry(f"sl-{i % 5}", "streetlight", 1_764_000_000.0 + i, {"voltage": 229.7 + i / 10, "on": True})
        recs.append(StoredRecord(i + 1, r.prio, r.device_id, r.ts, r.body))
    signer = pycose_learn(sealer.announcement(ts=1.0), pki.root_cert, tmp_path)
    payload = pycose_open(sealer.encode(recs, sent_ts=2.0), pki.ioc_recipient_key.read_text(), signer)
    got = _records(payload)
    assert [r["seq"] for r in got] == list(range(1, 61))
    assert got[10]["values"] == {"voltage": pytest.approx(230.7), "on": True}
