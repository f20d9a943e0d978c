"""A throw-away CA, a server certificate for 127.0.0.1, client certificates, and a real Mosquitto
with a plain listener (for test subscribers) and a mutual-TLS listener (``require_certificate true``).

Client material is written both as PEM (for CPython/paho) and DER (what MicroPython's mbedTLS
``ssl`` loads: ``load_verify_locations(cadata=DER)`` and ``load_cert_chain(DER, DER)``).

``Relay`` is a plain TCP relay to put in front of the TLS listener: it can hold back what the
broker sends (what does a client do before the reply arrives?) and pace what the client sends
(a slow uplink), without seeing into the TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port, wait_port


@dataclass(frozen=True)
class ClientFiles:
    cert_pem: Path
    key_pem: Path
    cert_der: Path
    key_der: Path  # PKCS#8 DER


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: Path
    ca_der: Path
    server_cert: Path
    server_key: Path
    folder: Path
    _ca_key: ec.EllipticCurvePrivateKey
    _ca_cert: x509.Certificate

    def client(self, name: str) -> ClientFiles:
        """A client certificate (CN = ``name``, EKU clientAuth) issued by the test CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, self._ca_cert.subject, self._ca_key, [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()), False),
        ])
        base = self.folder / name
        return ClientFiles(
            cert_pem=_write(base.with_suffix(".crt.pem"), cert.public_bytes(serialization.Encoding.PEM)),
            key_pem=_write(base.with_suffix(".key.pem"), _key_bytes(key, serialization.Encoding.PEM)),
            cert_der=_write(base.with_suffix(".crt.der"), cert.public_bytes(serialization.Encoding.DER)),
            key_der=_write(base.with_suffix(".key.der"), _key_bytes(key, serialization.Encoding.DER)),
        )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _key_bytes(key: ec.EllipticCurvePrivateKey, encoding: serialization.Encoding) -> bytes:
    return key.private_bytes(encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _issue(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_material(folder: Path) -> TlsMaterial:
    """A fresh P-256 CA and a server certificate for 127.0.0.1/localhost in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mqtt root")])
    ca = _issue("test mqtt root", ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ])
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False),
        (x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        ]), False),
    ])
    return TlsMaterial(
        ca_pem=_write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        ca_der=_write(folder / "ca.der", ca.public_bytes(serialization.Encoding.DER)),
        server_cert=_write(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM)),
        server_key=_write(folder / "server.key", _key_bytes(server_key, serialization.Encoding.PEM)),
        folder=folder,
        _ca_key=ca_key,
        _ca_cert=ca,
    )


@dataclass
class TlsBroker:
    """``broker.port`` is the plain listener (test subscribers); ``tls_port`` requires a client cert."""

    broker: Mosquitto
    tls_port: int
    tls: TlsMaterial

    def start(self) -> None:
        """(Re)start on the same ports; returns once both listeners accept."""
        self.broker.start()
        wait_port(self.broker.host, self.tls_port)

    def stop(self) -> None:
        self.broker.stop()

    @property
    def log_path(self) -> Path:
        return self.broker.workdir / "mosquitto.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def tls_broker_conf(tls: TlsMaterial, tls_port: int, *, user_line: bool = True) -> str:
    """Mosquitto config lines for a mutual-TLS listener on 127.0.0.1:``tls_port``.

    ``user_line=False`` leaves out ``user root`` for a broker whose config has it already
    (``Mosquitto(persistence=True)`` writes it; mosquitto refuses a duplicate)."""
    return (
        # As root mosquitto drops to user "mosquitto", who cannot read keys in our temp dir.
        ("user root\n" if user_line and os.geteuid() == 0 else "")
        + f"listener {tls_port} 127.0.0.1\n"
        f"cafile {tls.ca_pem}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )


@contextmanager
def tls_broker(folder: Path, *, persistence: bool = False, extra_conf: str = "") -> Iterator[TlsBroker]:
    """A started broker with a plain and a mutual-TLS listener; stopped on exit.

    ``persistence``: sessions survive a restart (see ``Mosquitto``); ``extra_conf``: more
    global config lines (e.g. ``log_type all`` to see PINGREQ/PINGRESP in the broker's log)."""
    tls = make_tls_material(folder / "pki")
    tls_port = free_port()
    conf = tls_broker_conf(tls, tls_port, user_line=not persistence) + extra_conf
    broker = Mosquitto(folder / "broker", persistence=persistence, extra_conf=conf)
    broker.workdir.mkdir(parents=True, exist_ok=True)
    tb = TlsBroker(broker, tls_port, tls)
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()


class Relay:
    """A TCP relay from a free loopback port to ``host:target_port``, one pair of threads per
    connection. ``hold()`` keeps back every byte the target sends until ``release()`` (counted in
    ``held_bytes``); ``pace=(chunk, pause_s)`` forwards the client's bytes ``chunk`` at a time
    with a pause after each, and ``rcvbuf`` shrinks the relay's receive buffer so the client's
    own send buffer fills: a slow uplink."""

    def __init__(self, target_port: int, host: str = "127.0.0.1", *,
                 pace: tuple[int, float] | None = None, rcvbuf: int | None = None) -> None:
        self.host = host
        self.target_port = target_port
        self.pace = pace
        self.held_bytes = 0
        self.connections = 0
        self._pass = threading.Event()
        self._pass.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:
            # Set before listen() so accepted sockets inherit it (the window is sized at SYN).
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._spawn(self._accept)

    def hold(self) -> None:
        self._pass.clear()

    def release(self) -> None:
        self._pass.set()

    def close(self) -> None:
        self._closed.set()
        self._pass.set()
        _shut(self._listener)  # shutdown() is what wakes a thread blocked in accept()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            _shut(s)
        for t in threads:
            t.join(5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                _shut(client)  # target down: the client sees the refusal as a close
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
                self.connections += 1
            self._spawn(self._pump_up, client, upstream)
            self._spawn(self._pump_down, upstream, client)

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        chunk, pause = self.pace if self.pace is not None else (65536, 0.0)
        try:
            while data := src.recv(chunk):
                dst.sendall(data)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass
        _shut(src)
        _shut(dst)

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self._pass.is_set():
                    with self._lock:
                        self.held_bytes += len(data)
                    self._pass.wait()
                if self._closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        _shut(src)
        _shut(dst)


def _shut(s: socket.socket) -> None:
    with suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
