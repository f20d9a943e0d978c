"""One-time enrolment tokens, each bound to one device (id, serial, site, profile).

The operator creates a token (``urbanedge pki token create``) and hands it to the technician;
the device proves with it, once, that it may get a certificate. A token reads
``uet1.<id>.<secret>``: the id finds the record, the secret (256 random bits) proves
possession. Only a SHA-256 of the secret is stored: the secret is random and long, so a
slow password hash would add nothing, and a copy of the file enrols nobody.

The store is one JSON file (default ``<ca-dir>/enrol-tokens.json``, mode 0600). Every change
is read-modify-write under an exclusive ``fcntl`` lock on ``<file>.lock`` and lands by
temp file + rename, so two servers or CLIs never lose each other's update and a crash leaves
the old file or the new one. Readers need no lock (a rename is atomic).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pki.errors import FileProblem, PkiError, ProfileError
from pki.profiles import check_device_id

TOKENS_FILE = "enrol-tokens.json"
TOKEN_PREFIX = "uet1"
STORE_VERSION = 1
MAX_TTL = timedelta(days=90)
TOKEN_PROFILES = ("gateway", "node")

TokenReason = Literal["unknown", "expired", "used", "wrong_device", "malformed"]
_ID_BYTES, _SECRET_BYTES = 5, 32
_TOKEN = re.compile(r"uet1\.([0-9a-f]{10})\.([A-Za-z0-9_-]{43})")
# Serials and sites end up in certificate subjects (64 characters at most) and key=value logs.
_FIELD_MAX = 64


class TokenError(PkiError):
    """A token that does not allow this enrolment; ``reason`` says why, ``detail`` for people."""

    def __init__(self, reason: TokenReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: TokenReason = reason
        self.detail = detail


class TokenStoreError(FileProblem):
    """The token file is unreadable, corrupt, or cannot be written."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    device_id: str
    serial: str
    site: str
    profile: str  # "gateway" | "node": the certificate profile, never taken from the request
    created: datetime
    expires: datetime
    used_at: datetime | None = None
    cert_serial: str | None = None  # hex, of the certificate the token was consumed for
    technician: str = ""
    revoked_at: datetime | None = None

    @property
    def state(self) -> str:
        """``used``, ``revoked`` or ``unused`` (expiry needs a clock: see ``check``)."""
        if self.used_at is not None:
            return "used"
        return "revoked" if self.revoked_at is not None else "unused"


_TIMES = ("created", "expires", "used_at", "revoked_at")


def _digest(token_id: str, secret: str) -> str:
    # Bound to the id: a secret's hash copied onto another record does not verify there.
    material = f"urbanedge-enrol-token-v1\0{token_id}\0{secret}".encode()
    return "sha256:" + hashlib.sha256(material).hexdigest()


def parse_token(token: str) -> tuple[str, str]:
    """``(id, secret)`` of a token's text; surrounding whitespace (copy and paste) is ignored."""
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise TokenError("malformed", f"not an enrolment token (expected {TOKEN_PREFIX}.<id>.<secret>)")
    return match.group(1), match.group(2)


def token_id_of(token: str) -> str | None:
    """The id part of a token, for logs (never the secret); None if it is not one."""
    try:
        return parse_token(token)[0]
    except TokenError:
        return None


def _text_field(name: str, value: str, *, required: bool) -> str:
    if required and not value:
        raise ProfileError(f"token {name} must not be empty")
    if len(value) > _FIELD_MAX or any(not ch.isprintable() for ch in value):
        raise ProfileError(f"token {name} {value!r}: at most {_FIELD_MAX} printable characters")
    return value


