"""``urbanedge provision`` end to end, against real parts: a throw-away provincial PKI with its
EST enrolment service over HTTPS on loopback (``urbanedge pki serve``), one-time tokens
(``urbanedge pki token create``), a real Mosquitto (mutual TLS for devices, a plain listener for
the IOC and the installer), the IOC receiver publishing signed receipts, the node firmware under
the real MicroPython unix port on a socat pty as its "USB serial", and a gateway agent.

The technician's command must end with the IOC's signed confirmation; the inventory must
hold the record; decommissioning must make the IOC refuse the device; bad tokens, a device
already provisioned, and a pulled cable must each end with a clear message, never a second
certificate."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki.throwaway import ThrowawayPki, build_throwaway_pki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port, wait_port
from tests.support.process import stop_process
from tests.support.procs import SimProc, wait_for
from tests.support.socat import PtyPair, open_pty_pair
from tests.support.tls_broker import TlsMaterial, make_tls_material

NODE = "flood-node-77"
SITE = "canal-3"


@dataclass
class Field:
    tmp: Path
    pki: ThrowawayPki
    tls: TlsMaterial
    broker: Mosquitto
    tls_port: int
    est_url: str
    est: subprocess.Popen[str]
    ioc: subprocess.Popen[bytes]
    sensor_pty: PtyPair
    sim: SimProc

    @property
    def ca_dir(self) -> Path:
        return self.pki.issuing_cert.parent

    @property
    def passphrase_file(self) -> Path:
        return self.pki.dir / "ca-passphrase"

    def token(self, device: str, serial: str, profile: str = "node", ttl: str = "1h", site: str = SITE) -> str:
        out = run("pki", "token", "create", "--ca-dir", str(self.ca_dir), "--device-id", device, "--serial", serial,
                  "--site", site, "--profile", profile, "--ttl", ttl)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def ioc_log(self) -> str:
        return (self.tmp / "ioc.log").read_text(errors="replace")

    def ioc_records(self, source: str) -> list[dict[str, Any]]:
        path = self.tmp / "ioc.jsonl"
        if not path.exists():
            return []
        return [r for r in (json.loads(line) for line in path.read_text().splitlines() if line.strip())
                if r["source"] == source]

    def node_args(self, port: str, token: str, *, serial: str = "SN-77", node_id: str = NODE,
                  wait: float = 60) -> list[str]:
        extra = self.tmp / "node-extra.json"
        extra.write_text(json.dumps({"batch": {"max_records": 4, "max_wait_s": 0.5},
                                     "broker": {"keepalive": 10, "backoff_min_ms": 200, "backoff_max_ms": 1000},
                                     "log": {"seg_size": 4096, "n_segs": 8}}))
        return ["provision", "node", "--port", port, "--node-id", node_id, "--serial", serial, "--site", SITE,
                "--device", "flood-canal-07:flood-sensor:1:0.5", "--bus-port", str(self.sensor_pty.b),
                "--broker", f"127.0.0.1:{self.tls_port}", "--broker-ca", str(self.tls.ca_pem),
                "--ioc-cert", str(self.pki.ioc_recipient_cert), "--root", str(self.pki.root_cert),
                "--est", self.est_url, "--token", token, "--watch-broker", f"127.0.0.1:{self.broker.port}",
                "--wait", str(wait), "--node-json", str(extra), "--technician", "Nguyễn Văn An",
                "--inventory", str(self.tmp / "inventory.db"), "--state-dir", str(self.tmp / "state")]


def run(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture
def field(tmp_path: Path) -> Iterator[Field]:
    pki = build_throwaway_pki(tmp_path / "pki", [])
    tls = make_tls_material(tmp_path / "broker-pki")
    tls_port = free_port()
    bundle = tmp_path / "clients-ca.pem"
    bundle.write_bytes(pki.issuing_cert.read_bytes() + pki.root_cert.read_bytes())
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(tmp_path / "broker", persistence=True, extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {bundle}\ncertfile {tls.server_cert}\nkeyfile {tls.server_key}\n"
        "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"))
    broker.start()
    wait_port("127.0.0.1", tls_port)
    stack: list[Any] = [broker.stop]
    try:
        est = subprocess.Popen([sys.executable, "-m", "urbanedge", "pki", "serve",
                                "--ca-dir", str(pki.issuing_cert.parent), "--listen", "127.0.0.1:0",
                                "--root", str(pki.root_cert),
                                "--passphrase-file", str(pki.dir / "ca-passphrase")],
                               stdout=subprocess.PIPE, stderr=open(tmp_path / "est.log", "ab"), text=True)  # noqa: SIM115
        stack.append(lambda: stop_process(est))
        assert est.stdout is not None
        line = est.stdout.readline()
        m = re.search(r"url=(\S+)", line)
        assert m, line
        chain = tmp_path / "ioc-command-chain.pem"
        chain.write_bytes(pki.ioc_command_cert.read_bytes() + pki.issuing_cert.read_bytes())
        log = open(tmp_path / "ioc.log", "ab")  # noqa: SIM115 - handed to the child
        ioc = subprocess.Popen(
            [sys.executable, "-m", "urbanedge", "ioc", "receive", "--broker", f"127.0.0.1:{broker.port}",
             "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key), "--cert", str(pki.ioc_recipient_cert),
             "--crl", str(pki.crl), "--store", f"sqlite:{tmp_path / 'ioc.db'}", "--out", str(tmp_path / "ioc.jsonl"),
             "--no-share", "--client-id", "ioc-prov", "--receipt-key", str(pki.ioc_command_key),
             "--receipt-cert", str(chain)], stdout=log, stderr=log)
        log.close()
        stack.append(lambda: stop_process(ioc, grace=10))
        wait_for(lambda: "event=ioc_connected" in (tmp_path / "ioc.log").read_text(), 30, "IOC receiver")
        pty = open_pty_pair(tmp_path, "rs485")
        stack.append(pty.close)
        sim = SimProc.start("flood-sensor", "--serial", str(pty.a), "--units", "1", "--tick", "0.2", "--seed", "9")
        stack.append(sim.stop)
        yield Field(tmp_path, pki, tls, broker, tls_port, m.group(1), est, ioc, pty, sim)
    finally:
        for undo in reversed(stack):
            undo()


def _node(field: Field, name: str, *, requested: bool = False, storage: Path | None = None) -> Any:
    from tests.provisioning.node_on_pty import start_node

    store = storage or field.tmp / f"{name}-flash"
    store.mkdir(exist_ok=True)
    return start_node(field.tmp, store, requested=requested, name=name)


def test_technician_provisions_a_node_the_ioc_verifies_it_and_decommission_makes_the_ioc_refuse_it(
        field: Field) -> None:
    node = _node(field, "usb0")
    try:
        token = field.token(NODE, "SN-77")
        res = run(*field.node_args(node.port, token), "--lang", "vi")
        assert res.returncode == 0, res.stdout + res.stderr + node.stderr_text()
        lines = res.stdout.splitlines()
        assert any(line.startswith("[8/8]") for line in lines), res.stdout
        assert "Nguyễn" not in res.stdout  # the technician's name goes to the inventory, not the screen
        # The IOC shows the node's verified readings.
        wait_for(lambda: any(r["type"] == "telemetry" for r in field.ioc_records(NODE)), 30, "verified readings")
        tele = [r for r in field.ioc_records(NODE) if r["type"] == "telemetry"]
        assert tele[0]["verified"]["signer"] == NODE and tele[0]["device_id"] == "flood-canal-07"
        # The certificate on the node: issued by the province, verified by openssl, key made on the node.
        crt = node.storage / "id" / "node.crt"
        cert = x509.load_der_x509_certificate(crt.read_bytes())
        pem = field.tmp / "node.pem"
        subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(crt), "-out", str(pem)], check=True)
        subprocess.run(["openssl", "verify", "-CAfile", str(field.pki.root_cert), "-untrusted",
                        str(field.pki.issuing_cert), "-purpose", "sslclient", str(pem)], check=True,
                       capture_output=True)
        # The inventory holds the record, exported as a utility would take it.
        exp = run("provision", "inventory", "export", "--format", "json",
                  "--inventory", str(field.tmp / "inventory.db"))
        assert exp.returncode == 0, exp.stderr
        rows = [r for r in json.loads(exp.stdout) if r["device_id"] == NODE]
        assert rows[-1]["result"] == "ok" and rows[-1]["action"] == "provision"
        assert rows[-1]["technician"] == "Nguyễn Văn An" and rows[-1]["site"] == SITE
        assert int(rows[-1]["cert_serial"], 16) == cert.serial_number

        # Provisioning the same device again (BOOT held): refused, no second certificate.
        node.stop()
        again = _node(field, "usb1", requested=True, storage=node.storage)
        try:
            res2 = run(*field.node_args(again.port, field.token(NODE, "SN-77")), "--lang", "en", "--wait", "0")
            assert res2.returncode == 1, res2.stdout + res2.stderr
            assert "already" in res2.stdout.lower(), res2.stdout
            assert x509.load_der_x509_certificate(crt.read_bytes()) == cert
        finally:
            again.stop()
        node = _node(field, "usb2", storage=node.storage)  # back in service, sending

        # Decommission: revoked, CRL published where the IOC reads it; the IOC then refuses the node.
        res3 = run("provision", "decommission", "--device-id", NODE, "--ca-dir", str(field.ca_dir),
                   "--passphrase-file", str(field.passphrase_file), "--inventory", str(field.tmp / "inventory.db"),
                   "--lang", "en")
        assert res3.returncode == 0, res3.stdout + res3.stderr
        wait_for(lambda: "event=ioc_crl_reloaded" in field.ioc_log(), 30, "the IOC reloads the CRL")
        wait_for(lambda: re.search(r"event=ioc_rejected reason=revoked", field.ioc_log()) is not None, 40,
                 "the IOC refusing the revoked node")
        exp = run("provision", "inventory", "export", "--format", "json",
                  "--inventory", str(field.tmp / "inventory.db"))
        rows = [r for r in json.loads(exp.stdout) if r["device_id"] == NODE]
        assert rows[-1]["action"] == "decommission" and rows[-1]["result"] == "ok"
    finally:
        node.stop()


def _issued_for(field: Field, device: str) -> int:
    index = json.loads((field.ca_dir / "index.json").read_text())
    return sum(1 for e in index["certs"] if f"CN={device}" in json.dumps(e))


def test_bad_tokens_and_a_pulled_cable_end_with_advice_and_no_second_certificate(field: Field) -> None:
    node = _node(field, "usb3")
    try:
        # A token for another serial: the CA refuses; the technician is told what to check.
        res = run(*field.node_args(node.port, field.token(NODE, "SN-OTHER"), serial="SN-78", wait=0), "--lang", "en")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "another device" in res.stdout, res.stdout
        # An expired token, in Vietnamese.
        expired = field.token(NODE, "SN-78", ttl="1s")
        time.sleep(1.5)
        res = run(*field.node_args(node.port, expired, serial="SN-78", wait=0), "--lang", "vi")
        assert res.returncode == 1 and "hết hạn" in res.stdout, res.stdout
        assert _issued_for(field, NODE) == 0

        # The cable comes out once the certificate is issued, while it is being installed.
        token = field.token(NODE, "SN-78")
        proc = subprocess.Popen([sys.executable, "-m", "urbanedge", *field.node_args(node.port, token, serial="SN-78",
                                                                                      wait=0), "--lang", "en"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:
            seen += line
            if line.startswith("[5/7]"):
                # Frozen while the laptop talks to the CA: the install of step 6 cannot finish
                # before the cable comes out, however slowly this test reads (a loaded CI box).
                node.proc.send_signal(signal.SIGSTOP)
            if line.startswith("[6/7]"):
                node.unplug()
                node.proc.send_signal(signal.SIGCONT)
                break
        seen += proc.stdout.read()
        assert proc.wait(60) == 1, seen
        assert _issued_for(field, NODE) == 1
        # Plugged in again (BOOT held, in case the files made it before the cable came out): the
        # re-run resumes with the certificate already issued.
        node.stop()
        node = _node(field, "usb4", requested=True, storage=node.storage)
        res = run(*field.node_args(node.port, token, serial="SN-78", wait=0), "--lang", "en")
        assert res.returncode == 0, res.stdout + res.stderr
        assert _issued_for(field, NODE) == 1
        installed = x509.load_der_x509_certificate((node.storage / "id" / "node.crt").read_bytes())
        # The spent token is refused for another blank node.
        other = _node(field, "usb5")
        try:
            res = run(*field.node_args(other.port, token, serial="SN-78", wait=0), "--lang", "en",
                      "--state-dir", str(field.tmp / "other-laptop"))
            assert res.returncode == 1 and "already used" in res.stdout, res.stdout
            assert not (other.storage / "id" / "node.crt").exists()
        finally:
            other.stop()
        assert _issued_for(field, NODE) == 1
        assert x509.load_der_x509_certificate((node.storage / "id" / "node.crt").read_bytes()) == installed
    finally:
        node.stop()


def test_technician_provisions_a_gateway_and_the_ioc_confirms_it(field: Field) -> None:
    port = free_port()
    sim = SimProc.start("flood-sensor", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--tick", "0.2")
    template = field.tmp / "site-canal-3.toml"
    template.write_text(f"""
