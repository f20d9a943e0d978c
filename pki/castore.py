"""A CA on disk: ``ca.pem``, ``ca.key`` (0600, encrypted) and ``index.json`` in a 0700 directory.

The index lists every certificate the CA signed (serial, subject, profile, not_after,
revoked_at, reason) and the last CRL number, so ``revoke`` and ``crl`` work later without
the certificates themselves. It is rewritten atomically (temp file + rename): a crash leaves
the old index or the new one, never half of each. Every change is a read-modify-write under
an exclusive lock on ``index.lock`` (the EST service and ``pki revoke``/``crl`` may run at once:
without it one's write could drop the other's change, e.g. undo a revocation).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import certs
from pki.errors import CaStateError, CsrError, KeyFileError, ProfileError
from pki.keys import (
    PrivateKey,
    cert_pem,
    generate_key,
    load_cert,
    load_private_key,
    save_private_key,
    write_public_file,
)
from pki.profiles import ISSUING_CA, Profile, SubjectFields, name_text
from pki.show import serial_hex

log = logging.getLogger(__name__)

CERT_FILE, KEY_FILE, INDEX_FILE, CRL_FILE = "ca.pem", "ca.key", "index.json", "crl.pem"
LOCK_FILE = "index.lock"
# A renewed certificate stays usable this long after its successor was issued (the device may
# not have installed the new one yet and ask again with the old one); after that `crl` revokes
# it (reason superseded) and re-enrolment with it is refused: a key left on a replaced SD card
# or copied off a device does not stay good until the old certificate expires.
SUPERSEDED_GRACE = timedelta(days=7)
INDEX_VERSION = 1
REASONS: dict[str, x509.ReasonFlags] = {
    flag.value: flag for flag in (
        x509.ReasonFlags.unspecified, x509.ReasonFlags.key_compromise, x509.ReasonFlags.ca_compromise,
        x509.ReasonFlags.affiliation_changed, x509.ReasonFlags.superseded,
        x509.ReasonFlags.cessation_of_operation,
    )
}


@dataclass
class IndexEntry:
    serial: str  # hex, as openssl prints it
    subject: str
    profile: str
    not_after: str
    revoked_at: str | None = None
    reason: str | None = None
    superseded_by: str | None = None  # serial (hex) of the certificate a renewal issued for it
    superseded_at: str | None = None

    def superseded_before(self, moment: datetime) -> bool:
        """Renewed, and the grace after its successor had run out by ``moment``."""
        return (self.superseded_at is not None
                and datetime.fromisoformat(self.superseded_at) + SUPERSEDED_GRACE <= moment)


@dataclass
class Index:
    crl_number: int = 0
    crl_url: str | None = None
    certs: list[IndexEntry] = field(default_factory=list)

    def find(self, serial: int) -> IndexEntry | None:
        # By value: the hex spelling of a serial (leading zero or not) must not matter.
        return next((e for e in self.certs if int(e.serial, 16) == serial), None)


def parse_serial(text: str) -> int:
    """A serial as ``show`` and openssl print it: hex, optionally with ``0x`` or colons."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise ProfileError(f"bad serial {text!r}: expected hexadecimal") from None
    if value <= 0:
        raise ProfileError(f"bad serial {text!r}: must be positive")
    return value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def make_ca_dir(path: Path) -> None:
    """Create ``path`` 0700, or accept an existing directory that holds no CA key yet."""
    if (path / KEY_FILE).exists():
        raise CaStateError(path / KEY_FILE, "already exists; refusing to overwrite a CA key")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CaStateError(path, f"cannot create directory: {exc.strerror}") from None
    if not path.is_dir():
        raise CaStateError(path, "not a directory")
    os.chmod(path, 0o700)


