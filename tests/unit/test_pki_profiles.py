"""Profiles and the CA directory: extensions, subjects, validity, CSR checks, index, revocation, CRL."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.castore import CaDir, parse_serial
from pki.certs import make_csr
from pki.chain import device_id_of
from pki.errors import BadPassphraseError, CaStateError, CsrError, KeyFileError, ProfileError
from pki.keys import generate_key
from pki.profiles import SubjectFields, check_device_id, end_entity_profile
from pki.throwaway import build_throwaway_pki

NOW = datetime(2030, 1, 1, tzinfo=UTC)
PASS = b"offline root passphrase"


E = TypeVar("E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def _ku(cert: x509.Certificate) -> set[str]:
    ku = _ext(cert, x509.KeyUsage).value
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")
    return {n for n in names if getattr(ku, n)}


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CaDir, CaDir]:
    subject = SubjectFields("Da Nang Root CA", "Da Nang", "Da Nang DOST")
    root = CaDir.init_root(tmp_path / "root", subject, PASS, now=NOW, days=7300)
    issuing = root.init_issuing(tmp_path / "issuing", SubjectFields("Water Issuing CA", "Da Nang", "DAWACO"), PASS,
                                now=NOW, days=3650)
    return root, issuing


def _csr(device_id: str = "gw-001", kind: str = "p256") -> x509.CertificateSigningRequest:
    fields = SubjectFields(device_id, "Da Nang", "DAWACO", "Pump station 3", "SN-0042")
    return make_csr(generate_key(kind), fields)  # type: ignore[arg-type]


def test_root_and_issuing_ca_extensions(cas: tuple[CaDir, CaDir], tmp_path: Path) -> None:
    root, issuing = cas
    for ca, pathlen, years in ((root, 1, 20), (issuing, 0, 10)):
        basic = _ext(ca.cert, x509.BasicConstraints)
        assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=pathlen)
        assert _ext(ca.cert, x509.KeyUsage).critical
        assert _ku(ca.cert) == {"key_cert_sign", "crl_sign"}
        span = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
        assert span == timedelta(days=365 * years)
        ski = _ext(ca.cert, x509.SubjectKeyIdentifier).value
        assert ski == x509.SubjectKeyIdentifier.from_public_key(ca.cert.public_key())
    root_ski = _ext(root.cert, x509.SubjectKeyIdentifier).value
    assert _ext(issuing.cert, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    assert issuing.cert.issuer == root.cert.subject
    assert root.cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "VN"
    for d in (tmp_path / "root", tmp_path / "issuing"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert stat.S_IMODE((d / "ca.key").stat().st_mode) == 0o600
        assert b"ENCRYPTED" in (d / "ca.key").read_bytes()
    # The root's index records the issuing CA, so the root can revoke it.
    index = json.loads((tmp_path / "root" / "index.json").read_text())
    assert [e["profile"] for e in index["certs"]] == ["issuing-ca"]


@pytest.mark.parametrize(("profile", "usage", "eku", "days"), [
    ("gateway", {"digital_signature"}, [ExtendedKeyUsageOID.CLIENT_AUTH], 730),
    ("node", {"digital_signature"}, [ExtendedKeyUsageOID.CLIENT_AUTH], 730),
    ("ioc-recipient", {"key_agreement"}, None, 730),
    ("ioc-command", {"digital_signature"}, None, 365),
])
def test_end_entity_profiles(cas: tuple[CaDir, CaDir], profile: str, usage: set[str],
                             eku: list[x509.ObjectIdentifier] | None, days: int) -> None:
    _, issuing = cas
    cert = issuing.issue(_csr("dev-7"), end_entity_profile(profile), now=NOW)
    assert _ext(cert, x509.BasicConstraints).value == x509.BasicConstraints(ca=False, path_length=None)
    assert _ku(cert) == usage
    if eku is None:
        with pytest.raises(x509.ExtensionNotFound):
            _ext(cert, x509.ExtendedKeyUsage)
    else:
        assert list(_ext(cert, x509.ExtendedKeyUsage).value) == eku
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:urbanedge:device:dev-7"]
    assert device_id_of(cert) == "dev-7"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=days)
    assert cert.not_valid_before_utc <= NOW
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        _ext(issuing.cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.serial_number.bit_length() > 64
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs == {NameOID.COUNTRY_NAME: "VN", NameOID.STATE_OR_PROVINCE_NAME: "Da Nang",
                     NameOID.ORGANIZATION_NAME: "DAWACO", NameOID.ORGANIZATIONAL_UNIT_NAME: "Pump station 3",
                     NameOID.COMMON_NAME: "dev-7", NameOID.SERIAL_NUMBER: "SN-0042"}


def test_days_override_and_clamp_to_issuer(cas: tuple[CaDir, CaDir]) -> None:
    _, issuing = cas
    short = issuing.issue(_csr(), end_entity_profile("gateway"), now=NOW, days=3)
    assert short.not_valid_after_utc - short.not_valid_before_utc == timedelta(days=3)
    late = issuing.issue(_csr(), end_entity_profile("gateway"), now=issuing.cert.not_valid_after_utc
                         - timedelta(days=10))
    assert late.not_valid_after_utc == issuing.cert.not_valid_after_utc
    with pytest.raises(ProfileError, match="validity must be"):
        issuing.issue(_csr(), end_entity_profile("gateway"), now=NOW, days=0)


def test_ed25519_fits_signing_profiles_only(cas: tuple[CaDir, CaDir]) -> None:
    _, issuing = cas
    for profile in ("gateway", "node", "ioc-command"):
        cert = issuing.issue(_csr(kind="ed25519"), end_entity_profile(profile), now=NOW)
        assert cert.public_key_algorithm_oid.dotted_string == "1.3.101.112"
    with pytest.raises(CsrError, match="does not fit profile ioc-recipient: it needs P-256") as err:
        issuing.issue(_csr(kind="ed25519"), end_entity_profile("ioc-recipient"), now=NOW, csr_name="ioc.csr")
    assert str(err.value.path) == "ioc.csr"


def test_csr_rejections(cas: tuple[CaDir, CaDir]) -> None:
    _, issuing = cas
    gateway = end_entity_profile("gateway")
    p384 = ec.generate_private_key(ec.SECP384R1())
    other_curve = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-9")]))
                   .sign(p384, hashes.SHA256()))
    with pytest.raises(CsrError, match="EC secp384r1 key does not fit profile gateway"):
        issuing.issue(other_curve, gateway, now=NOW)
    # A byte of the signature flipped: the request no longer proves possession of the key.
    der = bytearray(_csr().public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    with pytest.raises(CsrError, match="bad CSR signature"):
        issuing.issue(x509.load_der_x509_csr(bytes(der)), gateway, now=NOW)
    no_cn = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
             .sign(generate_key("p256"), hashes.SHA256()))
    with pytest.raises(CsrError, match="exactly one CN"):
        issuing.issue(no_cn, gateway, now=NOW)
    bad_id = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw 1/../x")]))
              .sign(generate_key("p256"), hashes.SHA256()))
    with pytest.raises(CsrError, match="bad device id"):
        issuing.issue(bad_id, gateway, now=NOW)
    assert issuing.index.certs == []  # nothing signed, nothing recorded


def test_csr_extras_are_not_copied(cas: tuple[CaDir, CaDir]) -> None:
    """A device cannot ask to become a CA or to name another device."""
    _, issuing = cas
    key = generate_key("p256")
    greedy = (x509.CertificateSigningRequestBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw-1"),
                                       x509.NameAttribute(NameOID.EMAIL_ADDRESS, "x@example.org")]))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.SubjectAlternativeName(
                  [x509.UniformResourceIdentifier("urn:urbanedge:device:ioc-command")]), critical=False)
              .sign(key, hashes.SHA256()))
    cert = issuing.issue(greedy, end_entity_profile("gateway"), now=NOW)
    assert _ext(cert, x509.BasicConstraints).value.ca is False
    assert device_id_of(cert) == "gw-1"
    assert [a.oid for a in cert.subject] == [NameOID.COMMON_NAME]


def test_unknown_profile_and_bad_device_ids() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'router'; one of gateway, node, ioc-recipient"):
        end_entity_profile("router")
    for bad in ("", "-lead", "a b", "x" * 65, "a/b", "urn:x"):
        with pytest.raises(ProfileError):
            check_device_id(bad)
    assert check_device_id("Gw_01.a-b") == "Gw_01.a-b"
    with pytest.raises(ProfileError, match="two-letter"):
        SubjectFields("gw-1", country="VNM").name()


def test_refuses_to_overwrite_a_ca(cas: tuple[CaDir, CaDir], tmp_path: Path) -> None:
    key_before = (tmp_path / "root" / "ca.key").read_bytes()
    with pytest.raises(CaStateError, match="refusing to overwrite"):
        CaDir.init_root(tmp_path / "root", SubjectFields("Other Root"), PASS, now=NOW, days=10)
    assert (tmp_path / "root" / "ca.key").read_bytes() == key_before


def test_open_unlock_and_wrong_passphrase(cas: tuple[CaDir, CaDir], tmp_path: Path) -> None:
    ca = CaDir.open(tmp_path / "issuing")
    with pytest.raises(BadPassphraseError) as err:
        ca.unlock(b"guess")
    assert err.value.path == tmp_path / "issuing" / "ca.key"
    ca.unlock(PASS)
    # A key that is not the certificate's is refused, not used to sign garbage.
    (tmp_path / "issuing" / "ca.key").unlink()
    (tmp_path / "issuing" / "ca.key").write_bytes((tmp_path / "root" / "ca.key").read_bytes())
    with pytest.raises(KeyFileError, match="does not match the certificate"):
        CaDir.open(tmp_path / "issuing").unlock(PASS)
    with pytest.raises(CaStateError, match="no such CA directory"):
        CaDir.open(tmp_path / "nowhere")
    (tmp_path / "root" / "index.json").write_text("{not json")
    with pytest.raises(CaStateError, match="corrupt CA index"):
        CaDir.open(tmp_path / "root")


def test_revoke_and_crl(cas: tuple[CaDir, CaDir], tmp_path: Path) -> None:
    _, issuing = cas
    keep = issuing.issue(_csr("gw-1"), end_entity_profile("gateway"), now=NOW)
    gone = issuing.issue(_csr("gw-2"), end_entity_profile("gateway"), now=NOW)
    later = NOW + timedelta(hours=1)
    entry = issuing.revoke(gone.serial_number, "keyCompromise", now=later)
    assert (entry.revoked_at, entry.reason) == (later.isoformat(), "keyCompromise")
    assert issuing.revoke(gone.serial_number, "superseded", now=NOW).reason == "keyCompromise"  # idempotent
    with pytest.raises(CaStateError, match="no certificate with serial"):
        issuing.revoke(12345, "unspecified", now=NOW)
    with pytest.raises(ProfileError, match="unknown reason"):
        issuing.revoke(keep.serial_number, "bored", now=NOW)
    crl1 = issuing.make_crl(now=later, days=7)
    crl2 = issuing.make_crl(now=later, days=7)
    assert crl1.is_signature_valid(issuing.cert.public_key())  # type: ignore[arg-type]
    assert [r.serial_number for r in crl1] == [gone.serial_number]
    assert crl1.get_revoked_certificate_by_serial_number(keep.serial_number) is None
    revoked = crl1.get_revoked_certificate_by_serial_number(gone.serial_number)
    assert revoked is not None and revoked.revocation_date_utc == later
    reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value
    assert reason.reason == x509.ReasonFlags.key_compromise
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in (crl1, crl2)]
    assert numbers == [1, 2]
    assert crl2.next_update_utc == later + timedelta(days=7)
    assert x509.load_pem_x509_crl((tmp_path / "issuing" / "crl.pem").read_bytes()) == crl2
    # The index survives a reopen: revoke and crl work in a later process.
    reopened = CaDir.open(tmp_path / "issuing")
    assert reopened.index.crl_number == 2
    found = reopened.index.find(gone.serial_number)
    assert found is not None and found.revoked_at is not None


def test_parse_serial() -> None:
    assert parse_serial("0x1f:E8") == 0x1FE8
    assert parse_serial("ABC") == 0xABC
    for bad in ("xyz", "0", ""):
        with pytest.raises(ProfileError):
            parse_serial(bad)


def test_throwaway_pki_layout(tmp_path: Path) -> None:
    pki = build_throwaway_pki(tmp_path / "pki", ["gw-1", "node-1"], province="Hue")
    assert set(pki.devices) == {"gw-1", "node-1"}
    for creds in [*pki.devices.values()]:
        assert stat.S_IMODE(creds.key.stat().st_mode) == 0o600
        leaf, ca = x509.load_pem_x509_certificates(creds.chain.read_bytes())
        assert leaf == x509.load_pem_x509_certificate(creds.cert.read_bytes())
        assert ca == x509.load_pem_x509_certificate(pki.issuing_cert.read_bytes())
    recipient = x509.load_pem_x509_certificate(pki.ioc_recipient_cert.read_bytes())
    assert _ku(recipient) == {"key_agreement"}
    command = x509.load_pem_x509_certificate(pki.ioc_command_cert.read_bytes())
    assert _ku(command) == {"digital_signature"}
    assert stat.S_IMODE((pki.dir / "ca-passphrase").stat().st_mode) == 0o600
    # The random CA passphrase opens the CA: the CLI can continue from a throw-away PKI.
    passphrase = (pki.dir / "ca-passphrase").read_bytes().strip()
    CaDir.open(pki.dir / "issuing").unlock(passphrase)
    again = pki.issue_device("gw-1", profile="node", key_type="ed25519")
    assert again.cert.parent.name == "gw-1.2" and pki.devices["gw-1"] == again


def test_throwaway_with_passphrase_encrypts_every_key(tmp_path: Path) -> None:
    pki = build_throwaway_pki(tmp_path / "pki", ["gw-1"], passphrase=b"demo")
    assert not (pki.dir / "ca-passphrase").exists()
    for key in (pki.devices["gw-1"].key, pki.ioc_recipient_key, pki.ioc_command_key,
                pki.dir / "root" / "ca.key", pki.dir / "issuing" / "ca.key"):
        assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()


def test_crl_distribution_points(tmp_path: Path) -> None:
    """Each CA's CRL URL is written into the certificates it issues (not into its own)."""
    root = CaDir.init_root(tmp_path / "root", SubjectFields("Root"), PASS, now=NOW, days=100,
                           crl_url="http://pki.example.vn/root.crl")
    issuing = root.init_issuing(tmp_path / "issuing", SubjectFields("Issuing"), PASS, now=NOW, days=50,
                                crl_url="http://pki.example.vn/issuing.crl")
    leaf = issuing.issue(_csr(), end_entity_profile("gateway"), now=NOW)

    def urls(cert: x509.Certificate) -> list[str]:
        try:
            points = _ext(cert, x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return []
        return [str(name.value) for point in points for name in point.full_name or []]

    assert urls(root.cert) == []
    assert urls(issuing.cert) == ["http://pki.example.vn/root.crl"]
    assert urls(leaf) == ["http://pki.example.vn/issuing.crl"]
    assert CaDir.open(tmp_path / "issuing").index.crl_url == "http://pki.example.vn/issuing.crl"


def test_concurrent_writers_lose_no_change(cas: tuple[CaDir, CaDir], tmp_path: Path) -> None:
    """The EST service, `pki issue` and `pki revoke` may change one CA at once: every issued
    certificate and every revocation survives (each change re-reads the index under a lock)."""
    import subprocess
    import sys

    _, issuing = cas
    first = issuing.unlock(PASS).issue(_csr("gw-first"), end_entity_profile("gateway"), now=NOW)
    # Each writer keeps its CaDir open across its changes, as the EST service does.
    writer = f"""
import sys
from datetime import datetime, UTC
from pathlib import Path
from pki.castore import CaDir
from pki.certs import make_csr
from pki.keys import generate_key
from pki.profiles import SubjectFields, end_entity_profile
ca = CaDir.open(Path({str(issuing.path)!r})).unlock({PASS!r})
now = datetime(2030, 1, 1, tzinfo=UTC)
if sys.argv[1] == "revoke":
    ca.revoke({first.serial_number}, "keyCompromise", now=now)
    for _ in range(10):
        ca.make_crl(now=now, days=7)
else:
    for i in range(15):
        ca.issue(make_csr(generate_key("p256"), SubjectFields(f"gw-{{sys.argv[1]}}-{{i}}")),
                 end_entity_profile("gateway"), now=now)
"""
    procs = [subprocess.Popen([sys.executable, "-c", writer, who]) for who in ("a", "b", "revoke")]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    index = CaDir.open(issuing.path).index
    subjects = [e.subject for e in index.certs]
    assert len(subjects) == 31 and len(set(e.serial for e in index.certs)) == 31
    assert all(any(f"gw-{w}-{i}" in s for s in subjects) for w in "ab" for i in range(15))
    entry = index.find(first.serial_number)
    assert entry is not None and entry.reason == "keyCompromise"
    assert index.crl_number == 10
    crl = x509.load_pem_x509_crl((issuing.path / "crl.pem").read_bytes())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 10
    assert stat.S_IMODE((issuing.path / "index.lock").stat().st_mode) == 0o600


def test_a_renewed_certificate_is_revoked_as_superseded_once_its_grace_ran_out(cas: tuple[CaDir, CaDir]) -> None:
    _, issuing = cas
    issuing.unlock(PASS)
    gw = end_entity_profile("gateway")
    day = timedelta(days=1)
    a = issuing.issue(_csr("gw-r"), gw, now=NOW)
    b = issuing.issue(_csr("gw-r"), gw, now=NOW + day, supersedes=a.serial_number)
    entry = issuing.index.find(a.serial_number)
    assert entry is not None and int(entry.superseded_by or "0", 16) == b.serial_number
    assert not entry.superseded_before(NOW + 7 * day) and entry.superseded_before(NOW + 8 * day)
    assert len(issuing.make_crl(now=NOW + 2 * day, days=7)) == 0  # within the grace: still good
    # Renewed again with the old one (the device never installed b): b is superseded by c, and
    # a's grace still counts from its first renewal.
    c = issuing.issue(_csr("gw-r"), gw, now=NOW + 3 * day, supersedes=a.serial_number)
    index = CaDir.open(issuing.path).index
    ea, eb, ec_ = (index.find(x.serial_number) for x in (a, b, c))
    assert ea is not None and eb is not None and ec_ is not None
    assert int(ea.superseded_by or "0", 16) == c.serial_number and ea.superseded_at == (NOW + day).isoformat()
    assert int(eb.superseded_by or "0", 16) == c.serial_number and eb.superseded_at == (NOW + 3 * day).isoformat()
    assert ec_.superseded_by is None
    crl = issuing.make_crl(now=NOW + 8 * day, days=7)
    assert [r.serial_number for r in crl] == [a.serial_number]
    gone = crl.get_revoked_certificate_by_serial_number(a.serial_number)
    assert gone is not None and gone.revocation_date_utc == NOW + 8 * day
    assert gone.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded
    crl = issuing.make_crl(now=NOW + 10 * day, days=7)
    assert {r.serial_number for r in crl} == {a.serial_number, b.serial_number}
    assert crl.get_revoked_certificate_by_serial_number(c.serial_number) is None


def test_an_index_written_before_renewals_were_tracked_still_opens(cas: tuple[CaDir, CaDir]) -> None:
    _, issuing = cas
    a = issuing.unlock(PASS).issue(_csr("gw-o"), end_entity_profile("gateway"), now=NOW)
    path = issuing.path / "index.json"
    raw = json.loads(path.read_text())
    for e in raw["certs"]:
        del e["superseded_by"], e["superseded_at"]
    path.write_text(json.dumps(raw))
    entry = CaDir.open(issuing.path).index.find(a.serial_number)
    assert entry is not None and entry.superseded_by is None and not entry.superseded_before(NOW + timedelta(days=99))
