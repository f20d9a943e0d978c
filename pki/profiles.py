"""Certificate profiles: what each role's certificate says (pure: no I/O, no clock).

| profile        | key            | keyUsage (critical)          | extKeyUsage | days |
|----------------|----------------|------------------------------|-------------|------|
| root           | P-256          | keyCertSign, cRLSign         | -           | 7300 |
| issuing-ca     | P-256          | keyCertSign, cRLSign         | -           | 3650 |
| gateway, node  | P-256, Ed25519 | digitalSignature             | clientAuth  | 730  |
| ioc-recipient  | P-256          | keyAgreement                 | -           | 730  |
| ioc-command    | P-256, Ed25519 | digitalSignature             | -           | 365  |
| est-server     | P-256          | digitalSignature             | serverAuth  | 7    |

Root: basicConstraints CA pathlen 1 (one issuing-CA level); issuing CA: CA pathlen 0.
End entities: CA:FALSE, a URI SAN ``urn:urbanedge:device:<id>``; SKI and AKI everywhere.
The est-server certificate (the enrolment service's own, short-lived) names its host instead:
an IP address or DNS SAN from its CN, and no device URN, so it can never pass for a device.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.algorithms import KeyType, PublicKey
from pki.errors import ProfileError

DEVICE_URN_PREFIX = "urn:urbanedge:device:"
# Device ids land in a URN and in file names: a conservative, unambiguous alphabet.
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_DAYS = 30 * 366


@dataclass(frozen=True)
class Usage:
    digital_signature: bool = False
    key_agreement: bool = False
    key_cert_sign: bool = False
    crl_sign: bool = False

    def extension(self) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=self.digital_signature, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=self.key_agreement, key_cert_sign=self.key_cert_sign,
            crl_sign=self.crl_sign, encipher_only=False, decipher_only=False,
        )


@dataclass(frozen=True)
class Profile:
    name: str
    days: int
    usage: Usage
    key_types: tuple[KeyType, ...]
    ext_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    ca_path_length: int | None = None  # None: an end entity (CA:FALSE)
    san: Literal["device", "host"] = "device"  # what the CN names: a device (URN SAN) or a host (IP/DNS SAN)

    @property
    def is_ca(self) -> bool:
        return self.ca_path_length is not None


_CA_USAGE = Usage(key_cert_sign=True, crl_sign=True)
_SIGNING = Usage(digital_signature=True)

ROOT = Profile("root", 20 * 365, _CA_USAGE, ("p256",), ca_path_length=1)
ISSUING_CA = Profile("issuing-ca", 10 * 365, _CA_USAGE, ("p256",), ca_path_length=0)
# clientAuth: gateways and nodes present these certificates for mutual TLS to the broker.
GATEWAY = Profile("gateway", 2 * 365, _SIGNING, ("p256", "ed25519"), (ExtendedKeyUsageOID.CLIENT_AUTH,))
NODE = Profile("node", 2 * 365, _SIGNING, ("p256", "ed25519"), (ExtendedKeyUsageOID.CLIENT_AUTH,))
# P-256 only: this key is the static recipient key of ECDH-ES in COSE_Encrypt.
IOC_RECIPIENT = Profile("ioc-recipient", 2 * 365, Usage(key_agreement=True), ("p256",))
IOC_COMMAND = Profile("ioc-command", 365, _SIGNING, ("p256", "ed25519"))
# Short-lived: `pki serve` issues itself a new one at every start (and before it runs out).
EST_SERVER = Profile("est-server", 7, _SIGNING, ("p256",), (ExtendedKeyUsageOID.SERVER_AUTH,), san="host")

END_ENTITY_PROFILES: dict[str, Profile] = {
    p.name: p for p in (GATEWAY, NODE, IOC_RECIPIENT, IOC_COMMAND, EST_SERVER)
}


def end_entity_profile(name: str) -> Profile:
    try:
        return END_ENTITY_PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; one of {', '.join(END_ENTITY_PROFILES)}") from None


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id):
        raise ProfileError(f"bad device id {device_id!r}: 1-64 characters of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit")
    return device_id


def check_days(days: int) -> int:
    if not 1 <= days <= MAX_DAYS:
        raise ProfileError(f"validity must be 1..{MAX_DAYS} days, got {days}")
    return days


def device_urn(device_id: str) -> str:
    return DEVICE_URN_PREFIX + check_device_id(device_id)


@dataclass(frozen=True)
class SubjectFields:
    """The standard attributes we put in a subject; empty ones are left out."""

    common_name: str
    province: str = ""
    organization: str = ""
    site: str = ""
    serial: str = ""
    country: str = "VN"

    def name(self) -> x509.Name:
        if len(self.country) != 2 or not self.country.isalpha():
            raise ProfileError(f"country must be a two-letter code, got {self.country!r}")
        pairs = [
            ("C", NameOID.COUNTRY_NAME, self.country.upper()),
            ("ST", NameOID.STATE_OR_PROVINCE_NAME, self.province),
            ("O", NameOID.ORGANIZATION_NAME, self.organization),
            ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME, self.site),
            ("CN", NameOID.COMMON_NAME, self.common_name),
            ("serialNumber", NameOID.SERIAL_NUMBER, self.serial),
        ]
        if not self.common_name:
            raise ProfileError("subject needs a common name (CN)")
        for label, _, value in pairs:
            if len(value) > 64:  # the X.520 upper bound these attributes share
                raise ProfileError(f"subject {label} longer than 64 characters: {value!r}")
        return x509.Name([x509.NameAttribute(oid, value) for _, oid, value in pairs if value])


def name_text(name: x509.Name) -> str:
    """RFC 4514 text, with ``serialNumber`` spelled out (cryptography prints its OID otherwise)."""
    return name.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"})


def common_name_of(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def check_key_fits(profile: Profile, kind: KeyType | None, described: str) -> None:
    if kind is None or kind not in profile.key_types:
        allowed = " or ".join("P-256" if k == "p256" else "Ed25519" for k in profile.key_types)
        raise ProfileError(f"a {described} key does not fit profile {profile.name}: it needs {allowed}")


def extensions(profile: Profile, subject_key: PublicKey, issuer_key: PublicKey | None,
               device_id: str | None, crl_url: str | None = None) -> list[tuple[x509.ExtensionType, bool]]:
    """The (extension, critical) list of a certificate of ``profile``.

    ``issuer_key`` None means self-signed (the root): its AKI names its own key.
    """
    basic = x509.BasicConstraints(ca=profile.is_ca, path_length=profile.ca_path_length)
    ski = x509.SubjectKeyIdentifier.from_public_key(subject_key)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key if issuer_key is not None else subject_key)
    exts: list[tuple[x509.ExtensionType, bool]] = [
        (basic, True),
        (profile.usage.extension(), True),
        (ski, False),
        (aki, False),
    ]
    if profile.ext_key_usage:
        exts.append((x509.ExtendedKeyUsage(list(profile.ext_key_usage)), False))
    if device_id is not None:
        exts.append((x509.SubjectAlternativeName([_san_name(profile, device_id)]), False))
    if crl_url and issuer_key is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        exts.append((x509.CRLDistributionPoints([point]), False))
    return exts


def _san_name(profile: Profile, name: str) -> x509.GeneralName:
    if profile.san == "device":
        return x509.UniformResourceIdentifier(device_urn(name))
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name.lower())
