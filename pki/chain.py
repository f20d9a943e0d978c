"""Verifying a certificate against the provincial root (pure: objects in, verdict out).

Used by the IOC receiver for every source certificate. The checks, in the order their
failure is reported:

1. path: each certificate is signed by the next (issuer name, key identifier, signature),
   ending at ``root`` -> ``unknown_issuer`` / ``bad_chain_signature``;
2. every issuer is a CA (basicConstraints CA, keyCertSign) within its path length -> ``wrong_usage``;
3. every certificate, root included, is valid at ``at`` -> ``expired``;
4. no certificate below the root is on a CRL signed by its issuer -> ``revoked``
   (a CRL whose signature does not verify with a path issuer's key is ignored);
5. the leaf is an end entity whose keyUsage and key type fit ``usage`` -> ``wrong_usage``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import ClassVar, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pki.algorithms import key_type_of
from pki.errors import ProfileError
from pki.profiles import DEVICE_URN_PREFIX, check_device_id, name_text

Usage = Literal["signing", "key_agreement"]
Reason = Literal["unknown_issuer", "bad_chain_signature", "expired", "revoked", "wrong_usage"]


class ChainError(Exception):
    """The certificate is not acceptable; ``reason`` is the machine-readable why."""

    reason: ClassVar[Reason]


class UnknownIssuerError(ChainError):
    reason = "unknown_issuer"


class BadChainSignatureError(ChainError):
    reason = "bad_chain_signature"


class ExpiredError(ChainError):
    """Expired, or not yet valid."""

    reason = "expired"


class RevokedError(ChainError):
    reason = "revoked"


class WrongUsageError(ChainError):
    reason = "wrong_usage"


def verify_chain(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], root: x509.Certificate,
                 *, at: datetime, crls: Sequence[x509.CertificateRevocationList] = (),
                 usage: Usage = "signing") -> None:
    """Return if ``leaf`` chains to ``root`` and is fit for ``usage`` at ``at``; else raise a ChainError."""
    when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    path = _build_path(leaf, intermediates, root)
    for depth, issuer in enumerate(path[1:], start=1):
        _check_ca(issuer, intermediates_below=depth - 1)
    for cert in path:
        _check_validity(cert, when)
    _check_revocation(path, crls)
    _check_leaf(leaf, usage)


def device_id_of(cert: x509.Certificate) -> str | None:
    """The ``<id>`` of the certificate's ``urn:urbanedge:device:<id>`` URI SAN, if it has one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(DEVICE_URN_PREFIX):
            try:
                return check_device_id(uri[len(DEVICE_URN_PREFIX):])
            except ProfileError:
                return None
    return None


def _subject(cert: x509.Certificate) -> str:
    return name_text(cert.subject)


def _key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        # ValueError: names or signature algorithm disagree; TypeError: a key type that cannot sign.
        return False
    return True


def _find_issuer(cert: x509.Certificate, candidates: Sequence[x509.Certificate]) -> x509.Certificate:
    named = [c for c in candidates if c.subject == cert.issuer]
    wanted = _authority_key_id(cert)
    if wanted is not None:
        # Same name, other key: another CA that happens to share the name (e.g. another
        # province's test PKI) — unknown to us, not a forgery of ours.
        named = [c for c in named if _key_id(c) == wanted]
    if not named:
        raise UnknownIssuerError(f"no trusted issuer {name_text(cert.issuer)!r} for {_subject(cert)!r}")
    for issuer in named:
        if _signed_by(cert, issuer):
            return issuer
    raise BadChainSignatureError(f"signature of {_subject(cert)!r} does not verify with its issuer's key")


def _build_path(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                root: x509.Certificate) -> list[x509.Certificate]:
    path = [leaf]
    unused = [c for c in intermediates if c != root and c != leaf]
    while path[-1] != root:
        if len(path) > len(intermediates) + 1:
            raise UnknownIssuerError("no path to the root (the intermediates form a loop)")
        issuer = _find_issuer(path[-1], [*unused, root])
        if issuer != root:
            unused.remove(issuer)
        path.append(issuer)
    return path


def _check_ca(cert: x509.Certificate, *, intermediates_below: int) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise WrongUsageError(f"issuer {_subject(cert)!r} is not a CA (no basicConstraints)") from None
    if not basic.ca:
        raise WrongUsageError(f"issuer {_subject(cert)!r} is not a CA (basicConstraints CA:FALSE)")
    if basic.path_length is not None and intermediates_below > basic.path_length:
        raise WrongUsageError(f"path length of {_subject(cert)!r} is {basic.path_length}, "
                              f"but {intermediates_below} CAs are below it")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # RFC 5280 4.2.1.3: without keyUsage, the key is not restricted
    if not usage.key_cert_sign:
        raise WrongUsageError(f"issuer {_subject(cert)!r} may not sign certificates (no keyCertSign)")


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise ExpiredError(f"{_subject(cert)!r} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if at > cert.not_valid_after_utc:
        raise ExpiredError(f"{_subject(cert)!r} expired at {cert.not_valid_after_utc.isoformat()}")


def _check_revocation(path: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList]) -> None:
    for cert, issuer in itertools.pairwise(path):
        for crl in crls:
            if crl.issuer != issuer.subject or not _crl_signed_by(crl, issuer):
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise RevokedError(f"{_subject(cert)!r} (serial {cert.serial_number:X}) was revoked at "
                                   f"{entry.revocation_date_utc.isoformat()}")


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _check_leaf(leaf: x509.Certificate, usage: Usage) -> None:
    try:
        if leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise WrongUsageError(f"{_subject(leaf)!r} is a CA certificate, not an end entity")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise WrongUsageError(f"{_subject(leaf)!r} has no keyUsage") from None
    kind = key_type_of(leaf.public_key())
    if usage == "signing":
        if not ku.digital_signature or kind is None:
            raise WrongUsageError(f"{_subject(leaf)!r} is not a signing certificate "
                                  "(needs digitalSignature and a P-256 or Ed25519 key)")
    elif not ku.key_agreement or kind != "p256":
        raise WrongUsageError(f"{_subject(leaf)!r} is not a key-agreement certificate "
                              "(needs keyAgreement and a P-256 key)")
