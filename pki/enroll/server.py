"""The EST service over HTTPS: a thin ``http.server`` + ``ssl`` shell around ``est.EstService``.

TLS: by default the server issues itself a short-lived certificate (profile ``est-server``,
SAN = its host name or IP) from the issuing CA it serves, and renews it when half of its
life is gone; clients then need nothing but the provincial root. ``FileTls`` uses a given
certificate and key instead. Client certificates are asked for, not required
(``CERT_OPTIONAL``, trusting the root and the issuing CA): only ``simplereenroll`` uses one.

The TLS handshake runs in the connection's own thread with a deadline, so a client that
stalls mid-handshake holds up nobody else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.algorithms import generate_key
from pki.castore import CaDir
from pki.certs import make_csr
from pki.enroll.est import MAX_BODY, PKCS7, EstResponse, EstService, refusal
from pki.enroll.policy import kv
from pki.errors import PkiError
from pki.keys import cert_pem, write_new_file
from pki.profiles import EST_SERVER, SubjectFields, check_device_id
from pki.show import serial_hex

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (not exported by the ssl module). The handshake then
# accepts an expired client certificate, so that simplereenroll can refuse it by name
# ("expired") instead of a bare TLS alert; EstService checks every date itself.
_NO_CHECK_TIME = 0x200000


class TlsSource(Protocol):
    def context(self) -> ssl.SSLContext: ...


def _server_context(chain: Path, key: Path, client_cas: bytes, password: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(chain, key, password)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=client_cas.decode())
    ctx.verify_flags |= _NO_CHECK_TIME
    return ctx


class FileTls:
    """A server certificate (chain) and key from files (``--tls-cert``/``--tls-key``)."""

    def __init__(self, cert: Path, key: Path, client_cas: bytes, password: bytes | None = None) -> None:
        try:
            self._ctx = _server_context(cert, key, client_cas, password)
        except (ssl.SSLError, OSError) as exc:
            raise PkiError(f"{cert}, {key}: cannot use as the TLS certificate and key: {exc}") from None

    def context(self) -> ssl.SSLContext:
        return self._ctx


class SelfIssuedTls:
    """A server certificate the issuing CA signs for itself, renewed at half of its life.

    The key is made in memory; ``ssl`` loads keys only from files, so it passes through a
    0600 file in a private temporary directory that is removed straight after loading.
    """

    def __init__(self, ca_dir: Path, passphrase: bytes | None, server_name: str, client_cas: bytes, *,
                 lock: Callable[[], contextlib.AbstractContextManager[None]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        try:
            check_device_id(server_name)
        except PkiError:
            raise PkiError(f"server name {server_name!r}: the self-issued certificate needs an IPv4 address or a "
                           "DNS name (or give --tls-cert/--tls-key)") from None
        if _is_unspecified(server_name):
            raise PkiError(f"server name {server_name!r} names no host: give --server-name")
        self.ca_dir, self.server_name = Path(ca_dir), server_name
        self._passphrase, self._client_cas, self._lock, self._clock = passphrase, client_cas, lock, clock
        self._mutex = threading.Lock()
        self.cert, self._ctx = self._issue()

    def _issue(self) -> tuple[x509.Certificate, ssl.SSLContext]:
        key = generate_key("p256")
        csr = make_csr(key, SubjectFields(common_name=self.server_name))
        with self._lock():
            ca = CaDir.open(self.ca_dir).unlock(self._passphrase)
            cert = ca.issue(csr, EST_SERVER, now=self._clock(), csr_name="est-server")
        folder = Path(tempfile.mkdtemp(prefix="ue-est-tls-"))
        try:
            key_file, chain_file = folder / "key.pem", folder / "chain.pem"
            write_new_file(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()), 0o600)
            # The issuing CA goes along: clients hold only the root.
            chain_file.write_bytes(cert_pem(cert, ca.cert))
            ctx = _server_context(chain_file, key_file, self._client_cas)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("event=est_tls_cert %s", kv(name=self.server_name, serial=serial_hex(cert.serial_number),
                                              not_after=cert.not_valid_after_utc.isoformat()))
        return cert, ctx

    def context(self) -> ssl.SSLContext:
        with self._mutex:
            start, end = self.cert.not_valid_before_utc, self.cert.not_valid_after_utc
            if self._clock() >= start + (end - start) / 2:
                try:
                    self.cert, self._ctx = self._issue()
                except (PkiError, ssl.SSLError, OSError) as exc:
                    # The old certificate still has half its life: keep serving, say why.
                    log.error("event=est_tls_renew_failed %s", kv(error=type(exc).__name__, detail=exc))
            return self._ctx


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server_version = "urbanedge-est"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        server = cast(_HttpsServer, self.server)
        body = b""
        if self.command == "POST":
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self._send(refusal("csr_invalid", "a POST needs a Content-Length"), 411)
                return
            if int(length) > MAX_BODY:
                self._send(refusal("too_large", f"request body larger than {MAX_BODY} bytes"))
                return
            body = self.rfile.read(int(length))
        peer_der = cast(ssl.SSLSocket, self.connection).getpeercert(binary_form=True)
        client_cert = x509.load_der_x509_certificate(peer_der) if peer_der else None
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        headers = {k: v for k, v in self.headers.items()}
        self._send(server.service.handle(self.command, self.path, headers, body, client_cert, peer=peer))

    def _send(self, response: EstResponse, status: int | None = None) -> None:
        self.send_response(status or response.status)
        self.send_header("Content-Type", response.content_type)
        if response.content_type.startswith(PKCS7):
            self.send_header("Content-Transfer-Encoding", "base64")  # RFC 7030 4.1.3 (RFC 8951 relaxes it)
        if (status or response.status) == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="urbanedge-est"')
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        # Decisions are logged by EstService; the access line is only for debugging.
        log.debug("event=est_http %s", kv(peer=self.client_address[0], line=format % args))


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: EstService, tls: TlsSource) -> None:
        self.service, self.tls = service, tls
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        sock = cast(socket.socket, request)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            conn = self.tls.context().wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("event=est_tls_failed %s", kv(peer=client_address[0], detail=exc))
            return
        try:
            _Handler(conn, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                conn.close()


class EstHttpsServer:
    """Listens on ``host:port`` (0: a free port) at once; ``start`` serves from a thread."""

    def __init__(self, service: EstService, tls: TlsSource, host: str, port: int, *,
                 url_host: str | None = None) -> None:
        try:
            self._server = _HttpsServer((host, port), service, tls)
        except OSError as exc:
            raise PkiError(f"--listen {host}:{port}: cannot listen: {exc.strerror}") from None
        self.host, self.port = host, int(self._server.server_address[1])
        self.url = f"https://{url_host or host}:{self.port}/.well-known/est"
        self._thread: threading.Thread | None = None

    def start(self) -> EstHttpsServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="est-https", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EstHttpsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
