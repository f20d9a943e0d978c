"""What ``pki show`` prints: certificates, CSRs and CRLs as plain dicts (pure)."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.algorithms import describe_key
from pki.chain import device_id_of
from pki.profiles import name_text

_KU_FIELDS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
              "key_agreement", "key_cert_sign", "crl_sign")
_EKU_NAMES = {
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth", ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning", ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping", ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def serial_hex(serial: int) -> str:
    """A serial number as openssl prints it: upper-case hex, an even number of digits."""
    text = format(serial, "X")
    return "0" + text if len(text) % 2 else text


def _key_usage(ku: x509.KeyUsage) -> list[str]:
    return [name for name in _KU_FIELDS if getattr(ku, name)]


def _ext(exts: x509.Extensions, kind: type[x509.ExtensionType]) -> Any:
    try:
        return exts.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _san(value: x509.SubjectAlternativeName | None) -> list[str]:
    if value is None:
        return []
    out = [f"URI:{v}" for v in value.get_values_for_type(x509.UniformResourceIdentifier)]
    out += [f"DNS:{v}" for v in value.get_values_for_type(x509.DNSName)]
    out += [f"IP:{v}" for v in value.get_values_for_type(x509.IPAddress)]
    return out


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    exts = cert.extensions
    basic: x509.BasicConstraints | None = _ext(exts, x509.BasicConstraints)
    ku: x509.KeyUsage | None = _ext(exts, x509.KeyUsage)
    eku: x509.ExtendedKeyUsage | None = _ext(exts, x509.ExtendedKeyUsage)
    ski: x509.SubjectKeyIdentifier | None = _ext(exts, x509.SubjectKeyIdentifier)
    aki: x509.AuthorityKeyIdentifier | None = _ext(exts, x509.AuthorityKeyIdentifier)
    return {
        "type": "certificate",
        "subject": name_text(cert.subject),
        "issuer": name_text(cert.issuer),
        "serial": serial_hex(cert.serial_number),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": describe_key(cert.public_key()),
        "san": _san(_ext(exts, x509.SubjectAlternativeName)),
        "device_id": device_id_of(cert),
        "ca": bool(basic and basic.ca),
        "path_length": basic.path_length if basic else None,
        "key_usage": _key_usage(ku) if ku else [],
        "extended_key_usage": [_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku] if eku else [],
        "subject_key_id": ski.digest.hex() if ski else None,
        "authority_key_id": aki.key_identifier.hex() if aki and aki.key_identifier else None,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def describe_csr(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    return {
        "type": "csr",
        "subject": name_text(csr.subject),
        "key": describe_key(csr.public_key()),
        "san": _san(_ext(csr.extensions, x509.SubjectAlternativeName)),
        "signature_valid": csr.is_signature_valid,
    }


def describe_crl(crl: x509.CertificateRevocationList) -> dict[str, Any]:
    number: x509.CRLNumber | None = _ext(crl.extensions, x509.CRLNumber)
    revoked = []
    for entry in crl:
        reason: x509.CRLReason | None = _ext(entry.extensions, x509.CRLReason)
        revoked.append({"serial": serial_hex(entry.serial_number),
                        "revoked_at": entry.revocation_date_utc.isoformat(),
                        "reason": reason.reason.value if reason else "unspecified"})
    return {
        "type": "crl",
        "issuer": name_text(crl.issuer),
        "number": number.crl_number if number else None,
        "last_update": crl.last_update_utc.isoformat(),
        "next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
        "revoked": revoked,
    }


def format_text(item: dict[str, Any]) -> str:
    """``key: value`` lines; lists joined with ", "."""
    width = max(len(k) for k in item)
    lines = []
    for key, value in item.items():
        if key == "revoked":
            lines.append(f"{key:<{width}}  {len(value)}")
            lines += [f"  {r['serial']}  {r['revoked_at']}  {r['reason']}" for r in value]
            continue
        shown = ", ".join(value) if isinstance(value, list) else ("-" if value is None else str(value))
        lines.append(f"{key:<{width}}  {shown or '-'}")
    return "\n".join(lines)
