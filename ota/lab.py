"""``urbanedge ota lab``: a release team's practice rig: a gateway and a node that take updates.

On top of the field-provisioning lab (PKI, enrolment service, Mosquitto, the IOC receiver, a
flood sensor on a virtual RS-485 cable and a node under the MicroPython unix port) it:

- makes a TUF release repository (``DIR/repo``, keys in ``DIR/keys``) and serves it over HTTP;
- provisions the node (``urbanedge provision node``, as a technician would) with the
  repository's URL and the node-release public key in its configuration;
- starts a gateway (``urbanedge launch --supervise``, the factory release) polling a simulated
  streetlight, with updates enabled against the repository;
- keeps two known-bad builds for practising a failed release: ``DIR/broken/gateway`` (an agent
  that dies at start) and ``DIR/broken/firmware`` (a node app that never gets its first
  reading acknowledged).

It writes ``DIR/lab.env`` for the README's walkthrough ("Updates") and runs until Ctrl-C
or ``--duration``. ``scripts/ota-lab.sh`` installs what it needs and starts it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from provisioning.lab import REPO, Lab, LabError, _free_port, _port_open, _text, _wait, run_lab

GATEWAY_ID = "gw-lab"
PACKAGES = ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "config")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lab", help="practice rig: a release repository, a gateway and a node that take updates")
    p.add_argument("--dir", type=Path, default=Path("ota-lab"), help="where everything goes (emptied first)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--firmware", type=Path, default=REPO / "firmware", help="the node firmware folder")
    p.set_defaults(func=cmd_lab)


class OtaLab(Lab):
    def start(self) -> None:
        super().start()
        from cryptography.hazmat.primitives import serialization

        from ota.repo import Repo

        py = sys.executable
        repo, keys = self.dir / "repo", self.dir / "keys"
        Repo.create(repo, keys)
        port = _free_port()
        self._spawn([py, "-m", "urbanedge", "ota", "serve", "--repo", str(repo), "--port", str(port)],
                    "repo-server.log")
        _wait(lambda: _port_open(port), 15, "the repository server")
        url = f"http://127.0.0.1:{port}/"
        pub = serialization.load_pem_public_key((repo / "node-release.pub.pem").read_bytes())
        node_key_hex = pub.public_bytes(serialization.Encoding.X962,  # type: ignore[union-attr]
                                        serialization.PublicFormat.UncompressedPoint).hex()
        self._provision_node(url, node_key_hex)
        self._start_gateway(url, repo)
        self._broken_builds()
        self.env.update({
            "UE_OTA_REPO": str(repo), "UE_OTA_KEYS": str(keys), "UE_OTA_URL": url,
            "UE_OTA_SOURCE": str(REPO), "UE_OTA_FIRMWARE": str(self.firmware),
            "UE_LAB_GATEWAY": GATEWAY_ID, "UE_LAB_STORE": f"sqlite:{self.dir / 'ioc.db'}",
            "UE_OTA_BROKEN_GATEWAY": str(self.dir / "broken" / "gateway"),
            "UE_OTA_BROKEN_FIRMWARE": str(self.dir / "broken" / "firmware"),
        })
        (self.dir / "lab.env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items()))

    def _provision_node(self, url: str, node_key_hex: str) -> None:
        e = self.env
        extra = json.loads(Path(e["UE_LAB_NODE_JSON"]).read_text())
        # Lab pace: look for updates every 10 s, a minute to prove a new release.
        extra["ota"] = {"url": url, "keys": [node_key_hex], "check_s": 10, "trial_s": 60}
        node_json = self.dir / "node-ota.json"
        node_json.write_text(json.dumps(extra))
        argv = [sys.executable, "-m", "urbanedge", "provision", "node", "--lang", "en",
                "--port", e["UE_LAB_USB"], "--node-id", e["UE_LAB_NODE"], "--serial", e["UE_LAB_SERIAL"],
                "--site", e["UE_LAB_SITE"], "--device", "flood-canal-07:flood-sensor:1:5",
                "--bus-port", e["UE_LAB_RS485"], "--broker", e["UE_LAB_BROKER_TLS"], "--broker-ca", e["UE_LAB_ROOT"],
                "--ioc-cert", e["UE_LAB_IOC_CERT"], "--root", e["UE_LAB_ROOT"], "--est", e["UE_LAB_EST"],
                "--token", e["UE_LAB_TOKEN"], "--watch-broker", e["UE_LAB_BROKER"], "--node-json", str(node_json)]
        # The lab's own inventory, not the technician's.
        env = {**os.environ, "XDG_DATA_HOME": str(self.dir / "technician")}
        with open(self.dir / "provision.log", "ab") as log:
            res = subprocess.run(argv, stdout=log, stderr=log, timeout=300, env=env, check=False)
        if res.returncode != 0:
            raise LabError(f"provisioning the node failed (exit {res.returncode}): see {self.dir / 'provision.log'}")

    def _start_gateway(self, url: str, repo: Path) -> None:
        sim_port = _free_port()
        self._spawn([sys.executable, "-m", "urbanedge", "sim", "streetlight", "--tcp", f"127.0.0.1:{sim_port}",
                     "--units", "1"], "streetlight-sim.log")
        _wait(lambda: _port_open(sim_port), 15, "the streetlight simulator")
        creds = self.pki.issue_device(GATEWAY_ID)
        gw = self.dir / "gateway"
        gw.mkdir()
        host, port = self.env["UE_LAB_BROKER"].split(":")
        cfg = gw / "agent.toml"
        cfg.write_text(f"""# The lab gateway: factory release 0.1.0, updates from the lab repository.
