"""A complete throw-away PKI in one call, for the demo and the tests.

It runs the same steps as the CLI, in-process: root CA, issuing CA, then for each device
and for the IOC ``request`` (key + CSR where the key will live) and ``issue``. Layout::

    DIR/ca-passphrase              0600, when no passphrase was given (random)
    DIR/root/{ca.pem,ca.key,index.json,crl.pem}
    DIR/issuing/{ca.pem,ca.key,index.json,crl.pem}
    DIR/ioc/{recipient,command}.{key,csr,pem,chain.pem}
    DIR/devices/<id>/device.{key,csr,pem,chain.pem}     chain = device + issuing CA
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pki.castore import CRL_FILE, CaDir
from pki.keys import KeyType, cert_pem, load_cert, write_new_file, write_public_file
from pki.profiles import ISSUING_CA, ROOT, SubjectFields, end_entity_profile
from pki.request import create_request, make_private_dir

CRL_DAYS = 30


@dataclass(frozen=True)
class DeviceCreds:
    key: Path
    cert: Path
    chain: Path  # the device certificate followed by the issuing CA's


@dataclass
class ThrowawayPki:
    dir: Path
    root_cert: Path
    issuing_cert: Path
    crl: Path  # the issuing CA's CRL: where device revocations appear
    ioc_recipient_key: Path
    ioc_recipient_cert: Path
    ioc_command_key: Path
    ioc_command_cert: Path
    devices: dict[str, DeviceCreds]
    root_crl: Path
    key_passphrase: bytes | None  # of the device and IOC keys; None: stored unencrypted
    province: str = "Demo"
    _issuing: CaDir | None = field(default=None, repr=False)

    def issue_device(self, device_id: str, *, profile: str = "gateway", days: int | None = None,
                     not_before: datetime | None = None, key_type: KeyType = "p256") -> DeviceCreds:
        """A new key and certificate for ``device_id``; with ``not_before``/``days`` in the past, an
        expired one. Issuing again for the same id makes a new directory (``<id>.2``, ...)."""
        assert self._issuing is not None
        folder = self.dir / "devices" / device_id
        generation = 1
        while folder.exists():
            generation += 1
            folder = self.dir / "devices" / f"{device_id}.{generation}"
        creds = _issue(self._issuing, folder, "device", device_id, profile, self.province, self.key_passphrase,
                       days=days, not_before=not_before, key_type=key_type)
        self.devices[device_id] = creds
        return creds

    def revoke(self, device_id: str) -> None:
        """Revoke the device's latest certificate and rewrite the CRL file."""
        assert self._issuing is not None
        now = datetime.now(UTC)
        self._issuing.revoke(load_cert(self.devices[device_id].cert).serial_number, "keyCompromise", now=now)
        self._issuing.make_crl(now=now, days=CRL_DAYS)


def _issue(ca: CaDir, folder: Path, stem: str, entity_id: str, profile: str, province: str,
           passphrase: bytes | None, *, days: int | None = None, not_before: datetime | None = None,
           key_type: KeyType = "p256") -> DeviceCreds:
    key, csr_path, cert_path, chain = (folder / f"{stem}.{ext}" for ext in ("key", "csr", "pem", "chain.pem"))
    subject = SubjectFields(common_name=entity_id, province=province, organization=f"UrbanEdge {province}",
                            site="demo", serial=entity_id.upper())
    csr = create_request(key, csr_path, subject, key_type=key_type, passphrase=passphrase)
    cert = ca.issue(csr, end_entity_profile(profile), now=datetime.now(UTC), days=days, not_before=not_before,
                    csr_name=str(csr_path))
    write_public_file(cert_path, cert_pem(cert))
    write_public_file(chain, cert_pem(cert, ca.cert))
    return DeviceCreds(key, cert_path, chain)


def build_throwaway_pki(dir: Path, device_ids: Sequence[str], *, province: str = "Demo",
                        passphrase: bytes | None = None) -> ThrowawayPki:
    """Root → issuing CA → IOC recipient + command certificates + one gateway certificate per id.

    CA keys are always encrypted: with ``passphrase``, or with a random one written to
    ``DIR/ca-passphrase`` (0600) so ``urbanedge pki … --passphrase-file`` works on it later.
    Device and IOC keys are encrypted with ``passphrase`` when given.
    """
    dir = Path(dir)
    make_private_dir(dir)
    ca_pass = passphrase
    if ca_pass is None:
        ca_pass = secrets.token_urlsafe(24).encode()
        write_new_file(dir / "ca-passphrase", ca_pass + b"\n")
    now = datetime.now(UTC)
    # A random tag keeps two throw-away PKIs (e.g. a test's "unknown root") apart by name too.
    tag = secrets.token_hex(3)
    org = f"UrbanEdge {province}"
    root = CaDir.init_root(dir / "root", SubjectFields(f"{org} Root CA {tag}", province, org), ca_pass, now=now,
                           days=ROOT.days)
    issuing = root.init_issuing(dir / "issuing", SubjectFields(f"{org} Issuing CA {tag}", province, org), ca_pass,
                                now=now, days=ISSUING_CA.days)
    root.make_crl(now=now, days=CRL_DAYS)
    issuing.make_crl(now=now, days=CRL_DAYS)
    recipient = _issue(issuing, dir / "ioc", "recipient", "ioc-recipient", "ioc-recipient", province, passphrase)
    command = _issue(issuing, dir / "ioc", "command", "ioc-command", "ioc-command", province, passphrase)
    pki = ThrowawayPki(
        dir=dir, root_cert=root.path / "ca.pem", issuing_cert=issuing.path / "ca.pem",
        crl=issuing.path / CRL_FILE, ioc_recipient_key=recipient.key, ioc_recipient_cert=recipient.cert,
        ioc_command_key=command.key, ioc_command_cert=command.cert, devices={}, root_crl=root.path / CRL_FILE,
        key_passphrase=passphrase, province=province, _issuing=issuing,
    )
    for device_id in device_ids:
        pki.issue_device(device_id)
    return pki
