"""[pure] Is a COSE_Sign1 signed by the IOC? Shared by what devices accept from the IOC:
signed commands (``pki/command.py``) and installers' receipts (``ioc/receipts.py``).

The signer's certificate travels in x5chain; it must chain to the provincial root, carry the
IOC's id as its name, and not be a device certificate (gateways and nodes hold clientAuth
certificates for the broker; the IOC's signing certificate does not), so a device named like
the IOC still cannot sign for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.chain import ChainError, device_id_of, verify_chain
from pki.envelope import EnvelopeError, Sign1, cert_thumbprint


class IocSignerError(Exception):
    """``reason``: ``malformed`` (x5chain/x5t), ``untrusted`` (chain), ``revoked`` (a certificate
    of the chain is on a CRL), ``not_ioc`` (signer), ``bad_signature``; ``detail`` says how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_device_cert(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in eku


def verify_ioc_sign1(s1: Sign1, root: x509.Certificate, *, at: datetime, ioc_id: str,
                     crls: Sequence[x509.CertificateRevocationList] = ()) -> str:
    """The signer's id when ``s1`` (with a non-empty x5chain) is signed by the IOC ``ioc_id``."""
    try:
        certs = [x509.load_der_x509_certificate(d) for d in s1.x5chain]
    except ValueError:
        raise IocSignerError("malformed", "x5chain holds something that is not a certificate") from None
    if cert_thumbprint(s1.x5chain[0]) != s1.x5t:
        raise IocSignerError("malformed", "x5t does not name the first certificate of x5chain")
    leaf = certs[0]
    try:
        verify_chain(leaf, certs[1:], root, at=at if at.tzinfo else at.replace(tzinfo=UTC), crls=crls)
    except ChainError as exc:
        # Revoked is its own verdict: the signer was the IOC's, and the CA withdrew it.
        reason = "revoked" if exc.reason == "revoked" else "untrusted"
        raise IocSignerError(reason, f"{exc.reason}: {exc}") from None
    signer = device_id_of(leaf)
    if signer != ioc_id or is_device_cert(leaf):
        raise IocSignerError("not_ioc", f"signed by {signer!r}, not the IOC ({ioc_id!r})")
    try:
        s1.verify(leaf.public_key())  # type: ignore[arg-type]
    except EnvelopeError as exc:
        raise IocSignerError("bad_signature", exc.problem) from None
    return signer
