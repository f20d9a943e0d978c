"""Staging a release (ue/ota.py ``Updater.check``) under the real MicroPython unix port from a
real HTTP server over a repository made by the release tool (``urbanedge ota add-node-bundle``,
``node-manifest``): the whole app into the inactive slot, boot.json flipped to a trial; a
tampered file rejected with nothing flipped; a download cut mid-way resumed with Range; a reset
(SIGKILL) after a staged file resumed without fetching it again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ota.node_cli import add_node_bundle, write_node_manifest
from ota.node_manifest import public_key_hex
from tests.firmware.ota_http import RepoServer
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env, run_mp
from tests.support.procs import wait_for

NODE_ID = "n1"
VERSION = "1.2.0"
RUNTIME_HEAP = 100 * 1024
FOOTPRINT = "import gc\ngc.collect()\nb = gc.mem_alloc()\nfrom ue import ota\ngc.collect()\nprint(gc.mem_alloc() - b)\n"

CHECK_SCRIPT = """
import sys, json, asyncio
from ue import ota
with open(sys.argv[1]) as f:
    cfg = json.load(f)

def emit(body):
    print("EVENT " + json.dumps(body))

u = ota.Updater(cfg["ota"], cfg["node_id"], "esp32", cfg["storage"], "factory", emit, print, "0.3.0")
print("RESULT", asyncio.run(u.check(cfg["now"])))
"""


def _heap() -> str:
    code = int(run_mp(FOOTPRINT, heap="1m").strip())
    return f"{(RUNTIME_HEAP + code + 1023) // 1024}k"


@dataclass
class Setup:
    tmp: Path
    repo: Path
    storage: Path
    server: RepoServer
    key_pem: Path
    cfg_path: Path

    def publish(self, counter: int = 3, firmware: Path = FIRMWARE, version: str = VERSION) -> None:
        add_node_bundle(self.repo, firmware, version, "esp32")
        write_node_manifest(self.repo, self.key_pem, NODE_ID, "esp32", version, counter)

    def script(self) -> Path:
        path = self.tmp / "check.py"
        path.write_text(CHECK_SCRIPT)
        return path

    def run_check(self) -> tuple[str, list[dict[str, Any]], str]:
        proc = subprocess.run([str(micropython_exe()), "-X", f"heapsize={_heap()}", str(self.script()),
                               str(self.cfg_path)], env=mp_env(), capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return _parse(proc.stdout)

    def boot(self) -> dict[str, Any]:
        boot: dict[str, Any] = json.loads((self.storage / "app" / "boot.json").read_text())
        return boot


def _parse(out: str) -> tuple[str, list[dict[str, Any]], str]:
    events = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("EVENT ")]
    result = [line.split()[1] for line in out.splitlines() if line.startswith("RESULT ")]
    return (result[0] if result else ""), events, out


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "node-release.key.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    repo = tmp_path / "repo"
    storage = tmp_path / "node"
    storage.mkdir()
    with RepoServer(repo) as server:
        cfg = {"node_id": NODE_ID, "storage": str(storage), "now": int(time.time()),
               "ota": {"url": server.url, "keys": [public_key_hex(key)], "check_s": 3600, "trial_s": 60}}
        cfg_path = tmp_path / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        yield Setup(tmp_path, repo, storage, server, pem, cfg_path)


def _security(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "security"]


def _states(events: list[dict[str, Any]]) -> list[str]:
    return [e["state"] for e in events if e.get("event") == "ota_status"]


def _slot_matches_bundle(setup: Setup, slot: str) -> None:
    bundle = setup.repo / "node" / "esp32" / VERSION / "ue"
    staged = setup.storage / "app" / slot / "ue"
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in bundle.iterdir())
    for p in bundle.iterdir():
        assert (staged / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_good_release_is_staged_whole_and_flipped_to_a_trial(setup: Setup) -> None:
    result, events, out = setup.run_check()
    assert result == "none" and "event=ota_no_manifest" in out  # 404: nothing to do
    assert not (setup.storage / "app" / "boot.json").exists()
    setup.publish(counter=3)
    result, events, out = setup.run_check()
    assert result == "restart", out
    assert _states(events) == ["queued", "downloading", "installing", "restarting"]
    assert all(e["release"] == VERSION and e["counter"] == 3 for e in events)
    _slot_matches_bundle(setup, "a")
    boot = setup.boot()
    assert boot["trial"] == {"slot": "a", "tries": 0, "version": VERSION, "counter": 3}
    assert boot["committed"] == "factory" and boot["counter"] == 0
    assert not list((setup.storage / "app" / "a" / "ue").glob("*.part"))


def test_a_tampered_file_is_rejected_and_nothing_flips(setup: Setup) -> None:
    setup.publish(counter=3)
    target = setup.repo / "node" / "esp32" / VERSION / "ue" / "sensors.py"
    target.write_bytes(target.read_bytes().replace(b"def ", b"def  ", 1))  # same tool, changed after signing
    result, events, out = setup.run_check()
    assert result == "rejected", out
    rejected = [e for e in events if e.get("state") == "rejected"]
    assert len(rejected) == 1 and rejected[0]["reason"].startswith("hash") and "sensors.py" in rejected[0]["reason"]
    # A tampered release is also a security event, in the gateway's words (for the SOC's topic).
    (sec,) = _security(events)
    assert (sec["category"], sec["reason"], sec["release"]) == ("update_rejected", "tampered", VERSION)
    assert "sensors.py" in sec["detail"]
    assert not (setup.storage / "app" / "boot.json").exists()  # nothing flipped
    assert not (setup.storage / "app" / "a" / "ue" / "sensors.py").exists()
    assert not (setup.storage / "app" / "a" / "ue" / "sensors.py.part").exists()


def test_a_forged_manifest_is_a_security_event_one_for_another_node_is_not(setup: Setup) -> None:
    forger = setup.tmp / "forger.key.pem"
    forger.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    add_node_bundle(setup.repo, FIRMWARE, VERSION, "esp32")
    write_node_manifest(setup.repo, forger, NODE_ID, "esp32", VERSION, 3)
    result, events, out = setup.run_check()
    assert result == "rejected", out
    (sec,) = _security(events)
    assert (sec["category"], sec["reason"]) == ("update_rejected", "bad-signature")
    assert "does not trust" in sec["detail"]
    # Signed by the right key but for another node: an operations problem, not an attack.
    write_node_manifest(setup.repo, setup.key_pem, "n2", "esp32", VERSION, 4)
    (setup.repo / "nodes" / "n2.manifest").rename(setup.repo / "nodes" / f"{NODE_ID}.manifest")
    result, events, out = setup.run_check()
    assert result == "rejected" and _states(events) == ["rejected"], out
    assert events[0]["reason"].startswith("node") and _security(events) == []


def test_a_download_cut_midway_resumes_with_range(setup: Setup) -> None:
    setup.publish(counter=3)
    path = f"node/esp32/{VERSION}/ue/mqtt.py"
    size = (setup.repo / path).stat().st_size
    setup.server.cut(path, 5000)
    result, _, out = setup.run_check()
    assert result == "restart", out
    ranges = setup.server.requested(path)
    assert ranges == [f"bytes=0-{size - 1}", f"bytes=5000-{size - 1}"], ranges
    assert "event=ota_download_short" in out
    _slot_matches_bundle(setup, "a")


def test_a_reset_after_a_staged_file_keeps_it_and_resumes_a_partial_one(setup: Setup) -> None:
    setup.publish(counter=3)
    bundle = setup.repo / "node" / "esp32" / VERSION / "ue"
    names = sorted(p.name for p in bundle.iterdir())
    held = f"node/esp32/{VERSION}/ue/{names[3]}"
    setup.server.hold(held)
    log = setup.tmp / "killed.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(micropython_exe()), "-X", f"heapsize={_heap()}", str(setup.script()),
                                 str(setup.cfg_path)], env=mp_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(setup.server.requested(held)) == 1, 30, "the download of the held file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    setup.server.release(held)
    staged = setup.storage / "app" / "a" / "ue"
    kept = [n for n in names[:3] if (bundle / n).stat().st_size > 0]
    assert kept and all((staged / n).read_bytes() == (bundle / n).read_bytes() for n in kept)
    assert not (setup.storage / "app" / "boot.json").exists()  # killed before the flip: still factory
    # A reset mid-file too: half of the next file left as .part
    partial = names[4]
    data = (bundle / partial).read_bytes()
    (staged / (partial + ".part")).write_bytes(data[: len(data) // 2])
    result, _, out = setup.run_check()
    assert result == "restart", out
    for n in kept:
        assert len(setup.server.requested(f"node/esp32/{VERSION}/ue/{n}")) == 1, n  # not fetched again
    assert setup.server.requested(f"node/esp32/{VERSION}/ue/{partial}") == [f"bytes={len(data) // 2}-{len(data) - 1}"]
    _slot_matches_bundle(setup, "a")
    assert hashlib.sha256((staged / partial).read_bytes()).digest() == hashlib.sha256(data).digest()