[identity]
gateway_id = "{GATEWAY_ID}"
site = "{self.env["UE_LAB_SITE"]}"
province = "Lab"

[broker]
host = "{host}"
port = {port}
reconnect_max = 5.0

[buffer]
path = "outbox.db"

[seal]
key = "{creds.key}"
cert = "{creds.chain}"
recipient = "{self.pki.ioc_recipient_cert}"

[update]
enabled = true
repository = "{url}"
root = "{repo / "metadata" / "1.root.json"}"
state_dir = "update"
slots = "slots"
check_interval = 10
health_deadline = 30
max_tries = 2

[[buses]]
name = "lan"
type = "modbus-tcp"
host = "127.0.0.1"
port = {sim_port}
[[buses.devices]]
id = "streetlight-1"
profile = "streetlight"
unit = 1
interval = 5
""")
        self._spawn([sys.executable, "-m", "urbanedge", "launch", "-c", str(cfg), "--supervise"], "gateway/gateway.log")
        _wait(lambda: "event=uplink_connected" in _text(gw / "gateway.log"), 60, "the gateway")

    def _broken_builds(self) -> None:
        broken = self.dir / "broken"
        src = broken / "gateway"
        for pkg in PACKAGES:
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
        app = src / "agent" / "app.py"
        fault = "raise SystemExit('lab: a release that dies at start')\n"
        app.write_text(app.read_text().replace("log = logging.getLogger", fault + "log = logging.getLogger", 1))
        fw = broken / "firmware"
        shutil.copytree(self.firmware, fw, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
        mqtt = fw / "ue" / "mqtt.py"
        # A node release that connects to a broker port nobody listens on: it runs, polls,
        # buffers, but no reading is ever acknowledged, so its self-test fails.
        text = mqtt.read_text()
        marker = "        self.port = port\n"
        if marker not in text:
            raise LabError("firmware/ue/mqtt.py changed: update the lab's broken build")
        mqtt.write_text(text.replace(marker, "        self.port = 1  # lab: the broken release\n", 1))


def cmd_lab(args: argparse.Namespace) -> int:
    return run_lab(OtaLab(args.dir, args.firmware), args.duration, "update lab", "Updates")
