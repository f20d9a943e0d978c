"""Who may get which certificate: the decisions behind EST ``simpleenroll``/``simplereenroll``
and the offline ``urbanedge pki issue --token``, one code path for all of them.

A refusal is an ``EnrolRefused`` whose ``reason`` is one of ``REFUSAL_REASONS``. Every
decision is logged as one key=value line (``event=est_enrolled``, ``est_reenrolled``,
``est_refused reason=...``) with the channel (``via=est|offline``), never with a secret.

Enrolment holds the token store's lock from the last token check to the token's
consumption, so a token yields at most one certificate, and the CA's index is written by
one enrolment at a time (the CA is opened afresh under the lock: a revocation made by the
CLI meanwhile is seen, and not overwritten).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from pki.algorithms import describe_key, key_type_of
from pki.castore import CaDir
from pki.chain import ChainError, verify_chain
from pki.enroll.tokens import TokenError, TokenRecord, TokenStore, check_binding, token_id_of
from pki.errors import CsrError, PkiError, ProfileError
from pki.profiles import Profile, check_key_fits, common_name_of, end_entity_profile
from pki.show import serial_hex

log = logging.getLogger(__name__)

REFUSAL_REASONS = (
    "not_authorized", "token_unknown", "token_expired", "token_used", "token_wrong_device", "token_malformed",
    "csr_invalid", "csr_ca", "csr_subject", "key_unsupported",
)
# Profiles a device certificate may be renewed under with itself as the credential.
RENEWABLE = ("gateway", "node")
MAX_CSR_BYTES = 16 * 1024


class EnrolRefused(PkiError):
    """The request is refused; ``reason`` (see REFUSAL_REASONS) for machines, ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def kv(**fields: object) -> str:
    """``k=v k2=v2``; a value with spaces, quotes or '=' is JSON-quoted so a line stays parseable."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue  # not known at this point: left out rather than printed empty
        text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def parse_csr(body: bytes) -> x509.CertificateSigningRequest:
    """An EST request body (base64 DER PKCS#10; PEM tolerated) as a CSR; else ``csr_invalid``."""
    if len(body) > MAX_CSR_BYTES:
        raise EnrolRefused("csr_invalid", f"request body larger than {MAX_CSR_BYTES} bytes")
    try:
        if b"-----BEGIN" in body:
            return x509.load_pem_x509_csr(body)
        der = base64.b64decode(b"".join(body.split()), validate=True)
        return x509.load_der_x509_csr(der)
    except (ValueError, binascii.Error):
        raise EnrolRefused("csr_invalid", "the body is not a base64 DER PKCS#10 request") from None


def check_csr_policy(csr: x509.CertificateSigningRequest, profile: Profile) -> str:
    """Signature, requested rights and key type; returns the CSR's CN (not yet compared)."""
    try:
        signed = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError):
        signed = False
    if not signed:
        raise EnrolRefused("csr_invalid", "bad CSR signature (altered, or not signed by its own key)")
    try:
        requested = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        raise EnrolRefused("csr_invalid", f"unreadable extension request: {exc}") from None
    for ext in requested:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            raise EnrolRefused("csr_ca", "the request asks for a CA certificate (basicConstraints CA:TRUE)")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            raise EnrolRefused("csr_ca", "the request asks for keyCertSign/cRLSign (CA rights)")
    try:
        key = csr.public_key()
    except (UnsupportedAlgorithm, ValueError):
        raise EnrolRefused("key_unsupported", "the request's key algorithm is not supported") from None
    try:
        check_key_fits(profile, key_type_of(key), describe_key(key))
    except ProfileError as exc:
        raise EnrolRefused("key_unsupported", str(exc)) from None
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise EnrolRefused("csr_subject", "the request's subject must have exactly one CN (the device id)")
    return str(cns[0].value)


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else None


def _issue(ca: CaDir, csr: x509.CertificateSigningRequest, profile: Profile, now: datetime,
           days: int | None, *, supersedes: int | None = None) -> x509.Certificate:
    try:
        return ca.issue(csr, profile, now=now, days=days, csr_name="request", supersedes=supersedes)
    except CsrError as exc:  # what check_csr finds beyond the checks made here
        raise EnrolRefused("csr_invalid", exc.problem) from None


@dataclass(frozen=True)
class Enrolled:
    cert: x509.Certificate
    token: TokenRecord


def _token_refusal(exc: TokenError) -> EnrolRefused:
    return EnrolRefused(f"token_{exc.reason}", exc.detail)


def log_refusal(exc: EnrolRefused, **fields: object) -> None:
    log.warning("event=est_refused %s", kv(reason=exc.reason, **fields, detail=exc.detail))


