"""NodeLink's own rules, against a scripted peer on the other end of a real socat pty pair:
one retry with the same id, answers to other ids dropped, damaged requests resent, the node's
refusal carried with its reason, and silence told apart from line noise and from an echo.
(The real firmware on the other end: tests/firmware/test_provision_mp.py.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from provisioning.node_link import NodeLink, NodeLinkError
from provisioning.serial_proto import FrameDecoder, encode
from tests.support.socat import PtyPair, open_pty_pair

Script = Callable[[int, dict[str, Any]], list[bytes]]


class Peer:
    """Plays the node: for the n-th request (from 0) it writes what ``script(n, request)`` returns."""

    def __init__(self, port: Path, script: Script) -> None:
        self.requests: list[dict[str, Any]] = []
        self._ser = serial.Serial(str(port), timeout=0.05)
        self._script = script
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set():
            for req in decoder.feed(self._ser.read(4096)):
                self.requests.append(req)
                for chunk in self._script(len(self.requests) - 1, req):
                    self._ser.write(chunk)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._ser.close()


@pytest.fixture
def line(tmp_path: Path) -> Iterator[PtyPair]:
    pair = open_pty_pair(tmp_path, "cable")
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def peer(line: PtyPair) -> Iterator[Callable[[Script], Peer]]:
    peers: list[Peer] = []

    def start(script: Script) -> Peer:
        p = Peer(line.b, script)
        peers.append(p)
        return p

    yield start
    for p in peers:
        p.close()


def ok(req: dict[str, Any], **fields: Any) -> bytes:
    return encode({"id": req["id"], "ok": True, **fields})


def test_a_lost_request_is_sent_again_once_with_the_same_id(line: PtyPair, peer: Callable[[Script], Peer]) -> None:
    # The first copy is lost; the answer to the second comes after one for another id and a log line.
    p = peer(lambda n, req: [] if n == 0 else
             [b"event=poll_failed device=x\n", ok({"id": req["id"] + 1}, stale=True), ok(req, mode="provisioning")])
    with NodeLink.open(str(line.a), timeout=0.5) as link:
        assert link.request("hello")["mode"] == "provisioning"
        assert link.dropped == 1
        assert link.console_lines() == ["event=poll_failed device=x"]
    assert len(p.requests) == 2 and p.requests[0] == p.requests[1]
    assert p.requests[0]["op"] == "hello" and isinstance(p.requests[0]["id"], int)


def test_a_request_damaged_on_the_way_is_sent_again(line: PtyPair, peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda n, req: [encode({"id": req["id"], "ok": False, "reason": "bad_frame", "detail": "CRC"})]
             if n == 0 else [ok(req, stored=True)])
    with NodeLink.open(str(line.a), timeout=2.0) as link:
        assert link.request("config", node_json={"node_id": "n"})["stored"] is True
    assert len(p.requests) == 2


def test_a_refusal_carries_the_nodes_reason_and_is_not_retried(line: PtyPair,
                                                               peer: Callable[[Script], Peer]) -> None:
    p = peer(lambda n, req: [encode({"id": req["id"], "ok": False, "reason": "cert_mismatch",
                                     "detail": "node.crt certifies another key"})])
    with NodeLink.open(str(line.a), timeout=2.0) as link, pytest.raises(NodeLinkError) as exc:
        link.request("install", files={"node.crt": "AAAA"})
    assert (exc.value.reason, exc.value.node_reason) == ("node_error", "cert_mismatch")
    assert "another key" in exc.value.detail
    assert len(p.requests) == 1


def test_silence_is_no_answer(line: PtyPair) -> None:
    # Nothing on the other end of the cable (a node that is off, or another device's port).
    with NodeLink.open(str(line.a), timeout=0.3) as link, pytest.raises(NodeLinkError) as exc:
        link.request("hello")
    assert exc.value.reason == "no_answer" and "nothing came back" in exc.value.detail
    assert link.sent == 2


def test_garbage_is_no_answer_and_names_the_baud_rate(line: PtyPair, peer: Callable[[Script], Peer]) -> None:
    # What 115200 baud looks like to a port set to 9600: bytes, no text, no frame.
    peer(lambda n, req: [bytes([0x80, 0xF8, 0x00, 0xFE, 0x86, 0x9E, 0x06, 0xE0] * 8)])
    with NodeLink.open(str(line.a), baudrate=9600, timeout=0.5) as link, pytest.raises(NodeLinkError) as exc:
        link.request("hello")
    assert exc.value.reason == "no_answer" and "baud" in exc.value.detail and "9600" in exc.value.detail


def test_an_echo_is_not_provisioning_mode(line: PtyPair, peer: Callable[[Script], Peer]) -> None:
    # A terminal (or REPL) that echoes: our own request comes back, which is not an answer.
    peer(lambda n, req: [encode(req)])
    with NodeLink.open(str(line.a), timeout=0.5) as link, pytest.raises(NodeLinkError) as exc:
        link.request("hello")
    assert exc.value.reason == "not_provisioning_mode"


def test_other_text_is_not_provisioning_mode(line: PtyPair, peer: Callable[[Script], Peer]) -> None:
    peer(lambda n, req: [b"AT+ERROR unknown command\r\n"])
    with NodeLink.open(str(line.a), timeout=0.5) as link, pytest.raises(NodeLinkError) as exc:
        link.request("hello")
    assert exc.value.reason == "not_provisioning_mode" and "AT+ERROR" in exc.value.detail


def test_a_port_someone_else_holds_is_port_missing_busy(line: PtyPair) -> None:
    with NodeLink.open(str(line.a)), pytest.raises(NodeLinkError) as exc:
        NodeLink.open(str(line.a))
    assert exc.value.reason == "port_missing" and "busy" in exc.value.detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any device: permission cannot be refused")
def test_a_port_without_permission_is_port_missing_permission(line: PtyPair) -> None:
    os.chmod(os.path.realpath(line.a), 0)  # even its owner may not open it now
    with pytest.raises(NodeLinkError) as exc:
        NodeLink.open(str(line.a))
    assert exc.value.reason == "port_missing" and "permission denied" in exc.value.detail


def test_a_request_not_signed_by_the_key_the_node_reports_is_refused_before_the_ca(
        line: PtyPair, peer: Callable[[Script], Peer], tmp_path: Path) -> None:
    """A node (or something posing as one) hands over a CSR for another key than the one it
    says it holds: the laptop refuses at the key step and nothing goes to the CA."""
    import base64
    import contextlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from provisioning.enrol import OfflineEnroller
    from provisioning.errors import ProvisionError
    from provisioning.node import NodePlan, provision_node

    signer, claimed = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-x")])).sign(signer, hashes.SHA256()))
    claimed_hex = claimed.public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)[1:].hex()

    def script(_n: int, req: dict[str, Any]) -> list[bytes]:
        if req["op"] == "hello":
            return [ok(req, mode="provisioning", has_key=True, has_cert=False, cert_sha256=None)]
        if req["op"] == "csr":
            return [ok(req, csr_b64=base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode(),
                       public_key_hex=claimed_hex)]
        return [ok(req)]

    peer(script)
    steps: list[str] = []

    @contextlib.contextmanager
    def step(key: str) -> Iterator[None]:
        steps.append(key)
        yield

    offline = tmp_path / "offline"
    plan = NodePlan(port=str(line.a), node_id="node-x", serial="S1", site="s", node_json={},
                    enroller=OfflineEnroller(offline), ioc_cert=tmp_path / "none", broker_ca=tmp_path / "none",
                    technician="t", state_dir=tmp_path / "st")
    with pytest.raises(ProvisionError) as err:
        provision_node(plan, step)
    assert err.value.reason == "csr_key_mismatch"
    assert steps[-1] == "step.keygen" and not offline.exists()
