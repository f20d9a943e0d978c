"""Building certificates, CSRs and CRLs from objects (pure: no files; the time is a parameter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from pki.algorithms import PrivateKey, PublicKey, describe_key, key_type_of
from pki.errors import ProfileError
from pki.profiles import (
    ROOT,
    Profile,
    SubjectFields,
    check_days,
    check_device_id,
    check_key_fits,
    device_urn,
    extensions,
)

# Certificates start a little in the past so a device whose clock lags by minutes accepts
# a certificate it has just been given.
BACKDATE = timedelta(minutes=5)
# The only subject attributes copied from a CSR: anything else a device asks for is dropped.
_SUBJECT_OIDS = (NameOID.COUNTRY_NAME, NameOID.STATE_OR_PROVINCE_NAME, NameOID.ORGANIZATION_NAME,
                 NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME, NameOID.SERIAL_NUMBER)


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs the message itself (PureEdDSA): cryptography wants no hash for it.
    return None if key_type_of(key) == "ed25519" else hashes.SHA256()


@dataclass(frozen=True)
class Validity:
    not_before: datetime
    not_after: datetime


def validity(now: datetime, days: int, *, not_before: datetime | None = None,
             issuer: x509.Certificate | None = None) -> Validity:
    """``days`` from ``not_before`` (default: ``now`` minus BACKDATE), never beyond the issuer's end."""
    check_days(days)
    start = not_before if not_before is not None else now - BACKDATE
    end = start + timedelta(days=days)
    if issuer is not None and end > issuer.not_valid_after_utc:
        end = issuer.not_valid_after_utc  # a certificate outliving its issuer could never verify
    if end <= start:
        raise ProfileError("the certificate would end before it starts (issuer expires too soon)")
    return Validity(start, end)


def make_root(key: PrivateKey, subject: SubjectFields, *, now: datetime, days: int = ROOT.days,
              crl_url: str | None = None) -> x509.Certificate:
    check_key_fits(ROOT, key_type_of(key), describe_key(key))
    name = subject.name()
    valid = validity(now, days)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(valid.not_before).not_valid_after(valid.not_after))
    for ext, critical in extensions(ROOT, key.public_key(), None, None, crl_url):
        builder = builder.add_extension(ext, critical)
    return builder.sign(key, _hash_for(key))


def sign_certificate(*, profile: Profile, subject: x509.Name, subject_key: PublicKey,
                     issuer_cert: x509.Certificate, issuer_key: PrivateKey, valid: Validity,
                     device_id: str | None, crl_url: str | None = None) -> x509.Certificate:
    """A certificate of ``profile`` for ``subject_key``, signed by the issuing CA."""
    check_key_fits(profile, key_type_of(subject_key), describe_key(subject_key))
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_cert.subject)
               .public_key(subject_key).serial_number(x509.random_serial_number())
               .not_valid_before(valid.not_before).not_valid_after(valid.not_after))
    for ext, critical in extensions(profile, subject_key, issuer_key.public_key(), device_id, crl_url):
        builder = builder.add_extension(ext, critical)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def make_csr(key: PrivateKey, subject: SubjectFields) -> x509.CertificateSigningRequest:
    """A CSR for ``key``; its CN is the device id, its SAN the device URN (informational: the CA
    derives the SAN from the CN itself)."""
    device_id = check_device_id(subject.common_name)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_urn(device_id))])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject.name()).add_extension(san, False)
    return builder.sign(key, _hash_for(key))


@dataclass(frozen=True)
class CheckedCsr:
    subject: x509.Name
    device_id: str
    public_key: PublicKey


def check_csr(csr: x509.CertificateSigningRequest, profile: Profile) -> CheckedCsr:
    """Accept a CSR for ``profile`` or say why not (ProfileError; the caller names the file)."""
    if not csr.is_signature_valid:
        raise ProfileError("bad CSR signature (the request was altered or not signed by its key)")
    key = csr.public_key()
    check_key_fits(profile, key_type_of(key), describe_key(key))
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise ProfileError("the CSR subject must have exactly one CN (the device id)")
    device_id = check_device_id(str(cns[0].value))
    kept = [attr for oid in _SUBJECT_OIDS for attr in csr.subject.get_attributes_for_oid(oid)]
    assert isinstance(key, PublicKey)
    return CheckedCsr(x509.Name(kept), device_id, key)


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags


def make_crl(issuer_cert: x509.Certificate, issuer_key: PrivateKey, revoked: Sequence[Revocation], *,
             number: int, now: datetime, days: int) -> x509.CertificateRevocationList:
    check_days(days)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer_cert.subject)
               .last_update(now).next_update(now + timedelta(days=days))
               .add_extension(x509.CRLNumber(number), False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False))
    for entry in revoked:
        item = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        if entry.reason != x509.ReasonFlags.unspecified:  # RFC 5280 5.3.1: omit rather than "unspecified"
            item = item.add_extension(x509.CRLReason(entry.reason), False)
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(issuer_key, _hash_for(issuer_key))
