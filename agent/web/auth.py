"""[pure] Passwords, sessions, CSRF tokens and failed-login throttling for the local web page.

No I/O and no clock: times are passed in, randomness comes from ``secrets`` (or a function
the caller passes). Reading the password file (and checking its mode) is in
``agent.web.passwords``.

Password file: one line per user, ``USER:pbkdf2-sha256$ITERATIONS$SALT$HASH`` (salt and
hash base64, 16 and 32 bytes). PBKDF2 rather than scrypt: scrypt's 16 MiB working set per
login would show up in the agent's tracked RSS; PBKDF2's cost is CPU only, and the server
runs it in a thread. The iteration count is stored per line, so it can be raised later
without invalidating existing passwords.

Sessions live only in memory (a restart signs everyone out, which is fine for a page a
technician opens on site). The cookie carries a random 256-bit token; the server keeps only
its SHA-256, so a lookup never compares secrets byte by byte and a memory dump holds no
usable token. Each session has its own CSRF token, checked with a constant-time compare.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

SCHEME = "pbkdf2-sha256"
ITERATIONS = 600_000  # OWASP 2023 guidance for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 100_000
SALT_BYTES = 16
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MAX_PASSWORD = 1024  # bytes: longer input is refused before hashing (no hashing-cost DoS)


class PasswordFileError(ValueError):
    """A password file line that cannot be used; the message names the line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``pbkdf2-sha256$N$SALT$HASH``."""
    if not password:
        raise ValueError("empty password")
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD:
        raise ValueError(f"password longer than {MAX_PASSWORD} bytes")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class StoredHash:
    iterations: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> StoredHash:
        parts = text.split("$")
        if len(parts) != 4 or parts[0] != SCHEME:
            raise ValueError(f"not a {SCHEME} hash")
        try:
            iterations = int(parts[1])
            salt = base64.b64decode(parts[2], validate=True)
            digest = base64.b64decode(parts[3], validate=True)
        except ValueError as exc:
            raise ValueError(f"malformed {SCHEME} hash: {exc}") from None
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"iterations {iterations} below {MIN_ITERATIONS}")
        if len(salt) < 8 or len(digest) != 32:
            raise ValueError("salt or hash has the wrong length")
        return cls(iterations, salt, digest)


def verify_password(password: str, stored: StoredHash) -> bool:
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", raw, stored.salt, stored.iterations)
    return hmac.compare_digest(digest, stored.digest)


# A valid hash to check against when the user does not exist, so the response time does not
# tell whether a user name is known.
DUMMY = StoredHash(ITERATIONS, b"\0" * SALT_BYTES, b"\0" * 32)


def parse_password_file(text: str) -> dict[str, StoredHash]:
    """``USER:HASH`` lines; blank lines and ``#`` comments ignored. Raises PasswordFileError."""
    users: dict[str, StoredHash] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        if not sep or not USER_RE.match(user):
            raise PasswordFileError(f"line {n}: expected USER:HASH with a user name of letters, digits, _.@-")
        if user in users:
            raise PasswordFileError(f"line {n}: user {user!r} listed twice")
        try:
            users[user] = StoredHash.parse(rest)
        except ValueError as exc:
            raise PasswordFileError(f"line {n}: {exc}") from None
    return users


def set_password_line(text: str, user: str, hashed: str) -> str:
    """``text`` (a password file) with ``user``'s line replaced or appended; other lines kept."""
    if not USER_RE.match(user):
        raise ValueError("user name: letters, digits and _.@- only, at most 64 characters")
    out, done = [], False
    for line in text.splitlines():
        if line.strip().partition(":")[0] == user and not line.lstrip().startswith("#"):
            if not done:
                out.append(f"{user}:{hashed}")
                done = True
            continue
        out.append(line)
    if not done:
        out.append(f"{user}:{hashed}")
    return "\n".join(out) + "\n"


# -- sessions -------------------------------------------------------------------------------

def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass
class Session:
    user: str
    created: float
    last_seen: float
    csrf: str


class SessionStore:
    """Sessions by token, with an absolute lifetime, an idle timeout and a size bound."""

    def __init__(self, *, ttl: float, idle: float, max_sessions: int = 32,
                 token: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> None:
        self.ttl, self.idle, self.max_sessions = ttl, idle, max_sessions
        self._token = token
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, now: float) -> tuple[str, Session]:
        """A new session; returns (cookie token, session). The oldest is dropped when full."""
        self.expire(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        token = self._token()
        s = Session(user, now, now, self._token())
        self._sessions[_key(token)] = s
        return token, s

    def get(self, token: str | None, now: float) -> Session | None:
        if not token:
            return None
        key = _key(token)
        s = self._sessions.get(key)
        if s is None:
            return None
        if now - s.created > self.ttl or now - s.last_seen > self.idle or now < s.created:
            del self._sessions[key]
            return None
        s.last_seen = now
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._sessions.pop(_key(token), None)

    def expire(self, now: float) -> None:
        for key, s in list(self._sessions.items()):
            if now - s.created > self.ttl or now - s.last_seen > self.idle:
                del self._sessions[key]


def csrf_ok(expected: str, given: str | None) -> bool:
    """Constant-time check of a form's CSRF token."""
    if not given or not expected:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "surrogateescape"), given.encode("utf-8", "surrogateescape"))


# -- failed-login throttling ------------------------------------------------------------------

@dataclass
class _Failures:
    count: int
    first: float
    locked_until: float


class LoginThrottle:
    """Counts failed sign-ins per key (client address, and user name separately).

    After ``limit`` failures within ``window`` seconds the key is locked for ``lockout``
    seconds, doubling with each further lockout up to ``max_lockout``. A success clears the
    key. At most ``max_keys`` keys are tracked (oldest forgotten): a flood of addresses must
    not grow memory."""

    def __init__(self, *, limit: int = 5, window: float = 300.0, lockout: float = 30.0,
                 max_lockout: float = 900.0, max_keys: int = 1024) -> None:
        self.limit, self.window, self.lockout, self.max_lockout = limit, window, lockout, max_lockout
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Failures] = OrderedDict()
        self._lockouts: dict[str, int] = {}

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        f = self._keys.get(key)
        if f is None:
            return 0.0
        return max(0.0, f.locked_until - now)

    def failed(self, key: str, now: float) -> None:
        f = self._keys.get(key)
        if f is None or (now - f.first > self.window and f.locked_until <= now):
            f = _Failures(0, now, 0.0)
        f.count += 1
        if f.count >= self.limit:
            n = self._lockouts.get(key, 0)
            f.locked_until = now + min(self.max_lockout, self.lockout * 2 ** min(n, 16))
            self._lockouts[key] = n + 1
            f.count, f.first = 0, now
        self._keys[key] = f
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            old, _ = self._keys.popitem(last=False)
            self._lockouts.pop(old, None)

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)
        self._lockouts.pop(key, None)
