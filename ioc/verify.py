"""Opening sealed batches at the IOC: decrypt, find the signer, verify it to the root, decode.

No I/O: the receiver (MQTT) and ``urbanedge ioc verify`` (files) feed bytes in. The only
trust anchor is the provincial root certificate; a signer's certificate is learnt from a
certificate announcement (or an ``x5chain`` in the message) and verified to that root
before anything it signed is believed. Every way a message can fail is a
:class:`Rejected` with a ``reason`` from :data:`REASONS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.seal.payload import PayloadError
from agent.seal.payload import decode as decode_payload
from pki.chain import ChainError, device_id_of, verify_chain
from pki.envelope import (
    DEFAULT_MAX_BYTES,
    EnvelopeError,
    Sign1,
    cert_thumbprint,
    decrypt,
    parse_sign1,
    recipient_kid,
)

REASONS = (
    "malformed", "too_large", "not_for_us", "bad_ciphertext", "bad_signature", "unknown_certificate",
    "unknown_issuer", "bad_chain_signature", "expired", "revoked", "wrong_usage", "source_mismatch",
    "replay",
)


class Rejected(Exception):
    """A message the IOC does not accept; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(f"{reason}: {problem}")
        self.reason, self.problem = reason, problem


@dataclass(frozen=True, slots=True)
class Signer:
    device_id: str
    serial: int
    subject: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    source: str
    sent: float
    records: list[dict[str, Any]]
    signer: Signer


@dataclass(slots=True)
class _Known:
    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    signer: Signer
    # The last full check passed for this CRL generation and holds until `good_until`:
    # the chain's signatures and revocation cannot change in between, only time can.
    checked_crls: int = -1
    good_from: float = 0.0
    good_until: float = 0.0


def _to_cert(c: x509.Certificate | bytes) -> x509.Certificate:
    if isinstance(c, x509.Certificate):
        return c
    try:
        return x509.load_der_x509_certificate(c)
    except Exception as exc:
        raise Rejected("malformed", f"x5chain holds something that is not a DER certificate ({exc})") from None


class Opener:
    """Keeps the IOC's recipient key, the root, the CRLs and the signers learnt so far."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        recipient_cert: x509.Certificate,
        root: x509.Certificate,
        *,
        crls: Sequence[x509.CertificateRevocationList] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._kid = recipient_kid(recipient_cert.public_bytes(serialization.Encoding.DER))
        self._root = root
        self._crls = tuple(crls)
        self._crl_generation = 0
        self._max_bytes = max_bytes
        self._clock = clock
        self._known: dict[bytes, _Known] = {}

    def set_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> None:
        """New revocation lists apply to every later message, also from signers already known."""
        self._crls = tuple(crls)
        self._crl_generation += 1

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _check(self, known: _Known) -> None:
        now = self._clock()
        if known.checked_crls == self._crl_generation and known.good_from <= now < known.good_until:
            return  # ≈300 µs of chain and CRL signature checks saved per message
        try:
            verify_chain(known.leaf, known.intermediates, self._root, at=self._now(), crls=self._crls,
                         usage="signing")
        except ChainError as exc:
            known.checked_crls = -1
            raise Rejected(exc.reason, f"signer {known.signer.subject}: {exc}") from None
        chain = (known.leaf, *known.intermediates, self._root)
        known.checked_crls = self._crl_generation
        known.good_from = max(c.not_valid_before_utc.timestamp() for c in chain)
        known.good_until = min(c.not_valid_after_utc.timestamp() for c in chain)

    def learn_chain(self, chain: Sequence[x509.Certificate | bytes]) -> Signer:
        """Verify ``chain`` (leaf first) to the root and remember the leaf as a signer."""
        try:
            return self._learn_chain(chain)
        except Rejected:
            raise
        except Exception as exc:
            # Certificates here come from the network. cryptography parses fields lazily and
            # a corrupt DER fails in many types (ValueError, InvalidVersion, DuplicateExtension,
            # UnsupportedAlgorithm...) on first access; all of them mean the same to us.
            raise Rejected("malformed", f"certificate cannot be parsed ({type(exc).__name__}: {exc})") from None

    def _learn_chain(self, chain: Sequence[x509.Certificate | bytes]) -> Signer:
        certs = [_to_cert(c) for c in chain]
        if not certs:
            raise Rejected("malformed", "empty certificate chain")
        leaf = certs[0]
        device_id = device_id_of(leaf)
        if device_id is None:
            raise Rejected("wrong_usage", f"certificate {leaf.subject.rfc4514_string()} names no device (SAN URN)")
        signer = Signer(device_id, leaf.serial_number, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc)
        known = _Known(leaf, tuple(certs[1:]), signer)
        self._check(known)
        self._known[cert_thumbprint(leaf.public_bytes(serialization.Encoding.DER))] = known
        return signer

    def _signer_of(self, s1: Sign1) -> _Known:
        known = self._known.get(s1.x5t)
        if known is None and s1.x5chain:
            self.learn_chain(s1.x5chain)
            known = self._known.get(s1.x5t)
        if known is None:
            raise Rejected("unknown_certificate", f"no certificate known for x5t {s1.x5t.hex()[:16]}…")
        # Checked on every message: a certificate expires or gets revoked while we run.
        self._check(known)
        return known

    def learn_announcement(self, data: bytes) -> Signer:
        """A certificate announcement (COSE_Sign1 with x5chain): verify and remember its signer."""
        if len(data) > self._max_bytes:
            raise Rejected("too_large", f"{len(data)} bytes, limit {self._max_bytes}")
        try:
            s1 = parse_sign1(data)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, exc.problem) from None
        if not s1.x5chain:
            raise Rejected("malformed", "certificate announcement without x5chain")
        signer = self.learn_chain(s1.x5chain)
        known = self._known.get(s1.x5t, None)
        if known is None:
            raise Rejected("malformed", "x5t does not name the first certificate of x5chain")
        self._verify_signature(s1, known)
        try:
            body = cbor2.loads(s1.payload)
        except Exception:
            raise Rejected("malformed", "announcement payload is not CBOR") from None
        src = body.get("src") if isinstance(body, dict) else None
        if src != signer.device_id:
            raise Rejected("source_mismatch", f"announcement for {src!r} signed by {signer.device_id!r}")
        return signer

    @staticmethod
    def _verify_signature(s1: Sign1, known: _Known) -> None:
        key = known.leaf.public_key()
        try:
            s1.verify(key)  # type: ignore[arg-type]  # Sign1.verify rejects other key types itself
        except EnvelopeError as exc:
            raise Rejected(exc.reason, exc.problem) from None

    def open(self, data: bytes) -> VerifiedBatch:
        """Decrypt, verify and decode one sealed batch; raise :class:`Rejected` if anything is off."""
        try:
            inner = decrypt(data, self._key, self._kid, max_bytes=self._max_bytes)
            s1 = parse_sign1(inner)
        except EnvelopeError as exc:
            raise Rejected(exc.reason, exc.problem) from None
        known = self._signer_of(s1)
        self._verify_signature(s1, known)
        try:
            batch = decode_payload(s1.payload)
        except PayloadError as exc:
            raise Rejected("malformed", f"signed payload: {exc}") from None
        if batch.source != known.signer.device_id:
            raise Rejected("source_mismatch",
                           f"batch says source {batch.source!r}, certificate is {known.signer.device_id!r}")
        return VerifiedBatch(batch.source, batch.sent, batch.records, known.signer)