class CaDir:
    """One CA directory. Opening it reads the certificate and index; signing needs ``unlock``."""

    def __init__(self, path: Path, cert: x509.Certificate, index: Index) -> None:
        self.path = path
        self.cert = cert
        self.index = index
        self._key: PrivateKey | None = None

    # -- creating -----------------------------------------------------------------------------
    @classmethod
    def init_root(cls, path: Path, subject: SubjectFields, passphrase: bytes | None, *, now: datetime,
                  days: int, crl_url: str | None = None) -> CaDir:
        make_ca_dir(path)
        key = generate_key("p256")
        cert = certs.make_root(key, subject, now=now, days=days)
        return cls._create(path, key, cert, passphrase, crl_url, "root")

    def init_issuing(self, path: Path, subject: SubjectFields, passphrase: bytes | None, *, now: datetime,
                     days: int, crl_url: str | None = None) -> CaDir:
        """Create an issuing CA under this (root) CA: its key is generated in ``path``."""
        make_ca_dir(path)
        key = generate_key("p256")
        valid = certs.validity(now, days, issuer=self.cert)
        cert = certs.sign_certificate(profile=ISSUING_CA, subject=subject.name(), subject_key=key.public_key(),
                                      issuer_cert=self.cert, issuer_key=self.key, valid=valid, device_id=None,
                                      crl_url=self.index.crl_url)
        ca = self._create(path, key, cert, passphrase, crl_url, "issuing")
        self._record(cert, ISSUING_CA.name)
        return ca

    @classmethod
    def _create(cls, path: Path, key: PrivateKey, cert: x509.Certificate, passphrase: bytes | None,
                crl_url: str | None, kind: str) -> CaDir:
        save_private_key(key, path / KEY_FILE, passphrase)
        write_public_file(path / CERT_FILE, cert_pem(cert))
        ca = cls(path, cert, Index(crl_url=crl_url))
        ca._key = key
        ca._save_index()
        log.info("event=pki_ca_created kind=%s dir=%s subject=%s serial=%s not_after=%s encrypted=%s",
                 kind, path, _kv(name_text(cert.subject)), serial_hex(cert.serial_number),
                 _iso(cert.not_valid_after_utc), bool(passphrase))
        return ca

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path) -> CaDir:
        if not path.is_dir():
            raise CaStateError(path, "no such CA directory")
        for name in (CERT_FILE, KEY_FILE, INDEX_FILE):
            if not (path / name).is_file():
                raise CaStateError(path / name, "missing: not a CA directory made by `urbanedge pki`")
        cert = load_cert(path / CERT_FILE)
        return cls(path, cert, _read_index(path / INDEX_FILE))

    def unlock(self, passphrase: bytes | None) -> CaDir:
        key = load_private_key(self.path / KEY_FILE, passphrase)
        if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
                != self.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo):
            raise KeyFileError(self.path / KEY_FILE, f"does not match the certificate {self.path / CERT_FILE}")
        self._key = key
        return self

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            raise CaStateError(self.path / KEY_FILE, "CA key is locked (internal error: unlock first)")
        return self._key

    # -- signing ------------------------------------------------------------------------------
    def issue(self, csr: x509.CertificateSigningRequest, profile: Profile, *, now: datetime, days: int | None = None,
              not_before: datetime | None = None, csr_name: str = "CSR", supersedes: int | None = None
              ) -> x509.Certificate:
        """Sign ``csr`` with ``profile`` and record it in the index; a renewal names the serial
        of the certificate it ``supersedes`` (marked so in the same index change)."""
        try:
            checked = certs.check_csr(csr, profile)
        except ProfileError as exc:
            raise CsrError(csr_name, str(exc)) from None
        valid = certs.validity(now, days if days is not None else profile.days, not_before=not_before,
                               issuer=self.cert)
        cert = certs.sign_certificate(profile=profile, subject=checked.subject, subject_key=checked.public_key,
                                      issuer_cert=self.cert, issuer_key=self.key, valid=valid,
                                      device_id=checked.device_id, crl_url=self.index.crl_url)
        self._record(cert, profile.name, supersedes=supersedes, now=now)
        log.info("event=pki_issued ca=%s profile=%s device_id=%s serial=%s not_after=%s",
                 self.path, profile.name, checked.device_id, serial_hex(cert.serial_number),
                 _iso(cert.not_valid_after_utc))
        return cert

    def _record(self, cert: x509.Certificate, profile: str, *, supersedes: int | None = None,
                now: datetime | None = None) -> None:
        with self._changing() as index:
            index.certs.append(IndexEntry(serial_hex(cert.serial_number), name_text(cert.subject), profile,
                                          _iso(cert.not_valid_after_utc)))
            old = index.find(supersedes) if supersedes is not None else None
            if old is not None:
                new, at = serial_hex(cert.serial_number), _iso(now if now is not None else datetime.now(UTC))
                if old.superseded_by is not None:
                    # Renewed again with the old one (the device never took up the last
                    # successor): that successor is superseded now; the old one's grace still
                    # counts from its first renewal, so retries cannot stretch it.
                    prev = index.find(int(old.superseded_by, 16))
                    if prev is not None and prev.superseded_by is None:
                        prev.superseded_by, prev.superseded_at = new, at
                else:
                    old.superseded_at = at
                old.superseded_by = new

    def revoke(self, serial: int, reason: str, *, now: datetime) -> IndexEntry:
        """Mark ``serial`` revoked (a new CRL is needed to publish it). Revoking twice is a no-op."""
        if reason not in REASONS:
            raise ProfileError(f"unknown reason {reason!r}; one of {', '.join(REASONS)}")
        with self._changing() as index:
            entry = index.find(serial)
            if entry is None:
                raise CaStateError(self.path / INDEX_FILE, f"no certificate with serial {serial_hex(serial)} "
                                                           "was issued by this CA")
            if entry.revoked_at is not None:
                return entry
            entry.revoked_at, entry.reason = _iso(now), reason
        log.info("event=pki_revoked ca=%s serial=%s reason=%s", self.path, entry.serial, reason)
        return entry

    def make_crl(self, *, now: datetime, days: int) -> x509.CertificateRevocationList:
        """Sign a CRL of every revoked certificate, write it to ``crl.pem``, bump the CRL number."""
        # The CRL file is written under the lock too: two runs at once publish in number order.
        with self._changing() as index:
            for e in index.certs:
                if e.revoked_at is None and e.superseded_before(now):
                    assert e.superseded_at is not None  # superseded_before says so
                    at = datetime.fromisoformat(e.superseded_at) + SUPERSEDED_GRACE
                    e.revoked_at, e.reason = _iso(at), "superseded"
                    log.info("event=pki_revoked ca=%s serial=%s reason=superseded by=%s", self.path, e.serial,
                             e.superseded_by)
            revoked = [certs.Revocation(int(e.serial, 16), datetime.fromisoformat(e.revoked_at),
                                        REASONS.get(e.reason or "", x509.ReasonFlags.unspecified))
                       for e in index.certs if e.revoked_at is not None]
            number = index.crl_number + 1
            crl = certs.make_crl(self.cert, self.key, revoked, number=number, now=now, days=days)
            index.crl_number = number
            # The number is saved before the CRL goes out: a crash between the two skips a
            # number, never publishes two different CRLs under one.
            self._save_index()
            write_public_file(self.path / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM))
        log.info("event=pki_crl ca=%s number=%d revoked=%d next_update=%s", self.path, number, len(revoked),
                 _iso(now) if crl.next_update_utc is None else _iso(crl.next_update_utc))
        return crl

    @contextmanager
    def _changing(self) -> Iterator[Index]:
        """The index as on disk now, locked against other writers; saved if the block ends
        without an exception."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CaStateError(self.path / LOCK_FILE, f"cannot open the index lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.index = _read_index(self.path / INDEX_FILE)
            yield self.index
            self._save_index()
        finally:
            os.close(fd)  # releases the lock

    def _save_index(self) -> None:
        data = {"version": INDEX_VERSION, "crl_number": self.index.crl_number, "crl_url": self.index.crl_url,
                "certs": [asdict(e) for e in self.index.certs]}
        write_public_file(self.path / INDEX_FILE, (json.dumps(data, indent=1) + "\n").encode())


def _read_index(path: Path) -> Index:
    try:
        raw: Any = json.loads(path.read_bytes())
        if raw.get("version") != INDEX_VERSION:
            raise CaStateError(path, f"unsupported index version {raw.get('version')!r}")
        return Index(int(raw["crl_number"]), raw.get("crl_url"), [IndexEntry(**e) for e in raw["certs"]])
    except CaStateError:
        raise
    except OSError as exc:
        raise CaStateError(path, f"cannot read: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CaStateError(path, "corrupt CA index (not the JSON `urbanedge pki` writes)") from None


def _kv(text: str) -> str:
    # Keeps a log value one token: our logs are space-separated key=value pairs.
    return json.dumps(text) if (" " in text or not text) else text