def _matching_request(record: TokenRecord, request: x509.CertificateSigningRequest | bytes,
                      username: str | None) -> tuple[x509.CertificateSigningRequest, str, str | None]:
    """The request as a CSR, its CN and serialNumber, if it is one the token allows."""
    try:
        if username is not None:
            check_binding(record, device_id=username, serial=None)
        csr = parse_csr(request) if isinstance(request, bytes) else request
        serial = _attr(csr.subject, NameOID.SERIAL_NUMBER)
        cn = check_csr_policy(csr, end_entity_profile(record.profile))
        if cn != record.device_id:
            if username is None:  # offline, no one else claims an identity: the token is the odd one out
                check_binding(record, device_id=cn, serial=None)
            raise EnrolRefused("csr_subject", f"the request is for {cn!r}, the token for {record.device_id!r}")
        check_binding(record, device_id=cn, serial=serial)
        site = _attr(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if record.site and site is not None and site != record.site:
            raise TokenError("wrong_device", f"token {record.id} is for site {record.site!r}, "
                                             f"the request names {site!r}")
    except TokenError as exc:
        raise _token_refusal(exc) from None
    return csr, cn, serial


def enroll_with_token(open_ca: Callable[[], CaDir], tokens: TokenStore,
                      request: x509.CertificateSigningRequest | bytes, token: str, *, username: str | None,
                      now: datetime, days: int | None = None, via: str = "est", peer: str = "") -> Enrolled:
    """Issue a certificate for ``request`` if ``token`` allows it; consume the token only then.

    ``request``: a CSR, or an EST body (parsed after the token is checked, so a token
    problem is what a technician hears first). ``username``: the device id the requester
    claims (EST Basic auth), None offline. The profile is the token's. Raises EnrolRefused
    (and logs ``est_refused``) otherwise.
    """
    token_id = token_id_of(token)
    claimed = username
    if claimed is None and isinstance(request, x509.CertificateSigningRequest):
        claimed = common_name_of(request.subject)
    token_device: str | None = None
    try:
        with tokens.locked():
            try:
                record = tokens.check(token, now)
            except TokenError as exc:
                raise _token_refusal(exc) from None
            token_device = record.device_id
            csr, cn, serial = _matching_request(record, request, username)
            ca = open_ca()
            cert = _issue(ca, csr, end_entity_profile(record.profile), now, days)
            used = tokens.consume(token, device_id=cn, serial=serial, now=now,
                                  cert_serial=serial_hex(cert.serial_number))
    except EnrolRefused as exc:
        log_refusal(exc, device=claimed, token=token_id, token_device=token_device, via=via, peer=peer)
        raise
    log.info("event=est_enrolled %s", kv(device=used.device_id, serial=used.serial, site=used.site,
                                          profile=used.profile, token=used.id, cert_serial=used.cert_serial,
                                          not_after=cert.not_valid_after_utc.isoformat(), via=via, peer=peer))
    return Enrolled(cert, used)


def reenroll(open_ca: Callable[[], CaDir], tokens: TokenStore, root: x509.Certificate,
             current: x509.Certificate | None, request: x509.CertificateSigningRequest | bytes, *, now: datetime,
             peer: str = "") -> x509.Certificate:
    """A new certificate for the holder of ``current`` (its TLS client certificate).

    ``current`` must chain to this CA, be unexpired and not revoked in the CA's index; the
    new request must name the same CN (and serialNumber, if it gives one). The profile is
    the current certificate's. ``current`` stays valid until it expires (revoke it with
    ``pki revoke --reason superseded`` once the device uses the new one, if wanted).
    """
    device = common_name_of(current.subject) if current is not None else None
    old_serial = serial_hex(current.serial_number) if current is not None else None
    try:
        if current is None:
            raise EnrolRefused("not_authorized", "re-enrolment needs the device's current certificate "
                                                 "as the TLS client certificate")
        with tokens.locked():
            ca = open_ca()
            try:
                verify_chain(current, [ca.cert], root, at=now, usage="signing")
            except ChainError as exc:
                raise EnrolRefused("not_authorized", f"current certificate not acceptable ({exc.reason}): "
                                                     f"{exc}") from None
            entry = ca.index.find(current.serial_number)
            if entry is None:
                raise EnrolRefused("not_authorized", f"certificate {old_serial} is not in this CA's index")
            if entry.revoked_at is not None:
                raise EnrolRefused("not_authorized", f"certificate {old_serial} was revoked at {entry.revoked_at}")
            if entry.superseded_before(now):
                raise EnrolRefused("not_authorized", f"certificate {old_serial} was renewed at {entry.superseded_at} "
                                                     f"(by {entry.superseded_by}); only its successor renews now")
            if entry.profile not in RENEWABLE:
                raise EnrolRefused("not_authorized", f"a {entry.profile} certificate is not renewed over EST")
            profile = end_entity_profile(entry.profile)
            csr = parse_csr(request) if isinstance(request, bytes) else request
            cn = check_csr_policy(csr, profile)
            if cn != device:
                raise EnrolRefused("csr_subject", f"the request is for {cn!r}, the certificate for {device!r}")
            old_sn, new_sn = _attr(current.subject, NameOID.SERIAL_NUMBER), _attr(csr.subject, NameOID.SERIAL_NUMBER)
            if new_sn is not None and new_sn != old_sn:
                raise EnrolRefused("csr_subject", f"the request names serial {new_sn!r}, the certificate "
                                                  f"{old_sn!r}")
            cert = _issue(ca, csr, profile, now, None, supersedes=current.serial_number)
    except EnrolRefused as exc:
        log_refusal(exc, device=device, old_serial=old_serial, via="est", op="simplereenroll", peer=peer)
        raise
    log.info("event=est_reenrolled %s", kv(device=device, profile=profile.name, old_serial=old_serial,
                                            cert_serial=serial_hex(cert.serial_number),
                                            not_after=cert.not_valid_after_utc.isoformat(), via="est", peer=peer))
    return cert
