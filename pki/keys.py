"""Key pairs and PEM files: created where they are used, written once with mode 0600.

Private keys are PKCS#8 PEM, encrypted (PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC) when a
passphrase is given. Nothing here ever returns a private key as bytes to a caller: a key
goes from ``generate_key`` to ``save_private_key`` on the machine that uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pki.algorithms import KEY_TYPES, KeyType, PrivateKey, PublicKey, describe_key, generate_key, key_type_of
from pki.errors import BadPassphraseError, CertFileError, FileProblem, KeyFileError

__all__ = [
    "KEY_TYPES", "KeyType", "PrivateKey", "PublicKey", "cert_pem", "describe_key", "generate_key",
    "key_type_of", "load_cert", "load_certs", "load_crls", "load_csr", "load_private_key", "read_input",
    "save_private_key", "write_new_file", "write_public_file",
]


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``mode`` and write ``data``; refuse to replace an existing file.

    O_EXCL makes the refusal atomic (no check-then-write race), and the mode is applied at
    creation so the content is never readable by others, not even for an instant.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(path, "already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot create: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond `mode`
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def save_private_key(key: PrivateKey, path: Path, passphrase: bytes | None) -> None:
    """Write ``key`` as PKCS#8 PEM to a new file of mode 0600 (O_CREAT|O_EXCL)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write_new_file(Path(path), pem, 0o600)


def read_input(path: Path, error: type[FileProblem]) -> bytes:
    """Read a whole input file, turning OS errors into ``error(path, problem)``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except IsADirectoryError:
        raise error(path, "is a directory, expected a file") from None
    except OSError as exc:
        raise error(path, f"cannot read: {exc.strerror}") from None


def load_private_key(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Load a P-256 or Ed25519 private key (PEM or DER).

    Raises BadPassphraseError for a wrong or missing passphrase, KeyFileError otherwise.
    """
    data = read_input(path, KeyFileError)
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = loader(data, passphrase or None)
    except TypeError as exc:
        # cryptography signals "encrypted but no password" and the reverse with TypeError.
        if "not encrypted" in str(exc):
            raise KeyFileError(path, "key is not encrypted, but a passphrase was given") from None
        raise BadPassphraseError(path, "key is encrypted: a passphrase is needed") from None
    except ValueError as exc:
        if "password" in str(exc).lower() or "decrypt" in str(exc).lower():
            raise BadPassphraseError(path, "wrong passphrase (cannot decrypt the key)") from None
        raise KeyFileError(path, "not a valid private key") from None
    except UnsupportedAlgorithm:
        raise KeyFileError(path, "unsupported key algorithm") from None
    if key_type_of(key) is None:
        raise KeyFileError(path, f"unsupported key type {describe_key(key)}; use P-256 or Ed25519")
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return key


def load_certs(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one certificate of a DER file."""
    data = read_input(path, CertFileError)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertFileError(path, "not a valid certificate (PEM or DER)") from None


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate of ``path``."""
    return load_certs(path)[0]


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (one or several), or the one CRL of a DER file."""
    data = read_input(path, CertFileError)
    try:
        if b"-----BEGIN" not in data:
            return [x509.load_der_x509_crl(data)]
        blocks = _pem_blocks(data, b"X509 CRL")
        if not blocks:
            raise ValueError("no CRL block")
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError:
        raise CertFileError(path, "not a valid CRL (PEM or DER)") from None


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    data = read_input(path, CertFileError)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise CertFileError(path, "not a valid certificate signing request (PEM or DER)") from None


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks: list[bytes] = []
    start = data.find(begin)
    while start != -1:
        stop = data.find(end, start)
        if stop == -1:
            break
        blocks.append(data[start:stop + len(end)] + b"\n")
        start = data.find(begin, stop)
    return blocks


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_public_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write a certificate, CSR or CRL (public data, mode 0644) atomically via a temp file."""
    path = Path(path)
    if not overwrite and path.exists():
        raise CertFileError(path, "already exists; refusing to overwrite it")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CertFileError(path, f"cannot write: {exc.strerror}") from None
