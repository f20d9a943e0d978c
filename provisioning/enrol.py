"""Getting a device's request certified: online through the EST enrolment service with a
one-time token, or offline (request file out, certificate file in) for sites without a link.

Both return the certificate and the issuing chain (without the root), which the device
announces with its own certificate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.errors import ProvisionError


class Enroller(Protocol):
    def certify(self, csr_der: bytes, device_id: str) -> tuple[x509.Certificate, list[x509.Certificate]]: ...


def _issuing_only(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    return [c for c in certs if c.subject != c.issuer]


@dataclass
class OnlineEnroller:
    url: str
    root: Path
    token: str

    def certify(self, csr_der: bytes, device_id: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        from pki.enroll.client import EstClient

        client = EstClient(self.url, self.root)
        chain = _issuing_only(client.cacerts())
        cert = client.enroll(csr_der, device_id, self.token)
        return cert, chain


@dataclass
class OfflineEnroller:
    """``DIR/<device>.csr`` goes to the CA (``urbanedge pki issue --token ... --chain-out``);
    ``DIR/<device>-chain.pem`` (certificate, then issuing CA) comes back, and a re-run installs it."""

    dir: Path

    def certify(self, csr_der: bytes, device_id: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        chain_file = self.dir / f"{device_id}-chain.pem"
        if chain_file.exists():
            certs = x509.load_pem_x509_certificates(chain_file.read_bytes())
            if not certs:
                raise ProvisionError("offline_bad_file", str(chain_file))
            return certs[0], _issuing_only(certs[1:])
        self.dir.mkdir(parents=True, exist_ok=True)
        csr_file = self.dir / f"{device_id}.csr"
        csr = x509.load_der_x509_csr(csr_der)
        csr_file.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        raise ProvisionError("offline_pending", f"{csr_file} -> {chain_file}")
