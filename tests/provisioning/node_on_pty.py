"""A node on a "USB cable": the real MicroPython unix port running firmware/main.py with its
console (stdin and stdout) on one end of a socat pty pair; the laptop side opens the other end
with pyserial, as it would open /dev/ttyUSB0.

Also what the tests need to certify a node: a certificate from the shared test PKI for the
node's own request, and the DER files ``install`` takes.
"""

from __future__ import annotations

import base64
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.profiles import end_entity_profile
from provisioning.node_link import NodeLink
from tests.support import testpki
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env
from tests.support.process import stop_process
from tests.support.socat import PtyPair, open_pty_pair

DER = serialization.Encoding.DER


@dataclass
class NodeOnPty:
    pty: PtyPair
    proc: subprocess.Popen[bytes]
    storage: Path
    stderr: Path

    @property
    def port(self) -> str:
        """The laptop's end."""
        return str(self.pty.a)

    def link(self, timeout: float = 10.0) -> NodeLink:
        return NodeLink.open(self.port, timeout=timeout)

    def unplug(self) -> None:
        """The cable out: socat (both pty masters) gone."""
        self.pty.close()

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        stop_process(self.proc)
        self.pty.close()

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


def start_node(folder: Path, storage: Path, *, requested: bool = False, heap: str = "512k",
               name: str = "usb", repl: bool = False) -> NodeOnPty:
    """micropython main.py with its console on a fresh pty pair in ``folder``.

    ``requested``: UE_PROVISION=1, the unix stand-in for holding BOOT at boot. ``repl``: no
    script at all, the bare MicroPython REPL (a board whose firmware is not running)."""
    pty = open_pty_pair(folder, name)
    env = mp_env()
    env.pop("UE_PROVISION", None)
    env["UE_STORAGE"] = str(storage)
    if requested:
        env["UE_PROVISION"] = "1"
    argv = [str(micropython_exe()), "-X", f"heapsize={heap}"]
    if not repl:
        argv.append(str(FIRMWARE / "main.py"))
    stderr = folder / f"{name}.stderr"
    fd = os.open(pty.b, os.O_RDWR | os.O_NOCTTY)
    try:
        with open(stderr, "ab") as err:
            proc = subprocess.Popen(argv, stdin=fd, stdout=fd, stderr=err, env=env)
    finally:
        os.close(fd)
    return NodeOnPty(pty, proc, storage, stderr)


def issue_for(csr_der: bytes) -> x509.Certificate:
    """The province's certificate for the node's own request (profile "node")."""
    pki = testpki.shared_pki()
    assert pki._issuing is not None
    return pki._issuing.issue(x509.load_der_x509_csr(csr_der), end_entity_profile("node"), now=datetime.now(UTC))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pem_to_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(DER)


def install_files(cert: x509.Certificate, broker_ca_der: bytes | None = None) -> dict[str, str]:
    """The four files of a provisioned node, base64, as ``install`` takes them."""
    pki = testpki.shared_pki()
    return {
        "node.crt": b64(cert.public_bytes(DER)),
        "chain.der": b64(pem_to_der(pki.issuing_cert)),
        "ioc.crt": b64(pem_to_der(pki.ioc_recipient_cert)),
        # Any CA the node's mbedTLS can load; the tests that need a real broker pass its own.
        "broker-ca.der": b64(broker_ca_der if broker_ca_der is not None else pem_to_der(pki.root_cert)),
    }


def provision_over(link: NodeLink, node_json: dict[str, Any], *, serial: str = "ESP32-0042",
                   broker_ca_der: bytes | None = None) -> tuple[x509.Certificate, dict[str, Any]]:
    """config, csr, certificate from the test PKI, install: (the certificate, the csr answer)."""
    link.request("config", node_json=node_json)
    got = link.request("csr", node_id=node_json["node_id"], serial=serial)
    cert = issue_for(base64.b64decode(got["csr_b64"]))
    link.request("install", files=install_files(cert, broker_ca_der))
    return cert, got
