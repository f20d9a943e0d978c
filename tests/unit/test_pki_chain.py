"""verify_chain against real certificates: every accept path and every ChainError reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.castore import CaDir
from pki.certs import make_csr, sign_certificate, validity
from pki.chain import (
    BadChainSignatureError,
    ChainError,
    ExpiredError,
    RevokedError,
    UnknownIssuerError,
    WrongUsageError,
    device_id_of,
    verify_chain,
)
from pki.keys import PrivateKey, generate_key, load_cert, load_crls, load_private_key
from pki.profiles import GATEWAY, ISSUING_CA, SubjectFields
from pki.throwaway import ThrowawayPki, build_throwaway_pki


class Pki:
    """A throw-away PKI loaded as objects, plus the issuing CA unlocked for forging tests."""

    def __init__(self, tmp: Path, name: str = "pki") -> None:
        self.files: ThrowawayPki = build_throwaway_pki(tmp / name, ["gw-1", "gw-2"])
        self.root = load_cert(self.files.root_cert)
        self.issuing = load_cert(self.files.issuing_cert)
        self.ca = CaDir.open(self.files.dir / "issuing").unlock((self.files.dir / "ca-passphrase").read_bytes().strip())

    def leaf(self, device_id: str) -> x509.Certificate:
        return load_cert(self.files.devices[device_id].cert)

    def leaf_key(self, device_id: str) -> PrivateKey:
        return load_private_key(self.files.devices[device_id].key)

    def crls(self) -> list[x509.CertificateRevocationList]:
        return load_crls(self.files.crl) + load_crls(self.files.root_crl)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def now() -> datetime:
    return datetime.now(UTC)


def test_device_and_ioc_certificates_verify(pki: Pki) -> None:
    verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), crls=pki.crls())
    verify_chain(pki.leaf("gw-2"), [pki.issuing], pki.root, at=now(), usage="signing")
    verify_chain(load_cert(pki.files.ioc_recipient_cert), [pki.issuing], pki.root, at=now(), usage="key_agreement")
    verify_chain(load_cert(pki.files.ioc_command_cert), [pki.issuing], pki.root, at=now())
    # Extra, unrelated intermediates and a naive UTC time are fine.
    other = Pki(pki.files.dir.parent, "other")
    verify_chain(pki.leaf("gw-1"), [other.issuing, pki.issuing, pki.root], pki.root,
                 at=now().replace(tzinfo=None))


def test_ed25519_device_verifies(pki: Pki) -> None:
    creds = pki.files.issue_device("node-9", profile="node", key_type="ed25519")
    verify_chain(load_cert(creds.cert), [pki.issuing], pki.root, at=now())


def test_unknown_issuer_other_root(pki: Pki) -> None:
    other = Pki(pki.files.dir.parent, "other")
    with pytest.raises(UnknownIssuerError) as exc:
        verify_chain(other.leaf("gw-1"), [other.issuing], pki.root, at=now())
    assert exc.value.reason == "unknown_issuer"
    # The other PKI's issuing CA passed along does not help: its root is not ours.
    with pytest.raises(UnknownIssuerError):
        verify_chain(other.leaf("gw-1"), [pki.issuing], pki.root, at=now())
    with pytest.raises(UnknownIssuerError):
        verify_chain(pki.leaf("gw-1"), [], pki.root, at=now())  # intermediate missing


def test_unknown_issuer_same_name_other_key(pki: Pki, tmp_path: Path) -> None:
    """An impostor CA copying our issuing CA's name, but with its own key."""
    impostor_key = generate_key("p256")
    forged = _forge(pki.issuing.subject, impostor_key, subject_key=generate_key("p256"),
                    aki_key=impostor_key)
    with pytest.raises(UnknownIssuerError):
        verify_chain(forged, [pki.issuing], pki.root, at=now())


def test_bad_chain_signature(pki: Pki) -> None:
    """Our issuer's name and key id, but not signed by its key."""
    forged = _forge(pki.issuing.subject, generate_key("p256"), subject_key=generate_key("p256"),
                    aki_key=pki.ca.key)
    with pytest.raises(BadChainSignatureError) as exc:
        verify_chain(forged, [pki.issuing], pki.root, at=now())
    assert exc.value.reason == "bad_chain_signature"


def test_expired_and_not_yet_valid(pki: Pki) -> None:
    past = now() - timedelta(days=30)
    creds = pki.files.issue_device("gw-old", days=2, not_before=past)
    old = load_cert(creds.cert)
    with pytest.raises(ExpiredError, match="expired at") as exc:
        verify_chain(old, [pki.issuing], pki.root, at=now())
    assert exc.value.reason == "expired"
    assert (old.not_valid_before_utc, old.not_valid_after_utc) == (past.replace(microsecond=0),
                                                                   past.replace(microsecond=0) + timedelta(days=2))
    with pytest.raises(ExpiredError, match="not valid before"):
        verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=pki.root.not_valid_before_utc
                     - timedelta(days=1))


