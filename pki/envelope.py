"""[pure] The sealed envelope: COSE_Sign1 by the source, nested in COSE_Encrypt to the IOC.

Wire format (RFC 9052 structures, RFC 9053 algorithms, RFC 9360 certificate headers)::

    COSE_Encrypt = 96([                      ; tag 96
        bstr .cbor {1: 1},                   ; protected: alg A128GCM
        {5: iv(12)},                         ; unprotected: IV
        ciphertext,                          ; AES-128-GCM(CEK, iv, COSE_Sign1, Enc_structure)
        [[ bstr .cbor {1: -25},              ; recipient protected: alg ECDH-ES + HKDF-256
           {-1: COSE_Key(ephemeral P-256),   ; ephemeral public key
            4: kid},                         ; 8-byte hint: SHA-256(recipient cert DER)[:8]
           h'' ]]                            ; direct key agreement: empty recipient ciphertext
    ])
    COSE_Sign1 = 18([                        ; tag 18
        bstr .cbor {1: -7 | -8,              ; ES256 (P-256) or EdDSA (Ed25519)
                    34: [-16, sha256(signer cert DER)]},   ; x5t
        {} | {33: [cert DER, ...]},          ; x5chain only in certificate announcements
        payload, signature
    ])

Everything here takes bytes and key objects and returns bytes: no sockets, no files, so
it is tested directly. Every way a message can be wrong ends in :class:`EnvelopeError`
with a ``reason`` the IOC counts by; nothing else escapes :func:`open_envelope` or
:func:`parse_sign1`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TAG_ENCRYPT = 96
TAG_SIGN1 = 18
H_ALG, H_KID, H_IV, H_X5CHAIN, H_X5T, H_EPHEMERAL = 1, 4, 5, 33, 34, -1
ALG_A128GCM, ALG_ECDH_ES_HKDF_256, ALG_ES256, ALG_EDDSA, ALG_SHA256 = 1, -25, -7, -8, -16
KEY_EC2, CRV_P256, K_KTY, K_CRV, K_X, K_Y = 2, 1, 1, -1, -2, -3
KID_BYTES = 8
IV_BYTES = 12
DEFAULT_MAX_BYTES = 256 * 1024

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class EnvelopeError(Exception):
    """A message that cannot be opened or verified; ``reason`` is a short counter name."""

    reason = "malformed"

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class Malformed(EnvelopeError):
    reason = "malformed"


class TooLarge(EnvelopeError):
    reason = "too_large"


class NotForUs(EnvelopeError):
    reason = "not_for_us"


class BadCiphertext(EnvelopeError):
    reason = "bad_ciphertext"


class BadSignature(EnvelopeError):
    reason = "bad_signature"


def cert_thumbprint(cert_der: bytes) -> bytes:
    """The x5t value of a certificate (SHA-256 of its DER)."""
    return hashlib.sha256(cert_der).digest()


def recipient_kid(cert_der: bytes) -> bytes:
    """The short hint that names the IOC recipient certificate in a COSE_recipient."""
    return hashlib.sha256(cert_der).digest()[:KID_BYTES]


def _alg_of(key: SigningKey | VerifyingKey) -> int:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ALG_EDDSA
    if isinstance(key.curve, ec.SECP256R1):
        return ALG_ES256
    raise ValueError(f"unsupported signing key curve {key.curve.name}")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def _sign(key: SigningKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def sign1(payload: bytes, key: SigningKey, cert_der: bytes, *, chain: Sequence[bytes] = ()) -> bytes:
    """A tagged COSE_Sign1 over ``payload``; ``chain`` (leaf first) goes in x5chain when given."""
    protected = cbor2.dumps({H_ALG: _alg_of(key), H_X5T: [ALG_SHA256, cert_thumbprint(cert_der)]})
    unprotected: dict[int, Any] = {H_X5CHAIN: list(chain)} if chain else {}
    signature = _sign(key, _sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_SIGN1, [protected, unprotected, payload, signature]))


def _kdf_context(recipient_protected: bytes) -> bytes:
    # RFC 9053 §5.2; SuppPubInfo.protected is the recipient's serialised protected header,
    # which carries its alg: that is the combination pycose and python-cwt agree on.
    return cbor2.dumps([ALG_A128GCM, [None, None, None], [None, None, None], [128, recipient_protected]])


def _derive_cek(shared: bytes, recipient_protected: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=16, salt=None,
                info=_kdf_context(recipient_protected)).derive(shared)


def _enc_structure(protected: bytes) -> bytes:
    return cbor2.dumps(["Encrypt", protected, b""])


_ENC_PROTECTED = cbor2.dumps({H_ALG: ALG_A128GCM})
_RCPT_PROTECTED = cbor2.dumps({H_ALG: ALG_ECDH_ES_HKDF_256})


def encrypt(plaintext: bytes, recipient: ec.EllipticCurvePublicKey, kid: bytes) -> bytes:
    """A tagged COSE_Encrypt of ``plaintext`` to ``recipient`` (a fresh ephemeral key each call)."""
    if not isinstance(recipient.curve, ec.SECP256R1):
        raise ValueError("the recipient key must be on P-256")
    eph = ec.generate_private_key(ec.SECP256R1())
    nums = eph.public_key().public_numbers()
    cek = _derive_cek(eph.exchange(ec.ECDH(), recipient), _RCPT_PROTECTED)
    iv = os.urandom(IV_BYTES)
    ciphertext = AESGCM(cek).encrypt(iv, plaintext, _enc_structure(_ENC_PROTECTED))
    eph_key = {K_KTY: KEY_EC2, K_CRV: CRV_P256, K_X: nums.x.to_bytes(32, "big"), K_Y: nums.y.to_bytes(32, "big")}
    recipient_struct = [_RCPT_PROTECTED, {H_EPHEMERAL: eph_key, H_KID: kid}, b""]
    return cbor2.dumps(cbor2.CBORTag(TAG_ENCRYPT, [_ENC_PROTECTED, {H_IV: iv}, ciphertext, [recipient_struct]]))


@dataclass(frozen=True, slots=True)
class Sealer:
    """What a source needs to seal: its key and certificate, and the IOC recipient."""

    signing_key: SigningKey
    cert_der: bytes
    recipient: ec.EllipticCurvePublicKey
    recipient_kid: bytes

    def seal(self, payload: bytes) -> bytes:
        return encrypt(sign1(payload, self.signing_key, self.cert_der), self.recipient, self.recipient_kid)


# --- opening ------------------------------------------------------------------------------


def _loads(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types (and MemoryError-free ValueErrors) on junk
        raise Malformed(f"{what}: not CBOR ({type(exc).__name__}: {exc})") from None


def _header_map(raw: Any, what: str) -> dict[Any, Any]:
    if not isinstance(raw, bytes):
        raise Malformed(f"{what}: protected header is not a byte string")
    if raw == b"":
        return {}
    hdr = _loads(raw, what)
    if not isinstance(hdr, dict):
        raise Malformed(f"{what}: protected header is not a map")
    return hdr


def _tagged(data: bytes, tag: int, length: int, what: str) -> list[Any]:
    obj = _loads(data, what)
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != tag:
        raise Malformed(f"{what}: not a tagged COSE structure (tag {tag})")
    value = obj.value
    if not isinstance(value, list) or len(value) != length:
        raise Malformed(f"{what}: wrong structure")
    return value


def _bstr(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise Malformed(f"{what} must be a byte string" + (f" of {size} bytes" if size else ""))
    return value


def decrypt(data: bytes, key: ec.EllipticCurvePrivateKey, kid: bytes, *,
            max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The plaintext of a COSE_Encrypt made for ``key`` (named by ``kid``)."""
    if len(data) > max_bytes:
        raise TooLarge(f"{len(data)} bytes, limit {max_bytes}")
    protected_raw, unprotected, ciphertext, recipients = _tagged(data, TAG_ENCRYPT, 4, "COSE_Encrypt")
    protected = _header_map(protected_raw, "COSE_Encrypt")
    if protected.get(H_ALG) != ALG_A128GCM:
        raise Malformed(f"content algorithm {protected.get(H_ALG)!r} is not A128GCM (1)")
    if not isinstance(unprotected, dict):
        raise Malformed("COSE_Encrypt: unprotected header is not a map")
    iv = _bstr(unprotected.get(H_IV), "IV", IV_BYTES)
    ciphertext = _bstr(ciphertext, "ciphertext")
    if not isinstance(recipients, list) or not recipients:
        raise Malformed("COSE_Encrypt: no recipients")
    ours = [r for r in recipients
            if isinstance(r, list) and len(r) == 3 and isinstance(r[1], dict) and r[1].get(H_KID) == kid]
    if not ours:
        raise NotForUs("no recipient with our key id")
    rcpt_protected_raw, rcpt_unprotected, rcpt_ciphertext = ours[0]
    if rcpt_ciphertext != b"":
        # Direct key agreement carries no wrapped key (RFC 9053 §6.3): anything else is not ours.
        raise Malformed("COSE_recipient: the ciphertext of direct ECDH-ES must be an empty byte string")
    rcpt_protected = _header_map(rcpt_protected_raw, "COSE_recipient")
    if rcpt_protected.get(H_ALG) != ALG_ECDH_ES_HKDF_256:
        raise Malformed(f"recipient algorithm {rcpt_protected.get(H_ALG)!r} is not ECDH-ES+HKDF-256 (-25)")
    eph = rcpt_unprotected.get(H_EPHEMERAL)
    if not isinstance(eph, dict) or eph.get(K_KTY) != KEY_EC2 or eph.get(K_CRV) != CRV_P256:
        raise Malformed("ephemeral key is not an EC2 P-256 COSE_Key")
    x, y = _bstr(eph.get(K_X), "ephemeral x", 32), _bstr(eph.get(K_Y), "ephemeral y", 32)
    try:
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()).public_key()
    except ValueError:
        raise Malformed("ephemeral key is not a point on P-256") from None
    cek = _derive_cek(key.exchange(ec.ECDH(), peer), rcpt_protected_raw)
    try:
        return AESGCM(cek).decrypt(iv, ciphertext, _enc_structure(protected_raw))
    except InvalidTag:
        raise BadCiphertext("authentication tag does not match (tampered, or not encrypted for this key)") from None


