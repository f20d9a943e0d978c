"""Key and certificate files: 0600, never overwritten, typed errors for every bad file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pki.errors import BadPassphraseError, CertFileError, KeyFileError
from pki.keys import (
    generate_key,
    key_type_of,
    load_certs,
    load_crls,
    load_private_key,
    save_private_key,
    write_new_file,
)
from pki.throwaway import build_throwaway_pki


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("kind", ["p256", "ed25519"])
def test_saved_key_is_0600_and_round_trips(tmp_path: Path, kind: str) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    path = tmp_path / "k.pem"
    save_private_key(key, path, b"correct horse")
    assert _mode(path) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    loaded = load_private_key(path, b"correct horse")
    assert key_type_of(loaded) == kind
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    assert loaded.public_key().public_bytes(serialization.Encoding.DER, raw) == \
        key.public_key().public_bytes(serialization.Encoding.DER, raw)


def test_unencrypted_key_without_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    save_private_key(generate_key("p256"), path, None)
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()
    assert _mode(path) == 0o600
    assert isinstance(load_private_key(path), ec.EllipticCurvePrivateKey)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    save_private_key(generate_key("p256"), path, None)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        save_private_key(generate_key("p256"), path, None)
    assert path.read_bytes() == before


def test_new_file_ignores_a_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        write_new_file(tmp_path / "secret", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "secret") == 0o600


def test_wrong_missing_and_unexpected_passphrase(tmp_path: Path) -> None:
    enc, plain = tmp_path / "enc.pem", tmp_path / "plain.pem"
    save_private_key(generate_key("p256"), enc, b"right")
    save_private_key(generate_key("ed25519"), plain, None)
    with pytest.raises(BadPassphraseError, match="wrong passphrase") as wrong:
        load_private_key(enc, b"wrong")
    assert wrong.value.path == enc
    with pytest.raises(BadPassphraseError, match="passphrase is needed"):
        load_private_key(enc, None)
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_private_key(plain, b"something")
    assert isinstance(load_private_key(plain), ed25519.Ed25519PrivateKey)


def test_bad_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such file"):
        load_private_key(tmp_path / "absent.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError, match="not a valid private key"):
        load_private_key(garbage)
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(KeyFileError, match="unsupported key type EC secp384r1"):
        load_private_key(p384)
    with pytest.raises(KeyFileError, match="is a directory"):
        load_private_key(tmp_path)


def test_load_certs_bundle_der_and_crls(tmp_path: Path) -> None:
    pki = build_throwaway_pki(tmp_path / "pki", ["gw-1"])
    chain = load_certs(pki.devices["gw-1"].chain)
    assert [c.subject for c in chain[1:]] == [load_certs(pki.issuing_cert)[0].subject]
    der = tmp_path / "leaf.der"
    der.write_bytes(chain[0].public_bytes(serialization.Encoding.DER))
    assert load_certs(der) == chain[:1]
    both = tmp_path / "both.crl"
    both.write_bytes(pki.crl.read_bytes() + pki.root_crl.read_bytes())
    assert [c.issuer for c in load_crls(both)] == [chain[1].subject, chain[1].issuer]
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"hello")
    with pytest.raises(CertFileError, match="not a valid certificate"):
        load_certs(bad)
    with pytest.raises(CertFileError, match="not a valid CRL"):
        load_crls(bad)
    with pytest.raises(CertFileError, match="no such file"):
        load_certs(tmp_path / "absent.pem")
