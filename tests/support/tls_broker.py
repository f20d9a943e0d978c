"""A throw-away CA, a server certificate for 127.0.0.1, client certificates, and a real Mosquitto
with a plain listener (for test subscribers) and a mutual-TLS listener (``require_certificate true``).

Client material is written both as PEM (for CPython/paho) and DER (what MicroPython's mbedTLS
``ssl`` loads: ``load_verify_locations(cadata=DER)`` and ``load_cert_chain(DER, DER)``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


def tls_broker_conf(tls: TlsMaterial, tls_port: int) -> str:
    """Mosquitto config lines for a mutual-TLS listener on 127.0.0.1:``tls_port``."""
    return (
        # As root mosquitto drops to user "mosquitto", who cannot read keys in our temp dir.
        ("user root\n" if os.geteuid() == 0 else "")
        + f"listener {tls_port} 127.0.0.1\n"
        f"cafile {tls.ca_pem}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    )


@contextmanager
def tls_broker(folder: Path) -> Iterator[TlsBroker]:
    """A started broker with a plain and a mutual-TLS listener; stopped on exit."""
    tls = make_tls_material(folder / "pki")
    tls_port = free_port()
    broker = Mosquitto(folder / "broker", extra_conf=tls_broker_conf(tls, tls_port))
    broker.workdir.mkdir(parents=True, exist_ok=True)
    tb = TlsBroker(broker, tls_port, tls)
    tb.start()
    try:
        yield tb
    finally:
        tb.stop()
