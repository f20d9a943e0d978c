"""Provisioning mode end to end: the real firmware (micropython firmware/main.py) with its console
on a socat pty, the laptop's NodeLink (pyserial) on the other end, speaking the protocol of
docs/provisioning-protocol.md.

A blank node goes to a provisioned one and reboots into normal mode on the same line; a
provisioned node is decommissioned; the cable comes out mid-request; the wrong port, a REPL, and
a node running normally are each told apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.node_link import NodeLink, NodeLinkError
from provisioning.serial_proto import FrameDecoder, encode
from tests.provisioning.node_on_pty import (
    DER,
    NodeOnPty,
    b64,
    install_files,
    issue_for,
    pem_to_der,
    provision_over,
    start_node,
)
from tests.support import testpki
from tests.support.ports import free_port
from tests.support.procs import wait_for

NODE_ID = "flood-node-07"


def node_json(**over: Any) -> dict[str, Any]:
    # The broker port is closed: a node in normal mode keeps logging its failed connects
    # (every 100..300 ms), which is what a laptop sees of a node that is not provisioning.
    cfg: dict[str, Any] = {
        "node_id": NODE_ID, "site": "canal-7", "serial": "ESP32-0042",
        "broker": {"host": "127.0.0.1", "port": free_port(), "ca": "broker-ca.der", "keepalive": 10,
                   "backoff_min_ms": 100, "backoff_max_ms": 300},
        "bus": {"port": "/dev/null", "timeout_ms": 50},
        "devices": [{"id": "flood-canal-07", "profile": "flood-sensor", "unit": 1, "interval_s": 0.5}],
        "log": {"seg_size": 4096, "n_segs": 4},
    }
    cfg.update(over)
    return cfg


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeOnPty]]:
    started: list[NodeOnPty] = []
    try:
        yield started
    finally:
        for n in started:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)  # one test stops it mid-request
            n.stop()


def _start(nodes: list[NodeOnPty], tmp: Path, storage: Path, **kw: Any) -> NodeOnPty:
    storage.mkdir(exist_ok=True)
    n = start_node(tmp, storage, name=f"usb{len(nodes)}", **kw)
    nodes.append(n)
    return n


def _openssl_req_verify(csr_der: bytes, tmp: Path) -> None:
    path = tmp / "node.csr"
    path.write_bytes(csr_der)
    subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
                   check=True, capture_output=True)


def _node_error(excinfo: pytest.ExceptionInfo[NodeLinkError]) -> str:
    assert excinfo.value.reason == "node_error", excinfo.value
    assert excinfo.value.node_reason is not None
    return excinfo.value.node_reason


def test_blank_node_is_provisioned_over_the_line_and_reboots_into_normal_mode(
        tmp_path: Path, nodes: list[NodeOnPty]) -> None:
    storage = tmp_path / "node"
    node = _start(nodes, tmp_path, storage)
    ident = storage / "id"
    with node.link() as link:
        hello = link.request("hello")
        assert hello["mode"] == "provisioning" and hello["ok"] is True
        assert hello["node_id"] is None and hello["has_key"] is False and hello["has_cert"] is False
        assert hello["cert_sha256"] is None and hello["platform"] == "linux" and hello["version"]

        # A bad configuration is refused by the node's own checks, by field, and changes nothing.
        bad = node_json(devices=[{"id": "x", "profile": "toaster"}])
        with pytest.raises(NodeLinkError) as exc:
            link.request("config", node_json=bad)
        assert _node_error(exc) == "config_invalid"
        assert "devices[0].profile" in exc.value.detail and "unknown profile" in exc.value.detail
        assert "node.json.tmp" not in exc.value.detail
        assert not (storage / "node.json").exists() and not (storage / "node.json.tmp").exists()

        cfg = node_json()
        link.request("config", node_json=cfg)
        assert json.loads((storage / "node.json").read_text()) == cfg
        assert link.request("hello")["node_id"] == NODE_ID

        # The key is made on the node; the request and the public point come back, never the key.
        got = link.request("csr", node_id=NODE_ID, serial="ESP32-0042")
        csr_der = base64.b64decode(got["csr_b64"])
        _openssl_req_verify(csr_der, tmp_path)
        csr = x509.load_der_x509_csr(csr_der)
        assert csr.subject.rfc4514_string() == "2.5.4.5=ESP32-0042,CN=flood-node-07"
        point = csr.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        assert got["public_key_hex"] == point[1:].hex()
        key = serialization.load_der_private_key((ident / "node.key").read_bytes(), None)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
        answer = json.dumps(got)
        assert scalar.hex() not in answer and base64.b64encode(scalar).decode() not in answer
        key_file = (ident / "node.key").read_bytes()
        again = link.request("csr", node_id=NODE_ID, serial="ESP32-0042")
        assert again["public_key_hex"] == got["public_key_hex"]  # one key per node, not per request
        assert (ident / "node.key").read_bytes() == key_file

        # A request for another name than node.json's would certify the wrong src.
        with pytest.raises(NodeLinkError) as exc:
            link.request("csr", node_id="someone-else")
        assert _node_error(exc) == "bad_args" and "node.json" in exc.value.detail

        # A certificate for another key is refused, and nothing of that install is written.
        other = x509.load_pem_x509_certificate(testpki.device("someone-else").cert.read_bytes())
        with pytest.raises(NodeLinkError) as exc:
            link.request("install", files=install_files(other))
        assert _node_error(exc) == "cert_mismatch"
        assert not any((ident / n).exists() for n in ("node.crt", "chain.der", "ioc.crt", "broker-ca.der"))
        # Only the four identity files, by name.
        with pytest.raises(NodeLinkError) as exc:
            link.request("install", files={"../main.py": b64(b"import os")})
        assert _node_error(exc) == "bad_args"

        cert = issue_for(csr_der)
        pki = testpki.shared_pki()
        subprocess.run(["openssl", "verify", "-CAfile", str(pki.root_cert), "-untrusted", str(pki.issuing_cert),
                        "/dev/stdin"], input=cert.public_bytes(serialization.Encoding.PEM), check=True,
                       capture_output=True)
        files = install_files(cert)
        assert link.request("install", files=files)["installed"] == ["node.crt", "chain.der", "ioc.crt",
                                                                      "broker-ca.der"]
        for name, text in files.items():
            assert (ident / name).read_bytes() == base64.b64decode(text), name
        hello = link.request("hello")
        assert hello["has_key"] is True and hello["has_cert"] is True
        assert hello["cert_sha256"] == hashlib.sha256(cert.public_bytes(DER)).hexdigest()
        status = link.request("status")
        assert (status["node_id"], status["site"], status["has_key"], status["has_cert"]) == \
            (NODE_ID, "canal-7", True, True)
        assert status["pending"] is None and status["dropped"] is None  # no flash log yet

        assert link.request("reboot")["ok"] is True
        # Same process, same line: the node now runs normally and says so on the console.
        line = link.wait_console("event=node_started", 30)
        assert f"src={NODE_ID}" in line
        # A node in normal mode logs but does not answer: not_provisioning_mode, not a timeout.
        link.timeout = 1.0
        with pytest.raises(NodeLinkError) as exc:
            link.request("hello")
        assert exc.value.reason == "not_provisioning_mode", exc.value
        assert "normal mode" in exc.value.detail
    assert node.proc.poll() is None, node.stderr_text()


def test_decommission_wipes_a_provisioned_node_which_then_waits_blank(tmp_path: Path,
                                                                     nodes: list[NodeOnPty]) -> None:
    storage = tmp_path / "node"
    first = _start(nodes, tmp_path, storage)
    with first.link() as link:
        provision_over(link, node_json())
        link.request("reboot")
        link.wait_console("event=node_started", 30)
    first.stop()
    assert (storage / "log").is_dir()

    # Provisioned nodes start normally; the technician asks for provisioning mode (BOOT held).
    second = _start(nodes, tmp_path, storage, requested=True)
    with second.link() as link:
        hello = link.request("hello")
        assert hello["has_cert"] is True and hello["node_id"] == NODE_ID
        status = link.request("status")
        assert isinstance(status["pending"], int) and status["pending"] >= 1  # at least agent_started
        assert status["dropped"] == 0
        assert link.request("wipe")["wiped"] is True
        left = sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if p.is_file())
        assert left == [], left
        hello = link.request("hello")
        assert (hello["has_key"], hello["has_cert"], hello["node_id"]) == (False, False, None)
        # Reboot of a node without a certificate: back into provisioning mode, not normal mode.
        link.request("reboot")
        link.wait_console("event=provisioning_mode", 30)
        assert link.request("hello")["mode"] == "provisioning"


def test_a_repeated_request_is_answered_again_not_done_twice(tmp_path: Path, nodes: list[NodeOnPty]) -> None:
    storage = tmp_path / "node"
    node = _start(nodes, tmp_path, storage)
    with node.link() as link:
        link.request("config", node_json=node_json())
    # Raw frames, as a laptop that lost an answer would resend them.
    with serial.Serial(node.port, timeout=0.2) as port:
        decoder = FrameDecoder()

        def answer() -> dict[str, Any]:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                frames = decoder.feed(port.readline())
                if frames:
                    return frames[0]
            raise AssertionError("the node did not answer")

        frame = encode({"id": 41, "op": "csr", "node_id": NODE_ID})
        port.write(frame)
        one = answer()
        port.write(frame)
        two = answer()
        assert one == two and one["ok"] is True
        port.write(encode({"id": 42, "op": "status"}))
        assert answer()["id"] == 42
        # The node logs each request it carries out: the repeat was answered, not signed again.
        done = [line for line in decoder.noise if b"event=provisioning_request" in line]
        assert [line.split(b" ")[1] for line in done] == [b"op=csr", b"op=status"], done
        # A damaged frame: the node names it for the id it can still read.
        port.write(frame.replace(b'"csr"', b'"cst"'))
        bad = answer()
        assert (bad["id"], bad["ok"], bad["reason"]) == (41, False, "bad_frame")


def test_a_frame_too_long_for_the_node_is_refused_not_fatal(tmp_path: Path, nodes: list[NodeOnPty]) -> None:
    storage = tmp_path / "node"
    node = _start(nodes, tmp_path, storage)
    with node.link() as link:
        assert link.request("hello")["max_frame"] == link.max_frame == 4096
        with pytest.raises(NodeLinkError) as exc:
            link.request("install", files={"node.crt": "A" * 20000})
        assert _node_error(exc) == "bad_frame" and "longer" in exc.value.detail
        with pytest.raises(NodeLinkError) as exc:
            link.request("format_flash")
        assert _node_error(exc) == "unknown_op"
        # A long chain makes an install longer than a line: the link sends it file by file.
        link.request("config", node_json=node_json())
        got = link.request("csr", node_id=NODE_ID)
        pki = testpki.shared_pki()
        chain = (pem_to_der(pki.issuing_cert) + pem_to_der(pki.root_cert)) * 2
        files = {**install_files(issue_for(base64.b64decode(got["csr_b64"]))), "chain.der": b64(chain)}
        assert len(encode({"id": 1, "op": "install", "files": files})) > 4096
        sent = link.sent
        assert sorted(link.request("install", files=files)["installed"]) == sorted(files)
        assert link.sent - sent == 4
        assert (storage / "id" / "chain.der").read_bytes() == chain


def test_cable_pulled_while_a_request_is_pending(tmp_path: Path, nodes: list[NodeOnPty]) -> None:
    node = _start(nodes, tmp_path, tmp_path / "node")
    link = node.link(timeout=5.0)
    try:
        assert link.request("hello")["ok"]
        node.proc.send_signal(signal.SIGSTOP)  # the node will not answer this one
        outcome: list[BaseException | dict[str, Any]] = []

        def ask() -> None:
            try:
                outcome.append(link.request("status"))
            except BaseException as exc:  # handed over to the test thread
                outcome.append(exc)

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        wait_for(lambda: link.sent >= 2, 10, "the request written")
        node.unplug()
        t.join(15)  # never a hang: well before two timeouts
        assert not t.is_alive(), "NodeLink hung on a vanished port"
        assert len(outcome) == 1 and isinstance(outcome[0], NodeLinkError), outcome
        assert outcome[0].reason in ("unplugged", "no_answer"), outcome[0]
        assert outcome[0].reason == "unplugged", outcome[0]  # a pty whose master is gone reads EIO
    finally:
        link.close()
    node.proc.send_signal(signal.SIGCONT)
    # The node's console is gone too: it leaves provisioning mode (exit 3), it does not spin.
    assert node.wait_exit(30) == 3


def test_wrong_port_is_port_missing(tmp_path: Path) -> None:
    with pytest.raises(NodeLinkError) as exc:
        NodeLink.open(str(tmp_path / "ttyUSB9"))
    assert exc.value.reason == "port_missing" and "no such device" in exc.value.detail
    plain = tmp_path / "notes.txt"
    plain.write_text("not a tty")
    with pytest.raises(NodeLinkError) as exc:
        NodeLink.open(str(plain))
    assert exc.value.reason == "port_missing" and "not a serial device" in exc.value.detail


def test_a_bare_repl_is_not_provisioning_mode(tmp_path: Path, nodes: list[NodeOnPty]) -> None:
    # A board whose firmware is not running: MicroPython's REPL answers every line (echo, error).
    repl = _start(nodes, tmp_path, tmp_path / "node", repl=True)
    with repl.link(timeout=1.5) as link, pytest.raises(NodeLinkError) as exc:
        link.request("hello")
    assert exc.value.reason == "not_provisioning_mode", exc.value
    assert "REPL" in exc.value.detail


def test_a_provisioned_node_started_normally_is_not_provisioning_mode(tmp_path: Path,
                                                                       nodes: list[NodeOnPty]) -> None:
    storage = tmp_path / "node"
    first = _start(nodes, tmp_path, storage)
    with first.link() as link:
        provision_over(link, node_json())
    first.unplug()
    assert first.wait_exit(30) == 3  # the console closed before a reboot
    # Started again with its certificate and without BOOT held: normal mode from the first line.
    second = _start(nodes, tmp_path, storage)
    with second.link(timeout=1.0) as link:
        link.wait_console("event=", 30)  # up and logging (however slow the start on a busy machine)
        with pytest.raises(NodeLinkError) as exc:
            link.request("hello")
        assert exc.value.reason == "not_provisioning_mode", exc.value
        assert "normal mode" in exc.value.detail