class TokenStore:
    """The token file of one issuing CA. Safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._mutex = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    @classmethod
    def for_ca(cls, ca_dir: Path) -> TokenStore:
        return cls(Path(ca_dir) / TOKENS_FILE)

    # -- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store exclusively (re-entrant in this thread).

        The EST service holds it across check → issue → consume, so one token can never
        yield two certificates, even from two processes.
        """
        with self._mutex:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise TokenStoreError(self._lock_path, f"cannot open lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- reading and writing ------------------------------------------------------------------
    def _load(self) -> list[dict[str, Any]]:
        try:
            raw: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TokenStoreError(self.path, f"cannot read: {exc.strerror}") from None
        except ValueError:
            raise TokenStoreError(self.path, "corrupt token file (not JSON)") from None
        if not isinstance(raw, dict) or raw.get("version") != STORE_VERSION or not isinstance(raw.get("tokens"), list):
            raise TokenStoreError(self.path, "not a token file of this version")
        return [t for t in raw["tokens"] if isinstance(t, dict)]

    def _save(self, rows: list[dict[str, Any]]) -> None:
        data = (json.dumps({"version": STORE_VERSION, "tokens": rows}, indent=1) + "\n").encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)  # a left-over temp file may have had another mode
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself must survive a power cut
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TokenStoreError(self.path, f"cannot write: {exc.strerror}") from None

    @staticmethod
    def _record(row: dict[str, Any]) -> TokenRecord:
        try:
            fields = {k: row[k] for k in TokenRecord.__dataclass_fields__ if k in row}
            for name in _TIMES:
                if fields.get(name) is not None:
                    fields[name] = datetime.fromisoformat(fields[name])
            return TokenRecord(**fields)
        except (KeyError, TypeError, ValueError):
            raise TokenError("unknown", "the token's record is damaged") from None

    @staticmethod
    def _row(record: TokenRecord, digest: str) -> dict[str, Any]:
        row = asdict(record)
        for name in _TIMES:
            if row[name] is not None:
                row[name] = row[name].astimezone(UTC).isoformat(timespec="seconds")
        row["hash"] = digest
        return row

    # -- operations ---------------------------------------------------------------------------
    def create(self, device_id: str, serial: str, site: str, profile: str, ttl: timedelta, now: datetime,
               technician: str = "") -> str:
        """A new token for one device; returns its text (the only time the secret exists)."""
        check_device_id(device_id)
        if profile not in TOKEN_PROFILES:
            raise ProfileError(f"token profile must be one of {', '.join(TOKEN_PROFILES)}, got {profile!r}")
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ProfileError(f"token lifetime must be more than 0 and at most {MAX_TTL.days} days")
        _text_field("serial", serial, required=True)
        _text_field("site", site, required=False)
        _text_field("technician", technician, required=False)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        created = now.astimezone(UTC).replace(microsecond=0)
        with self.locked():
            rows = self._load()
            taken = {r.get("id") for r in rows}
            token_id = secrets.token_hex(_ID_BYTES)
            while token_id in taken:
                token_id = secrets.token_hex(_ID_BYTES)
            record = TokenRecord(token_id, device_id, serial, site, profile, created, created + ttl,
                                 technician=technician)
            rows.append(self._row(record, _digest(token_id, secret)))
            self._save(rows)
        return f"{TOKEN_PREFIX}.{token_id}.{secret}"

    def _find(self, rows: list[dict[str, Any]], token: str) -> tuple[int, TokenRecord]:
        token_id, secret = parse_token(token)
        for i, row in enumerate(rows):
            if row.get("id") == token_id:
                # Constant time: the comparison must not tell how much of a guess was right.
                if not hmac.compare_digest(str(row.get("hash", "")), _digest(token_id, secret)):
                    break
                return i, self._record(row)
        raise TokenError("unknown", f"no token {token_id} with this secret in {self.path.name}")

    @staticmethod
    def _usable(record: TokenRecord, now: datetime) -> TokenRecord:
        if record.revoked_at is not None:
            raise TokenError("unknown", f"token {record.id} was revoked at {record.revoked_at.isoformat()}")
        if record.used_at is not None:
            raise TokenError("used", f"token {record.id} was used at {record.used_at.isoformat()} "
                                     f"(certificate serial {record.cert_serial})")
        if now >= record.expires:
            raise TokenError("expired", f"token {record.id} expired at {record.expires.isoformat()}")
        return record

    def check(self, token: str, now: datetime) -> TokenRecord:
        """The record of a token that may be used now (read-only); else TokenError."""
        _, record = self._find(self._load(), token)
        return self._usable(record, now)

    def consume(self, token: str, *, device_id: str, serial: str | None, now: datetime,
                cert_serial: str) -> TokenRecord:
        """Mark a usable token used for ``cert_serial``, after checking it belongs to ``device_id``
        (and ``serial``, when the request named one)."""
        with self.locked():
            rows = self._load()
            index, record = self._find(rows, token)
            self._usable(record, now)
            check_binding(record, device_id=device_id, serial=serial)
            used = replace(record, used_at=now.astimezone(UTC).replace(microsecond=0), cert_serial=cert_serial)
            rows[index] = self._row(used, str(rows[index]["hash"]))
            self._save(rows)
            return used

    def list(self) -> list[TokenRecord]:
        return sorted((self._record(r) for r in self._load()), key=lambda r: (r.created, r.id))

    def revoke_token(self, token_id: str, now: datetime | None = None) -> TokenRecord:
        """Withdraw an unused token (it then reads as unknown). The record stays, for the audit."""
        with self.locked():
            rows = self._load()
            for i, row in enumerate(rows):
                if row.get("id") == token_id:
                    record = self._record(row)
                    if record.revoked_at is None and record.used_at is None:
                        record = replace(record, revoked_at=(now or datetime.now(UTC)).replace(microsecond=0))
                        rows[i] = self._row(record, str(row.get("hash", "")))
                        self._save(rows)
                    return record
        raise TokenError("unknown", f"no token with id {token_id!r} in {self.path}")


def check_binding(record: TokenRecord, *, device_id: str, serial: str | None) -> None:
    """The token must be the one made for this device (and this hardware serial, when known)."""
    if device_id != record.device_id:
        raise TokenError("wrong_device", f"token {record.id} is for device {record.device_id!r}, "
                                         f"not {device_id!r}")
    if serial is not None and serial != record.serial:
        raise TokenError("wrong_device", f"token {record.id} is for serial {record.serial!r}, not {serial!r}")
