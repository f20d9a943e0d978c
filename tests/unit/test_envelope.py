"""The COSE envelope on its own: seal/open, and every way a message can be wrong."""

from __future__ import annotations

import contextlib
import datetime as dt

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import envelope as E


def _cert_der(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    # A bare self-signed certificate: the envelope only needs its DER for x5t/kid.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)).sign(key, algo))
    return cert.public_bytes(serialization.Encoding.DER)


IOC = ec.generate_private_key(ec.SECP256R1())
IOC_KID = E.recipient_kid(_cert_der(IOC))
GW = ec.generate_private_key(ec.SECP256R1())
GW_DER = _cert_der(GW)
SEALER = E.Sealer(GW, GW_DER, IOC.public_key(), IOC_KID)
GOOD = SEALER.seal(b"the payload")


def _open(data: bytes) -> bytes:
    s1 = E.parse_sign1(E.decrypt(data, IOC, IOC_KID))
    s1.verify(GW.public_key())
    return s1.payload


def test_round_trip_es256() -> None:
    assert _open(GOOD) == b"the payload"
    s1 = E.parse_sign1(E.decrypt(GOOD, IOC, IOC_KID))
    assert s1.alg == E.ALG_ES256 and s1.x5t == E.cert_thumbprint(GW_DER) and s1.x5chain == ()


def test_round_trip_eddsa_and_chain_in_announcement() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = _cert_der(key)
    s1 = E.parse_sign1(E.sign1(b"hello", key, der, chain=[der]))
    assert s1.alg == E.ALG_EDDSA and s1.x5chain == (der,)
    s1.verify(key.public_key())


def test_each_seal_uses_a_fresh_ephemeral_key_and_iv() -> None:
    assert SEALER.seal(b"x") != SEALER.seal(b"x")


def test_tampered_ciphertext_is_rejected() -> None:
    obj = cbor2.loads(GOOD)
    ct = bytearray(obj.value[2])
    ct[5] ^= 1
    obj.value[2] = bytes(ct)
    with pytest.raises(E.BadCiphertext):
        E.decrypt(cbor2.dumps(obj), IOC, IOC_KID)


def test_tampered_protected_header_is_rejected() -> None:
    obj = cbor2.loads(GOOD)
    obj.value[0] = cbor2.dumps({1: 1, 99: 0})  # still A128GCM, but not what was authenticated
    with pytest.raises(E.BadCiphertext):
        E.decrypt(cbor2.dumps(obj), IOC, IOC_KID)


def test_tampered_signature_is_rejected() -> None:
    inner = cbor2.loads(E.decrypt(GOOD, IOC, IOC_KID))
    sig = bytearray(inner.value[3])
    sig[0] ^= 0x80
    inner.value[3] = bytes(sig)
    resealed = E.encrypt(cbor2.dumps(inner), IOC.public_key(), IOC_KID)
    with pytest.raises(E.BadSignature):
        _open(resealed)


def test_signature_by_another_key_is_rejected() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    forged = E.encrypt(E.sign1(b"the payload", other, GW_DER), IOC.public_key(), IOC_KID)
    with pytest.raises(E.BadSignature):
        _open(forged)


def test_message_for_another_recipient_is_not_for_us() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    msg = E.Sealer(GW, GW_DER, other.public_key(), E.recipient_kid(_cert_der(other))).seal(b"x")
    with pytest.raises(E.NotForUs):
        E.decrypt(msg, IOC, IOC_KID)
    # Claiming our key id does not help: the key agreement gives another key.
    sneaky = E.encrypt(b"x", other.public_key(), IOC_KID)
    with pytest.raises(E.BadCiphertext):
        E.decrypt(sneaky, IOC, IOC_KID)


def test_oversized_message_is_rejected_before_parsing() -> None:
    with pytest.raises(E.TooLarge):
        E.decrypt(b"\x00" * 2000, IOC, IOC_KID, max_bytes=1000)


@pytest.mark.parametrize("cut", [1, 10, 50, len(GOOD) // 2, len(GOOD) - 1])
def test_truncated_message_is_malformed(cut: int) -> None:
    with pytest.raises(E.Malformed):
        E.decrypt(GOOD[:cut], IOC, IOC_KID)


def test_ephemeral_key_off_the_curve_is_malformed() -> None:
    obj = cbor2.loads(GOOD)
    obj.value[3][0][1][-1][-2] = b"\x01" * 32
    with pytest.raises(E.Malformed, match="point"):
        E.decrypt(cbor2.dumps(obj), IOC, IOC_KID)


@pytest.mark.parametrize("rcpt_ciphertext", ["", 0, None, b"\x00"])
def test_a_recipient_ciphertext_other_than_empty_bytes_is_malformed(rcpt_ciphertext: object) -> None:
    # Direct ECDH-ES wraps no key: the field is fixed, so a changed one is a changed message.
    obj = cbor2.loads(GOOD)
    obj.value[3][0][2] = rcpt_ciphertext
    with pytest.raises(E.Malformed, match="empty byte string"):
        E.decrypt(cbor2.dumps(obj), IOC, IOC_KID)


def test_wrong_algorithms_are_malformed() -> None:
    obj = cbor2.loads(GOOD)
    obj.value[0] = cbor2.dumps({1: 3})  # A256GCM: not what we speak
    with pytest.raises(E.Malformed, match="A128GCM"):
        E.decrypt(cbor2.dumps(obj), IOC, IOC_KID)
    s1 = cbor2.loads(E.sign1(b"x", GW, GW_DER))
    s1.value[0] = cbor2.dumps({1: -35, 34: [-16, b"x" * 32]})
    with pytest.raises(E.Malformed, match="ES256"):
        E.parse_sign1(cbor2.dumps(s1))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_random_bytes_raise_only_envelope_errors(data: bytes) -> None:
    for fn in (lambda: E.decrypt(data, IOC, IOC_KID), lambda: E.parse_sign1(data)):
        with contextlib.suppress(E.EnvelopeError):
            fn()


@settings(max_examples=300)
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255), st.integers(0, len(GOOD)))
def test_mutated_envelopes_raise_only_envelope_errors(at: int, xor: int, cut: int) -> None:
    data = bytearray(GOOD)
    data[at] ^= xor
    for candidate in (bytes(data), bytes(data[:cut])):
        with contextlib.suppress(E.EnvelopeError):
            _open(candidate)
