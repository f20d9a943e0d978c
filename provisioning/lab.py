"""``urbanedge provision lab``: the operator's side and a blank node on this machine, to learn
(and test) field provisioning without hardware.

It starts, in DIR: a throw-away provincial PKI; the EST enrolment service (HTTPS); Mosquitto
with a plain listener (IOC, installers) and a mutual-TLS listener (devices must present a
provincial certificate); the IOC receiver, publishing signed receipts and reloading the CRL;
a flood sensor simulator on a virtual RS-485 cable; and a blank node (the firmware under the
MicroPython unix port) whose console is on a virtual "USB cable" ``DIR/usb0``. It writes
``DIR/lab.env`` (shell variables for the README's walkthrough), prints the commands, and
runs until Ctrl-C (or ``--duration``). Needs mosquitto, socat and the ``micropython`` binary
(``scripts/field-lab.sh`` installs them).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
NODE_ID, NODE_SERIAL, SITE = "flood-node-01", "SN-0001", "canal-7"


class LabError(Exception):
    pass


def add_lab_parser(sub: Any) -> None:
    p = sub.add_parser("lab", help="practice rig on this machine: PKI, enrolment service, broker, IOC, "
                                   "a simulated sensor and a blank node on a virtual USB cable")
    p.add_argument("--dir", type=Path, default=Path("field-lab"), help="where everything goes (emptied first)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--firmware", type=Path, default=REPO / "firmware", help="the node firmware folder")
    p.set_defaults(func=cmd_lab)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise LabError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _exe(name: str, *extra: str) -> str:
    found = shutil.which(name) or next((p for p in extra if Path(p).exists()), None)
    if found is None:
        raise LabError(f"{name} is not installed: run ./scripts/field-lab.sh, which installs it")
    return found


class Lab:
    def __init__(self, dir: Path, firmware: Path) -> None:
        self.dir, self.firmware = dir.resolve(), firmware.resolve()
        self.procs: list[subprocess.Popen[Any]] = []
        self.env: dict[str, str] = {}
        self.pki: Any = None
        self._stopping = threading.Event()

    def _spawn(self, argv: list[str], log: str, **kw: Any) -> subprocess.Popen[Any]:
        out = open(self.dir / log, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out, **kw)
        out.close()
        self.procs.append(proc)
        return proc

    def _keep_node_running(self) -> None:
        # The board's reset circuit: a node that exits (a reboot after an update, a crash the
        # watchdog would reset) starts again, as a board does.
        while not self._stopping.is_set():
            fd = os.open(self._usb_node, os.O_RDWR | os.O_NOCTTY)
            try:
                proc = self._spawn(self._node_argv, "node.log", stdin=fd, stdout=fd, env=self._node_env)
            finally:
                os.close(fd)
            code = proc.wait()
            if not self._stopping.is_set():
                with open(self.dir / "node.log", "a") as log:
                    log.write(f"lab: node exited with code {code}; resetting it\n")
                self._stopping.wait(1.0)

    def stop(self) -> None:
        self._stopping.set()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def start(self) -> None:
        from pki.throwaway import build_throwaway_pki

        mosquitto = _exe("mosquitto", "/usr/sbin/mosquitto")
        socat = _exe("socat")
        micropython = Path(sys.executable).parent / "micropython"
        if not micropython.exists():
            micropython = Path(_exe("micropython"))
        if not (self.firmware / "main.py").exists():
            raise LabError(f"{self.firmware}/main.py not found: give --firmware")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        pki = build_throwaway_pki(self.dir / "pki", [], province="Lab")
        self.pki = pki
        passphrase_file = pki.dir / "ca-passphrase"
        ca_dir = pki.issuing_cert.parent

        # Broker: its server certificate from the provincial issuing CA, so devices trust the root.
        server_chain, server_key = self._broker_cert(ca_dir, passphrase_file.read_bytes().strip())
        clients_ca = self.dir / "broker" / "clients-ca.pem"
        clients_ca.write_bytes(pki.issuing_cert.read_bytes() + pki.root_cert.read_bytes())
        plain, tls = _free_port(), _free_port()
        conf = self.dir / "broker" / "mosquitto.conf"
        conf.write_text(
            f"listener {plain} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"listener {tls} 127.0.0.1\ncafile {clients_ca}\ncertfile {server_chain}\nkeyfile {server_key}\n"
            "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
        self._spawn([mosquitto, "-c", str(conf)], "broker/mosquitto.log")
        _wait(lambda: _port_open(plain) and _port_open(tls), 15, "mosquitto")

        py = sys.executable
        est = self._spawn([py, "-m", "urbanedge", "pki", "serve", "--ca-dir", str(ca_dir), "--listen", "127.0.0.1:0",
                           "--root", str(pki.root_cert), "--passphrase-file", str(passphrase_file)],
                          "est.log", stdout=subprocess.PIPE, text=True)
        assert est.stdout is not None
        m = re.search(r"url=(\S+)", _readline(est.stdout, 30, "the enrolment service"))
        if m is None:
            raise LabError("the enrolment service did not print its URL (see est.log)")

        chain = self.dir / "pki" / "ioc" / "command-chain.pem"
        chain.write_bytes(pki.ioc_command_cert.read_bytes() + pki.issuing_cert.read_bytes())
        self._spawn([py, "-m", "urbanedge", "ioc", "receive", "--broker", f"127.0.0.1:{plain}",
                     "--root", str(pki.root_cert), "--key", str(pki.ioc_recipient_key),
                     "--cert", str(pki.ioc_recipient_cert), "--crl", str(pki.crl),
                     "--store", f"sqlite:{self.dir / 'ioc.db'}", "--out", str(self.dir / "ioc-readings.jsonl"),
                     "--no-share", "--client-id", "ioc-lab", "--receipt-key", str(pki.ioc_command_key),
                     "--receipt-cert", str(chain)], "ioc.log")
        _wait(lambda: "event=ioc_connected" in _text(self.dir / "ioc.log"), 30, "the IOC receiver")

        # The sensor on its RS-485 cable, and the node on its USB cable.
        rs485_sim, rs485_node = self.dir / "rs485-sensor", self.dir / "rs485"
        self._spawn([socat, f"pty,raw,echo=0,link={rs485_sim}", f"pty,raw,echo=0,link={rs485_node}"], "socat.log")
        usb_node, usb_laptop = self.dir / "usb0-node", self.dir / "usb0"
        self._spawn([socat, f"pty,raw,echo=0,link={usb_node}", f"pty,raw,echo=0,link={usb_laptop}"], "socat.log")
        _wait(lambda: all(p.exists() for p in (rs485_sim, rs485_node, usb_node, usb_laptop)), 10, "socat")
        self._spawn([py, "-m", "urbanedge", "sim", "flood-sensor", "--serial", str(rs485_sim), "--units", "1",
                     "--tick", "1"], "sim.log")
        flash = self.dir / "node-flash"
        flash.mkdir()
        self._node_argv = [str(micropython), "-X", "heapsize=512k", str(self.firmware / "main.py")]
        # Logs to node.log: nobody reads the "USB cable" between provisioning runs.
        self._node_env = {**os.environ, "MICROPYPATH": f".frozen:{self.firmware}", "UE_STORAGE": str(flash),
                          "UE_LOG": "stderr"}
        self._node_env.pop("UE_PROVISION", None)
        self._usb_node = usb_node
        threading.Thread(target=self._keep_node_running, name="node-reset", daemon=True).start()

        from pki.enroll.tokens import TokenStore

        token = TokenStore.for_ca(ca_dir).create(NODE_ID, NODE_SERIAL, SITE, "node", timedelta(hours=24),
                                                 datetime.now(UTC), technician="lab")
        self.env = {
            "UE_LAB": str(self.dir), "UE_LAB_USB": str(usb_laptop), "UE_LAB_RS485": str(rs485_node),
            "UE_LAB_BROKER": f"127.0.0.1:{plain}", "UE_LAB_BROKER_TLS": f"127.0.0.1:{tls}",
            "UE_LAB_EST": m.group(1), "UE_LAB_TOKEN": token, "UE_LAB_ROOT": str(pki.root_cert),
            "UE_LAB_IOC_CERT": str(pki.ioc_recipient_cert), "UE_LAB_CA": str(ca_dir),
            "UE_LAB_CA_PASS": str(passphrase_file), "UE_LAB_NODE": NODE_ID, "UE_LAB_SERIAL": NODE_SERIAL,
            "UE_LAB_SITE": SITE,
        }
        # Lab pace: a batch every 2 s instead of every minute, so each step shows at once.
        node_json = self.dir / "node-lab.json"
        node_json.write_text('{"batch": {"max_records": 4, "max_wait_s": 2}, '
                             '"broker": {"keepalive": 20, "backoff_min_ms": 500, "backoff_max_ms": 5000}}\n')
        self.env["UE_LAB_NODE_JSON"] = str(node_json)
        (self.dir / "lab.env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items()))

    def _broker_cert(self, ca_dir: Path, passphrase: bytes) -> tuple[Path, Path]:
        from cryptography.hazmat.primitives import serialization

        from pki.castore import CaDir
        from pki.certs import make_csr
        from pki.keys import cert_pem, generate_key, write_new_file
        from pki.profiles import EST_SERVER, SubjectFields

        folder = self.dir / "broker"
        folder.mkdir()
        key = generate_key("p256")
        ca = CaDir.open(ca_dir).unlock(passphrase)
        cert = ca.issue(make_csr(key, SubjectFields(common_name="127.0.0.1")), EST_SERVER, now=datetime.now(UTC),
                        csr_name="broker")
        chain, key_file = folder / "server-chain.pem", folder / "server.key"
        chain.write_bytes(cert_pem(cert, ca.cert))
        write_new_file(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), 0o600)
        return chain, key_file


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _readline(stream: IO[str], timeout: float, what: str) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise LabError(f"{what} did not start within {timeout:.0f} s")
    return box[0]


def cmd_lab(args: argparse.Namespace) -> int:
    return run_lab(Lab(args.dir, args.firmware), args.duration, "field lab", "Provisioning")


def run_lab(lab: Lab, duration: float | None, name: str, section: str) -> int:
    """Start ``lab``, print its variables, run until Ctrl-C/SIGTERM or ``duration``, stop it."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        lab.start()
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        lab.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{name} ready in {lab.dir} (variables in {lab.dir / 'lab.env'}):", flush=True)
    for k, v in lab.env.items():
        print(f"  {k}={v}")
    print(f"In another terminal: . {lab.dir / 'lab.env'} and follow README.md, \"{section}\". Ctrl-C stops.",
          flush=True)
    try:
        stop.wait(duration)
    finally:
        lab.stop()
    return 0
