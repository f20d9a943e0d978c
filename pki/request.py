"""``pki request``, run on the device: a new key pair stays there, only the CSR leaves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.certs import make_csr
from pki.errors import KeyFileError
from pki.keys import KeyType, generate_key, save_private_key, write_public_file
from pki.profiles import SubjectFields, name_text

log = logging.getLogger(__name__)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; leave an existing one as it is."""
    if path.is_dir():
        return
    try:
        path.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise KeyFileError(path, f"cannot create directory: {exc.strerror}") from None


def create_request(key_path: Path, csr_path: Path, subject: SubjectFields, *, key_type: KeyType = "p256",
                   passphrase: bytes | None = None) -> x509.CertificateSigningRequest:
    """Generate a key into ``key_path`` (new file, 0600, encrypted if ``passphrase``) and write its CSR."""
    csr_subject = subject.name()  # validate before any file is created
    make_private_dir(key_path.parent)
    key = generate_key(key_type)
    csr = make_csr(key, subject)
    save_private_key(key, key_path, passphrase)
    write_public_file(csr_path, csr.public_bytes(serialization.Encoding.PEM))
    log.info("event=pki_request key=%s csr=%s key_type=%s encrypted=%s subject=%s", key_path, csr_path,
             key_type, bool(passphrase), json.dumps(name_text(csr_subject)))
    return csr