@dataclass(frozen=True, slots=True)
class Sign1:
    """A parsed, not yet verified, COSE_Sign1."""

    alg: int
    x5t: bytes
    x5chain: tuple[bytes, ...]
    payload: bytes
    signature: bytes
    to_be_signed: bytes

    def verify(self, key: VerifyingKey) -> None:
        """Raise :class:`BadSignature` unless ``key`` made this signature."""
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) or (
                isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1)):
            raise BadSignature("the signer's certificate key is neither P-256 nor Ed25519")
        if _alg_of(key) != self.alg:
            raise BadSignature(f"algorithm {self.alg} does not fit the certificate's key")
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(self.signature, self.to_be_signed)
            else:
                if len(self.signature) != 64:
                    raise BadSignature("ES256 signature must be 64 bytes")
                der = encode_dss_signature(int.from_bytes(self.signature[:32], "big"),
                                           int.from_bytes(self.signature[32:], "big"))
                key.verify(der, self.to_be_signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BadSignature("signature does not verify with the signer's certificate") from None


def parse_sign1(data: bytes) -> Sign1:
    protected_raw, unprotected, payload, signature = _tagged(data, TAG_SIGN1, 4, "COSE_Sign1")
    protected = _header_map(protected_raw, "COSE_Sign1")
    alg = protected.get(H_ALG)
    if alg not in (ALG_ES256, ALG_EDDSA):
        raise Malformed(f"signature algorithm {alg!r} is not ES256 (-7) or EdDSA (-8)")
    x5t = protected.get(H_X5T)
    if not (isinstance(x5t, list) and len(x5t) == 2 and x5t[0] == ALG_SHA256 and isinstance(x5t[1], bytes)):
        raise Malformed("protected x5t must be [-16, SHA-256 of the signer's certificate]")
    if not isinstance(unprotected, dict):
        raise Malformed("COSE_Sign1: unprotected header is not a map")
    chain = unprotected.get(H_X5CHAIN, [])
    if isinstance(chain, bytes):
        chain = [chain]
    if not isinstance(chain, list) or not all(isinstance(c, bytes) for c in chain):
        raise Malformed("x5chain must be a certificate or a list of certificates")
    payload = _bstr(payload, "payload")
    signature = _bstr(signature, "signature")
    return Sign1(alg=alg, x5t=x5t[1], x5chain=tuple(chain), payload=payload, signature=signature,
                 to_be_signed=_sig_structure(protected_raw, payload))
