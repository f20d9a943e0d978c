"""Loads what the gateway seals with: its key and certificate chain, and the IOC recipient.

Every problem is a :class:`SealSetupError` naming the config field and the file, raised
when the agent starts, so a gateway never runs (and never sends) without being able to
seal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.config import Seal
from pki.chain import device_id_of
from pki.envelope import Sealer, recipient_kid


class SealSetupError(Exception):
    """The seal section names files that cannot be used; ``field`` is e.g. ``seal.key``."""

    def __init__(self, field: str, path: Path | None, problem: str) -> None:
        self.field, self.path, self.problem = field, path, problem
        super().__init__(f"{field}: {path}: {problem}" if path else f"{field}: {problem}")


@dataclass(frozen=True)
class SealCredentials:
    sealer: Sealer
    chain_der: tuple[bytes, ...]  # our certificate first, then the issuing CA(s)
    device_id: str | None  # the id in our certificate's SAN


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SealSetupError(field, path, f"cannot read: {exc.strerror or exc}") from exc


def _certs(field: str, path: Path) -> list[x509.Certificate]:
    data = _read(field, path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise SealSetupError(field, path, f"not a certificate file ({exc})") from exc


def load_credentials(seal: Seal, gateway_id: str) -> SealCredentials:
    passphrase = None
    if seal.key_passphrase_file is not None:
        passphrase = _read("seal.key_passphrase_file", seal.key_passphrase_file).strip()
    try:
        key = serialization.load_pem_private_key(_read("seal.key", seal.key), passphrase)
    except (ValueError, TypeError) as exc:
        raise SealSetupError("seal.key", seal.key, f"cannot load the private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey) and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        raise SealSetupError("seal.key", seal.key, "the signing key must be P-256 or Ed25519")
    chain = _certs("seal.cert", seal.cert)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key().public_bytes(
            serialization.Encoding.DER, pub):
        raise SealSetupError("seal.cert", seal.cert, f"the first certificate does not belong to {seal.key}")
    device_id = device_id_of(chain[0])
    if device_id is not None and device_id != gateway_id:
        raise SealSetupError("seal.cert", seal.cert,
                             f"certificate names device {device_id!r}, but identity.gateway_id is {gateway_id!r}")
    rcpt = _certs("seal.recipient", seal.recipient)[0]
    rkey = rcpt.public_key()
    if not (isinstance(rkey, ec.EllipticCurvePublicKey) and isinstance(rkey.curve, ec.SECP256R1)):
        raise SealSetupError("seal.recipient", seal.recipient, "the IOC recipient key must be P-256 (ECDH-ES)")
    rcpt_der = rcpt.public_bytes(serialization.Encoding.DER)
    chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
    return SealCredentials(
        sealer=Sealer(signing_key=key, cert_der=chain_der[0], recipient=rkey, recipient_kid=recipient_kid(rcpt_der)),
        chain_der=chain_der, device_id=device_id,
    )
