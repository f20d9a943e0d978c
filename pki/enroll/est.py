"""The EST (RFC 7030) endpoints of the issuing CA, without sockets: a request's method, path,
headers, body and TLS client certificate in, ``(status, content_type, body)`` out.

| under ``/.well-known/est/`` | method | authentication                 | answer (certs-only PKCS#7) |
|-----------------------------|--------|--------------------------------|----------------------------|
| ``cacerts``                 | GET    | none                           | issuing CA + root          |
| ``simpleenroll``            | POST   | HTTP Basic: device id, token   | the new certificate        |
| ``simplereenroll``          | POST   | TLS client cert = current cert | the new certificate        |

Bodies are base64 (RFC 8951). A refusal is ``text/plain`` whose first line is
``reason=<code>`` and whose second line says why, for people (see ``policy``).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from pki.castore import CaDir
from pki.enroll.policy import EnrolRefused, enroll_with_token, kv, log_refusal, reenroll
from pki.enroll.tokens import TokenStore
from pki.errors import PkiError

log = logging.getLogger(__name__)

WELL_KNOWN = "/.well-known/est"
PKCS7 = "application/pkcs7-mime"
PKCS7_CERTS_ONLY = "application/pkcs7-mime; smime-type=certs-only"
PKCS10 = "application/pkcs10"
TEXT = "text/plain; charset=utf-8"
MAX_BODY = 64 * 1024

STATUS: dict[str, int] = {
    "not_authorized": 401, "csr_invalid": 400, "csr_ca": 400, "csr_subject": 400, "key_unsupported": 400,
    "bad_content_type": 415, "too_large": 413, "not_found": 404, "method_not_allowed": 405,
    "server_error": 500,
}
TOKEN_STATUS = 403  # token_unknown, token_expired, token_used, token_wrong_device, token_malformed
_METHODS = {"cacerts": "GET", "simpleenroll": "POST", "simplereenroll": "POST"}


class EstResponse(NamedTuple):
    status: int
    content_type: str
    body: bytes


def refusal(reason: str, detail: str) -> EstResponse:
    status = TOKEN_STATUS if reason.startswith("token_") else STATUS.get(reason, 400)
    text = f"reason={reason}\n{' '.join(detail.split())}\n"
    return EstResponse(status, TEXT, text.encode())


def certs_only(certs: list[x509.Certificate]) -> bytes:
    """Base64 (76-column lines) of a degenerate, certs-only PKCS#7 SignedData."""
    return base64.encodebytes(pkcs7.serialize_certificates(certs, Encoding.DER))


def basic_auth(header: str | None) -> tuple[str, str] | None:
    """``(username, password)`` of an HTTP Basic ``Authorization`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class EstService:
    """One issuing CA's EST endpoints. Thread-safe: enrolments serialise on the token store's lock.

    The CA is opened (and unlocked with ``passphrase``) afresh for every enrolment, so
    revocations made with the CLI while the service runs are seen at once.
    """

    def __init__(self, ca_dir: Path, passphrase: bytes | None, root: x509.Certificate, tokens: TokenStore, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ca_dir = Path(ca_dir)
        self.root = root
        self.tokens = tokens
        self._passphrase = passphrase
        self._clock = clock

    def _open_ca(self) -> CaDir:
        return CaDir.open(self.ca_dir).unlock(self._passphrase)

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
               client_cert: x509.Certificate | None, *, peer: str = "") -> EstResponse:
        """Answer one request. Never raises: an unexpected failure is a 500 ``server_error``."""
        operation = path.partition("?")[0].removeprefix(WELL_KNOWN + "/")
        if operation not in _METHODS or not path.startswith(WELL_KNOWN + "/"):
            return refusal("not_found", f"no EST operation at {path.partition('?')[0]!r}; "
                                        f"{WELL_KNOWN}/ offers {', '.join(_METHODS)}")
        if method.upper() != _METHODS[operation]:
            return refusal("method_not_allowed", f"{operation} takes {_METHODS[operation]}")
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            if operation == "cacerts":
                ca = CaDir.open(self.ca_dir)
                return EstResponse(200, PKCS7, certs_only([ca.cert, self.root]))
            if len(body) > MAX_BODY:
                return refusal("too_large", f"request body larger than {MAX_BODY} bytes")
            content_type = lowered.get("content-type", PKCS10).partition(";")[0].strip().lower()
            if content_type != PKCS10:
                return refusal("bad_content_type", f"{operation} takes {PKCS10}, not {content_type}")
            if operation == "simpleenroll":
                return self._enroll(lowered.get("authorization"), body, peer)
            cert = reenroll(self._open_ca, self.tokens, self.root, client_cert, body, now=self._clock(), peer=peer)
            return EstResponse(200, PKCS7_CERTS_ONLY, certs_only([cert]))
        except EnrolRefused as exc:
            return refusal(exc.reason, exc.detail)
        except (PkiError, OSError) as exc:
            log.error("event=est_error %s", kv(op=operation, peer=peer, error=type(exc).__name__, detail=exc))
            return refusal("server_error", "the CA could not complete the request; see the server log")
        except Exception as exc:
            log.exception("event=est_error %s", kv(op=operation, peer=peer, error=type(exc).__name__))
            return refusal("server_error", "unexpected error; see the server log")

    def _enroll(self, authorization: str | None, body: bytes, peer: str) -> EstResponse:
        credentials = basic_auth(authorization)
        if credentials is None:
            refused = EnrolRefused("not_authorized", "simpleenroll needs HTTP Basic authentication: "
                                                     "the device id and its enrolment token")
            log_refusal(refused, device=None, via="est", peer=peer)
            raise refused
        username, token = credentials
        enrolled = enroll_with_token(self._open_ca, self.tokens, body, token, username=username, now=self._clock(),
                                     via="est", peer=peer)
        return EstResponse(200, PKCS7_CERTS_ONLY, certs_only([enrolled.cert]))