[[buses]]
name = "canal-lan"
type = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = 1.0

[[buses.devices]]
id = "flood-canal-09"
profile = "flood-sensor"
unit = 1
interval = 1
""")
    gw = "gw-canal-3"
    config = field.tmp / "etc" / "agent.toml"
    from ota.repo import Repo

    releases = Repo.create(field.tmp / "releases", field.tmp / "release-keys")
    update = ["--update-url", "http://127.0.0.1:9/", "--update-root", str(releases.bootstrap_root_path)]
    args = ["provision", "gateway", *update, "--gateway-id", gw, "--serial", "RPI-0099", "--site", SITE,
            "--province", "79",
            "--template", str(template), "--config", str(config), "--pki-dir", str(field.tmp / "etc" / "pki"),
            "--broker", f"127.0.0.1:{field.broker.port}", "--ioc-cert", str(field.pki.ioc_recipient_cert),
            "--root", str(field.pki.root_cert), "--est", field.est_url,
            "--token", field.token(gw, "RPI-0099", profile="gateway"), "--wait", "60", "--lang", "en",
            "--inventory", str(field.tmp / "inventory.db"), "--state-dir", str(field.tmp / "state")]
    try:
        res = run(*args)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "[6/6]" in res.stdout, res.stdout
        key = field.tmp / "etc" / "pki" / "gateway.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        # Updates enabled, trusting exactly the release repository's root it was given.
        text = config.read_text()
        assert "[update]\nenabled = true\nrepository = \"http://127.0.0.1:9/\"" in text
        assert (config.parent / "update-root.json").read_bytes() == releases.bootstrap_root_path.read_bytes()
        wait_for(lambda: any(r["type"] == "telemetry" for r in field.ioc_records(gw)), 30, "the gateway's readings")
        # Again, on the same gateway: refused, nothing reissued.
        res = run(*args[:-10], "--token", field.token(gw, "RPI-0099", profile="gateway"), "--wait", "0",
                  "--lang", "en", "--inventory", str(field.tmp / "inventory.db"),
                  "--state-dir", str(field.tmp / "state"))
        assert res.returncode == 1 and "already" in res.stdout.lower(), res.stdout
    finally:
        pid_file = config.with_suffix(".pid")
        if pid_file.exists():
            with contextlib.suppress(OSError):
                os.kill(int(pid_file.read_text()), 15)
        sim.stop()


def test_replace_revokes_the_old_node_and_provisions_new_hardware_under_the_same_id(field: Field) -> None:
    old = _node(field, "usb6")
    try:
        res = run(*field.node_args(old.port, field.token(NODE, "SN-OLD"), serial="SN-OLD", wait=0), "--lang", "en")
        assert res.returncode == 0, res.stdout + res.stderr
        old_cert = x509.load_der_x509_certificate((old.storage / "id" / "node.crt").read_bytes())
    finally:
        old.stop()  # the old board is broken and taken down
    new = _node(field, "usb7")
    try:
        res = run("provision", "replace", *field.node_args(new.port, field.token(NODE, "SN-NEW"), serial="SN-NEW")[1:],
                  "--ca-dir", str(field.ca_dir), "--passphrase-file", str(field.passphrase_file), "--lang", "en")
        assert res.returncode == 0, res.stdout + res.stderr
        new_cert = x509.load_der_x509_certificate((new.storage / "id" / "node.crt").read_bytes())
        assert new_cert.serial_number != old_cert.serial_number
        crl = x509.load_pem_x509_crl(field.pki.crl.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(old_cert.serial_number) is not None
        assert crl.get_revoked_certificate_by_serial_number(new_cert.serial_number) is None
        exp = run("provision", "inventory", "export", "--format", "json",
                  "--inventory", str(field.tmp / "inventory.db"))
        actions = [r["action"] for r in json.loads(exp.stdout) if r["device_id"] == NODE and r["result"] == "ok"]
        assert actions == ["provision", "decommission", "replace"], actions
    finally:
        new.stop()


def test_a_broker_refusing_the_nodes_certificate_is_named_while_waiting(field: Field) -> None:
    from tests.support.tls_broker import tls_broker

    # A broker that trusts only its own CA for clients, not the province's.
    with tls_broker(field.tmp / "other-broker") as other:
        node = _node(field, "usb8")
        try:
            args = field.node_args(node.port, field.token(NODE, "SN-99"), serial="SN-99", wait=60)
            args[args.index("--broker") + 1] = f"127.0.0.1:{other.tls_port}"
            args[args.index("--broker-ca") + 1] = str(other.tls.ca_pem)
            res = run(*args, "--lang", "en")
            assert res.returncode == 1, res.stdout + res.stderr
            assert "refused the device's certificate" in res.stdout, res.stdout
            # Named from the node's console (not the IOC wait's no_reading after 60 s).
            assert "[8/8]" in res.stdout and "handshake refused" in res.stdout, res.stdout
            assert "No verified reading" not in res.stdout
        finally:
            node.stop()