def test_revoked(pki: Pki) -> None:
    verify_chain(pki.leaf("gw-2"), [pki.issuing], pki.root, at=now(), crls=pki.crls())
    pki.files.revoke("gw-2")
    with pytest.raises(RevokedError) as exc:
        verify_chain(pki.leaf("gw-2"), [pki.issuing], pki.root, at=now(), crls=pki.crls())
    assert exc.value.reason == "revoked"
    verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), crls=pki.crls())
    # Without the CRL, nothing is known of the revocation.
    verify_chain(pki.leaf("gw-2"), [pki.issuing], pki.root, at=now())


def test_revoked_issuing_ca(pki: Pki) -> None:
    root_ca = CaDir.open(pki.files.dir / "root").unlock((pki.files.dir / "ca-passphrase").read_bytes().strip())
    root_ca.revoke(pki.issuing.serial_number, "cACompromise", now=now())
    root_crl = root_ca.make_crl(now=now(), days=1)
    with pytest.raises(RevokedError, match="Issuing CA"):
        verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), crls=[root_crl])


def test_crl_from_an_unknown_issuer_is_ignored(pki: Pki) -> None:
    """A CRL naming our issuer but signed by another key must not revoke (or un-revoke) anything."""
    serial = pki.leaf("gw-1").serial_number
    stranger = generate_key("p256")
    entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now()).build()
    fake = (x509.CertificateRevocationListBuilder().issuer_name(pki.issuing.subject)
            .last_update(now()).next_update(now() + timedelta(days=1)).add_revoked_certificate(entry)
            .sign(stranger, hashes.SHA256()))
    verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), crls=[fake])
    other = Pki(pki.files.dir.parent, "other")
    other.files.revoke("gw-1")
    verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), crls=other.crls())


def test_wrong_usage_of_leaf(pki: Pki) -> None:
    recipient = load_cert(pki.files.ioc_recipient_cert)
    with pytest.raises(WrongUsageError, match="not a signing certificate") as exc:
        verify_chain(recipient, [pki.issuing], pki.root, at=now(), usage="signing")
    assert exc.value.reason == "wrong_usage"
    with pytest.raises(WrongUsageError, match="not a key-agreement certificate"):
        verify_chain(pki.leaf("gw-1"), [pki.issuing], pki.root, at=now(), usage="key_agreement")
    with pytest.raises(WrongUsageError, match="is a CA certificate"):
        verify_chain(pki.issuing, [], pki.root, at=now())


def test_wrong_usage_leaf_acting_as_ca(pki: Pki) -> None:
    """A gateway signing a certificate for another device: gateway keys are not CA keys."""
    gateway, gateway_key = pki.leaf("gw-1"), pki.leaf_key("gw-1")
    forged = _forge(gateway.subject, gateway_key, subject_key=generate_key("p256"), aki_key=gateway_key)
    with pytest.raises(WrongUsageError, match="is not a CA"):
        verify_chain(forged, [gateway, pki.issuing], pki.root, at=now())


def test_wrong_usage_path_length(pki: Pki) -> None:
    """The issuing CA (pathlen 0) may not create a further CA level."""
    sub_key = generate_key("p256")
    sub_ca = sign_certificate(profile=ISSUING_CA, subject=SubjectFields("Sub CA").name(),
                              subject_key=sub_key.public_key(), issuer_cert=pki.issuing, issuer_key=pki.ca.key,
                              valid=validity(now(), 30), device_id=None)
    leaf_csr = make_csr(generate_key("p256"), SubjectFields("gw-deep"))
    leaf = sign_certificate(profile=GATEWAY, subject=leaf_csr.subject, subject_key=leaf_csr.public_key(),  # type: ignore[arg-type]
                            issuer_cert=sub_ca, issuer_key=sub_key, valid=validity(now(), 30), device_id="gw-deep")
    with pytest.raises(WrongUsageError, match="path length"):
        verify_chain(leaf, [sub_ca, pki.issuing], pki.root, at=now())


def test_device_id_of(pki: Pki) -> None:
    assert device_id_of(pki.leaf("gw-1")) == "gw-1"
    assert device_id_of(pki.root) is None
    key = generate_key("p256")
    other_uri = _forge(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]), key, subject_key=key,
                       aki_key=key, san=["https://example.org/x", "urn:urbanedge:device:bad id"])
    assert device_id_of(other_uri) is None


def _forge(issuer: x509.Name, signing_key: PrivateKey, *, subject_key: PrivateKey, aki_key: PrivateKey,
           san: list[str] | None = None) -> x509.Certificate:
    """A signing certificate built by hand, for the cases our CA must never produce."""
    start = now() - timedelta(minutes=1)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
            .issuer_name(issuer).public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + timedelta(days=1))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key.public_key()), False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(u) for u in (san or ["urn:urbanedge:device:forged"])]), False)
            .sign(signing_key, hashes.SHA256() if isinstance(signing_key, ec.EllipticCurvePrivateKey) else None))


def test_reasons_are_distinct_chain_errors() -> None:
    kinds = (UnknownIssuerError, BadChainSignatureError, ExpiredError, RevokedError, WrongUsageError)
    assert all(issubclass(kind, ChainError) for kind in kinds)
    assert [kind.reason for kind in kinds] == ["unknown_issuer", "bad_chain_signature", "expired", "revoked",
                                               "wrong_usage"]
