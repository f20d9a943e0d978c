"""``urbanedge provision node``: a blank ESP32 (our firmware, provisioning mode) to a trusted node.

Over the USB serial line (``provisioning.node_link``): the node gets its configuration, makes
its own key and request, the laptop has the request certified (EST with a one-time token, or
offline), installs certificate, chain, IOC recipient and broker CA, reboots the node into
normal mode, and waits for the IOC's signed receipt of the node's first verified reading.
The key never leaves the node: only the request does, and the laptop checks that the request
carries the very key the node reported.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioning.enrol import Enroller
from provisioning.errors import ProvisionError
from provisioning.receipt_watch import Watch
from provisioning.state import ResumeState

DER = serialization.Encoding.DER


@dataclass
class NodePlan:
    port: str
    node_id: str
    serial: str
    site: str
    node_json: dict[str, Any]
    enroller: Enroller
    ioc_cert: Path
    broker_ca: Path
    technician: str
    state_dir: Path
    watch: Watch | None = None
    force: bool = False
    baudrate: int = 115200
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class NodeResult:
    cert: x509.Certificate
    receipt: Any = None


def cert_serial_hex(cert: x509.Certificate) -> str:
    text = f"{cert.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(DER)).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pem_to_der(path: Path) -> bytes:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data).public_bytes(DER)
    return x509.load_der_x509_certificate(data).public_bytes(DER)


def _public_hex(key: Any) -> str:
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:].hex()


def provision_node(plan: NodePlan, step: Callable[[str], Any]) -> NodeResult:
    """Run the steps; ``step(key)`` is a context manager factory (``Progress.step``).

    Raises the failing part's own error (NodeLinkError, EstClientError, ProvisionError), each
    with ``reason`` and ``detail``."""
    from provisioning.node_link import NodeLink

    state = ResumeState(plan.state_dir, plan.node_id)
    with step("step.check_port"):
        link = NodeLink.open(plan.port, baudrate=plan.baudrate)
    try:
        with step("step.hello"):
            hello = link.request("hello")
            if hello.get("has_cert") and not plan.force:
                saved = state.get("cert_sha256")
                if saved is None or hello.get("cert_sha256") != saved:
                    raise ProvisionError("already_provisioned",
                                         f"{plan.node_id}: the node already holds certificate "
                                         f"{hello.get('cert_sha256')}")
        with step("step.config"):
            link.request("config", node_json=plan.node_json)
        with step("step.keygen"):
            got = link.request("csr", node_id=plan.node_id, serial=plan.serial)
            csr_der = base64.b64decode(got["csr_b64"])
            csr = x509.load_der_x509_csr(csr_der)
            if not csr.is_signature_valid or _public_hex(csr.public_key()) != str(got["public_key_hex"]).lower():
                raise ProvisionError("csr_key_mismatch",
                                     "the request is not signed by the key the node reports holding")
        with step("step.enrol"):
            cert_pem = state.get("cert_pem")
            cert = x509.load_pem_x509_certificate(cert_pem.encode()) if cert_pem else None
            if cert is not None and _public_hex(cert.public_key()) == _public_hex(csr.public_key()):
                chain = [x509.load_pem_x509_certificate(p.encode()) for p in state.get("chain_pem") or []]
            else:
                cert, chain = plan.enroller.certify(csr_der, plan.node_id)
                state.put(cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                          chain_pem=[c.public_bytes(serialization.Encoding.PEM).decode() for c in chain],
                          cert_sha256=fingerprint(cert))
            if _public_hex(cert.public_key()) != _public_hex(csr.public_key()):
                raise ProvisionError("cert_mismatch", "the CA returned a certificate for another key")
        with step("step.install"):
            files = {
                "node.crt": _b64(cert.public_bytes(DER)),
                "chain.der": _b64(b"".join(c.public_bytes(DER) for c in chain)),
                "ioc.crt": _b64(_pem_to_der(plan.ioc_cert)),
                "broker-ca.der": _b64(_pem_to_der(plan.broker_ca)),
            }
            link.request("install", files=files)
        with step("step.reboot"):
            link.request("reboot")
        receipt = None
        if plan.watch is not None:
            with step("step.wait_reading"):
                # The cable is still in: what the node prints tells why nothing arrives.
                receipt = plan.watch.wait(plan.node_id, cert, on_tick=ConsoleWatch(link))
    finally:
        link.close()
    state.clear()
    return NodeResult(cert, receipt)


class ConsoleWatch:
    """Reads the node's console while the installer waits for the IOC: a broker that refuses
    the node's certificate shows there (the IOC never hears of it), and is named at once."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.last_problem = ""

    def __call__(self) -> None:
        from provisioning.node_link import NodeLinkError

        try:
            lines = self.link.poll_console()
        except NodeLinkError:
            return  # the cable came out: the receipt can still come
        for line in lines:
            if "event=mqtt_connect_failed" not in line:
                continue
            self.last_problem = line
            if "handshake refused" in line:
                raise ProvisionError("broker_refused", line)


def node_json(*, node_id: str, site: str, serial: str, broker_host: str, broker_port: int, bus_port: str | int,
              devices: list[dict[str, Any]], wifi_ssid: str | None = None, wifi_password: str | None = None,
              prefix: str = "urbanedge/v1", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The node's configuration (docs/firmware.md) from what the technician gave."""
    cfg: dict[str, Any] = {
        "node_id": node_id, "site": site, "serial": serial, "topic_prefix": prefix,
        "broker": {"host": broker_host, "port": broker_port, "ca": "broker-ca.der"},
        "bus": {"port": bus_port},
        "devices": devices,
    }
    if wifi_ssid:
        cfg["wifi"] = {"ssid": wifi_ssid, "password": wifi_password or ""}
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def now_utc() -> datetime:
    return datetime.now(UTC)
