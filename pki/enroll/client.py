"""An EST (RFC 7030) client for the technician's laptop and the gateway: ``cacerts``,
``simpleenroll`` (device id + one-time token) and ``simplereenroll`` (current certificate).

The server is trusted through the provincial root alone (no system CAs) and its name is
checked. Every failure is an ``EstClientError`` whose ``reason`` (``CLIENT_REASONS``) the
provisioning UI turns into advice; a wrong clock is told apart from an untrusted server,
since a technician's laptop with a flat battery is the usual cause.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import re
import ssl
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from pki.keys import cert_pem, load_certs

CLIENT_REASONS = (
    "unreachable", "tls_untrusted", "clock", "token_unknown", "token_expired", "token_used", "token_wrong_device",
    "csr_invalid", "csr_ca", "csr_subject", "key_unsupported", "not_authorized", "server_error",
)
# Refusal reasons of the server passed on as they are; token_malformed reads as unknown to a person.
_PASSED_ON = frozenset(CLIENT_REASONS) - {"unreachable", "tls_untrusted", "clock", "server_error"}
_ALIASES = {"token_malformed": "token_unknown"}
_MAX_RESPONSE = 1024 * 1024
# OpenSSL verify codes that mean "outside the validity period" (X509_V_ERR_CERT_NOT_YET_VALID,
# X509_V_ERR_CERT_HAS_EXPIRED): with a trusted chain, the local clock is the usual suspect.
_CLOCK_CODES = {9, 10}
# TLS alerts by which a server turns down the certificate we presented.
_CLIENT_CERT_ALERT = re.compile(r"ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_\w+|UNSUPPORTED_CERTIFICATE)")


class EstClientError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _public_der(cert_or_csr: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return cert_or_csr.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


class EstClient:
    def __init__(self, base_url: str, root_cert: Path, *, timeout: float = 10) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise EstClientError("unreachable", f"enrolment URL {base_url!r}: expected https://HOST:PORT/...")
        self.host, self.port = parts.hostname, parts.port or 443
        path = parts.path.rstrip("/")
        # The URL `pki serve` prints ends in /.well-known/est; a bare https://HOST:PORT works too.
        self.prefix = path if path.endswith("/.well-known/est") else f"{path}/.well-known/est"
        self.timeout = timeout
        self.root = load_certs(root_cert)[0]
        self._root_pem = cert_pem(self.root).decode()

    # -- operations ---------------------------------------------------------------------------
    def cacerts(self) -> list[x509.Certificate]:
        """The issuing CA and root the server announces, each checked against our root."""
        certs = self._certs(self._call("GET", "cacerts"))
        for cert in certs:
            if cert == self.root:
                continue
            try:
                cert.verify_directly_issued_by(self.root)
            except (ValueError, TypeError, InvalidSignature):
                raise EstClientError("server_error", f"cacerts: {cert.subject.rfc4514_string()} is not "
                                                     "signed by the trusted root") from None
        return certs

    def enroll(self, csr_der: bytes, device_id: str, token: str) -> x509.Certificate:
        """simpleenroll: a certificate for ``csr_der`` (DER PKCS#10), authorised by ``token``."""
        credentials = base64.b64encode(f"{device_id}:{token.strip()}".encode()).decode()
        headers = {"Authorization": f"Basic {credentials}"}
        return self._issued(csr_der, self._call("POST", "simpleenroll", csr_der, headers))

    def reenroll(self, csr_der: bytes, cert: Path, key: Path, *,
                 key_passphrase: bytes | None = None) -> x509.Certificate:
        """simplereenroll: a new certificate, authenticated by the current ``cert`` and ``key`` over TLS."""
        answer = self._call("POST", "simplereenroll", csr_der, client=(cert, key, key_passphrase))
        return self._issued(csr_der, answer)

    # -- plumbing -----------------------------------------------------------------------------
    def _context(self, client: tuple[Path, Path, bytes | None] | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cadata=self._root_pem)
        if client is not None:
            cert, key, password = client
            try:
                ctx.load_cert_chain(cert, key, password)
            except (ssl.SSLError, OSError) as exc:
                raise EstClientError("not_authorized", f"{cert}, {key}: cannot use as the client certificate "
                                                       f"and key: {exc}") from None
        return ctx

    def _call(self, method: str, operation: str, csr_der: bytes | None = None, headers: dict[str, str] | None = None,
              client: tuple[Path, Path, bytes | None] | None = None) -> bytes:
        body = base64.encodebytes(csr_der) if csr_der is not None else None
        sent = dict(headers or {})
        if body is not None:
            sent.update({"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"})
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._context(client), timeout=self.timeout)
        try:
            conn.request(method, f"{self.prefix}/{operation}", body=body, headers=sent)
            response = conn.getresponse()
            data = response.read(_MAX_RESPONSE)
            status, content_type = response.status, response.getheader("Content-Type", "")
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(exc) from None
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError) as exc:
            if client is None:
                raise EstClientError("unreachable", f"{self.host}:{self.port} closed the connection: {exc}") from None
            # TLS 1.3: the server checks our certificate after the handshake; its alert can lose
            # the race with our request, and then all we see is the connection closing.
            raise EstClientError("not_authorized", f"the server closed the connection on receiving the client "
                                                   f"certificate {client[0]}: it does not accept it") from None
        except ssl.SSLError as exc:
            if client is not None and _CLIENT_CERT_ALERT.search(exc.reason or ""):
                raise EstClientError("not_authorized", f"the server did not accept the client certificate "
                                                       f"{client[0]} ({exc.reason})") from None
            raise EstClientError("tls_untrusted", f"TLS with {self.host}:{self.port} failed: {exc}") from None
        except TimeoutError:
            raise EstClientError("unreachable", f"{self.host}:{self.port}: no answer within {self.timeout:g} s") \
                from None
        except (OSError, http.client.HTTPException) as exc:
            raise EstClientError("unreachable", f"{self.host}:{self.port}: {exc}") from None
        finally:
            conn.close()
        if status != 200:
            raise self._refused(status, data)
        if not content_type.lower().startswith("application/pkcs7-mime"):
            raise EstClientError("server_error", f"{operation}: unexpected content type {content_type!r}")
        return data

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> EstClientError:
        if exc.verify_code in _CLOCK_CODES:
            now = datetime.now(UTC).replace(microsecond=0)
            window = self._server_validity()
            return EstClientError("clock", f"the server's certificate is {exc.verify_message} by this computer's "
                                           f"clock ({now.isoformat()}){window}: check the date and time")
        return EstClientError("tls_untrusted", f"{self.host}:{self.port} is not trusted with the root "
                                               f"{self.root.subject.rfc4514_string()}: {exc.verify_message}")

    def _server_validity(self) -> str:
        # Only to tell the technician the dates: this unverified copy is used for nothing else.
        try:
            pem = ssl.get_server_certificate((self.host, self.port), timeout=self.timeout)
            cert = x509.load_pem_x509_certificate(pem.encode())
        except (OSError, ValueError):
            return ""
        return (f"; it is valid from {cert.not_valid_before_utc.isoformat()} "
                f"to {cert.not_valid_after_utc.isoformat()}")

    @staticmethod
    def _refused(status: int, data: bytes) -> EstClientError:
        lines = data.decode("utf-8", "replace").splitlines()
        code = lines[0].removeprefix("reason=").strip() if lines and lines[0].startswith("reason=") else ""
        detail = lines[1].strip() if len(lines) > 1 else f"HTTP {status}"
        code = _ALIASES.get(code, code)
        if code in _PASSED_ON:
            return EstClientError(code, detail)
        if status == 401:
            return EstClientError("not_authorized", detail)
        return EstClientError("server_error", f"HTTP {status}: {code or 'no reason'}: {detail}")

    @staticmethod
    def _certs(data: bytes) -> list[x509.Certificate]:
        try:
            return pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(data.split()), validate=True))
        except (ValueError, binascii.Error):
            raise EstClientError("server_error", "the answer is not a base64 PKCS#7 certificate bundle") from None

    def _issued(self, csr_der: bytes, data: bytes) -> x509.Certificate:
        certs = self._certs(data)
        try:
            wanted = _public_der(x509.load_der_x509_csr(csr_der))
        except ValueError:
            raise EstClientError("csr_invalid", "the request given to the client is not DER PKCS#10") from None
        for cert in certs:
            if _public_der(cert) == wanted:
                return cert
        raise EstClientError("server_error", "the answer holds no certificate for the request's key")
