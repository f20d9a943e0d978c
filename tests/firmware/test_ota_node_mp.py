"""Node OTA end to end: the real firmware (loader main.py + app) under the real MicroPython unix
port, provisioned as in test_node_e2e_mp.py (pymodbus sensor on a pty, Mosquitto with client
certificates, ``urbanedge ioc receive``), updated from a real HTTP server over a repository made
by ``urbanedge ota add-node-bundle`` / ``node-manifest``.

The tests are the node's reset circuit: a ``Supervisor`` starts micropython again when it exits
with 75 (ue/ota.py RESET, what machine.reset() is on the ESP32); a SIGKILL is a power cut, after
which the test powers the node on again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ota.node_cli import add_node_bundle, write_node_manifest
from ota.node_manifest import public_key_hex
from tests.firmware.ota_http import RepoServer
from tests.firmware.test_node_e2e_mp import (
    NODE_ID,
    Rig,
    provision,
    rig,  # noqa: F401 - the fixture ota_rig builds on
)
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env, run_mp
from tests.support.procs import wait_for

RUNTIME_HEAP = 100 * 1024
RESET = 75
# The code the updating node loads (app, node, ota, http, ...) is heap on the unix port; the
# data must fit in 100 KB as in test_node_e2e_mp.py.
FOOTPRINT = """
import gc
gc.collect()
base = gc.mem_alloc()
import asyncio, json
from ue import app, node, identity, hal, ota, http
gc.collect()
print(gc.mem_alloc() - base)
"""
_HEAP: str | None = None


def _heap() -> str:
    global _HEAP
    if _HEAP is None:
        code = int(run_mp(FOOTPRINT, heap="1m").strip())
        _HEAP = f"{(RUNTIME_HEAP + code + 1023) // 1024}k"
    return _HEAP


class Supervisor:
    """Runs firmware/main.py; restarts it on exit code 75 (and on SIGKILL by the unix watchdog
    stand-in, ue/hal.py, when ``wdt_ms`` turns it on) unless ``restart`` is off or the test cut
    the power."""

    def __init__(self, rg: Rig, wdt_ms: int | None = None) -> None:
        self.rig = rg
        self.wdt_ms = wdt_ms
        self.restart = True
        self.exits: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.rig.node_log, "ab") as out:
            return subprocess.Popen(
                [str(micropython_exe()), "-X", f"heapsize={_heap()}", str(FIRMWARE / "main.py")],
                env={**mp_env(), "UE_STORAGE": str(self.rig.storage),
                     **({"UE_WDT": str(self.wdt_ms)} if self.wdt_ms else {})}, stdout=out, stderr=out)

    def power_on(self) -> None:
        assert self._thread is None or not self._thread.is_alive()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                self.proc = self._spawn()
                proc = self.proc
            rc = proc.wait()
            with self._lock:
                self.exits.append(rc)
                if rc not in (RESET, -signal.SIGKILL) or not self.restart or self._stopped:
                    return

    def wait_down(self, timeout: float = 60) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the node is still running"

    def power_cut(self) -> None:
        with self._lock:
            self._stopped = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        if self._thread is not None:
            self._thread.join(10)


@pytest.fixture
def ota_rig(rig: Rig) -> Iterator[tuple[Rig, RepoServer, Path, Supervisor]]:  # noqa: F811 - pytest's fixture by name
    key = ec.generate_private_key(ec.SECP256R1())
    pem = rig.tmp / "node-release.key.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    provision(rig, rig.tls, interval_s=0.3, max_records=4, max_wait_s=0.3)
    cfg_path = rig.storage / "node.json"
    cfg = json.loads(cfg_path.read_text())
    repo = rig.tmp / "repo"
    repo.mkdir()
    with RepoServer(repo) as server:
        cfg["ota"] = {"url": server.url, "keys": [public_key_hex(key)], "check_s": 1, "trial_s": 4}
        cfg_path.write_text(json.dumps(cfg))
        sup = Supervisor(rig)
        try:
            yield rig, server, pem, sup
        finally:
            sup.power_cut()


def _release(rg: Rig, repo: Path, pem: Path, version: str, counter: int, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of firmware/ue with text replaced (file -> (old, new)), published for the node."""
    src = rg.tmp / f"fw-{version}"
    shutil.copytree(FIRMWARE / "ue", src / "ue", ignore=shutil.ignore_patterns("__pycache__"))
    for name, (old, new) in edits.items():
        text = (src / "ue" / name).read_text()
        assert old in text, (name, old)
        (src / "ue" / name).write_text(text.replace(old, new, 1))
    add_node_bundle(repo, src, version, "esp32")
    write_node_manifest(repo, pem, NODE_ID, "esp32", version, counter)
    return repo / "node" / "esp32" / version / "ue"


def _boot(rg: Rig) -> dict[str, Any]:
    boot: dict[str, Any] = json.loads((rg.storage / "app" / "boot.json").read_text())
    return boot


def _ota(rg: Rig) -> list[dict[str, Any]]:
    return [r for r in rg.ioc_lines() if r["type"] == "event" and r.get("event") == "ota_status"]


def _states(rg: Rig, counter: int) -> list[str]:
    return [r["state"] for r in _ota(rg) if r.get("counter") == counter]


def _telemetry_after(rg: Rig, n: int) -> Any:
    start = len([r for r in rg.ioc_lines() if r["type"] == "telemetry"])
    return lambda: len([r for r in rg.ioc_lines() if r["type"] == "telemetry"]) >= start + n


def test_update_survives_a_power_cut_at_every_step_and_commits(
        ota_rig: tuple[Rig, RepoServer, Path, Supervisor]) -> None:
    rg, server, pem, sup = ota_rig
    rg.start_receiver()
    sup.power_on()
    wait_for(lambda: rg.log_count("ota_no_manifest") >= 1, 60, "the node's first check (404)")
    wait_for(lambda: any(r.get("event") == "sbom" for r in rg.ioc_lines()), 60, "the factory SBOM at the IOC")

    # A manifest signed by a key the node does not trust: rejected, reported, the node goes on.
    other = rg.tmp / "other.key.pem"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _release(rg, server.root, other, "6.6.6", 66, {})
    wait_for(lambda: "rejected" in _states(rg, 0), 60, "the forged release rejected at the IOC")
    assert next(r["reason"] for r in _ota(rg) if r["state"] == "rejected").startswith("key")
    assert not (rg.storage / "app" / "boot.json").exists()

    # The real release; one file held so the power cut comes with part of the slot staged.
    bundle = _release(rg, server.root, pem, "1.2.0", 3, {"node.py": ('VERSION = "0.3.0"', 'VERSION = "1.2.0"')})
    names = sorted(p.name for p in bundle.iterdir())
    held = f"node/esp32/1.2.0/ue/{names[6]}"
    server.hold(held)
    wait_for(lambda: len(server.requested(held)) >= 1, 60, "staging reached the held file")
    sup.power_cut()  # 1: after some staged files
    server.release(held)
    staged_before = {p.name for p in (rg.storage / "app" / "a" / "ue").glob("*.py")}
    assert staged_before and not (rg.storage / "app" / "boot.json").exists()

    # 2: the flip. The reset after boot.json is written is where the power goes (no restart).
    sup.restart = False
    sup.power_on()
    sup.wait_down(120)
    assert sup.exits[-1] == RESET
    boot = _boot(rg)
    assert boot["trial"] == {"slot": "a", "tries": 0, "version": "1.2.0", "counter": 3}
    assert boot["committed"] == "factory"
    kept = rg.log_count("ota_file_kept")
    assert kept == len(staged_before)  # staged before the cut: checked, not fetched again

    # 3: power cut in the trial, before the commit (as soon as the loader starts the new slot).
    sup.restart = True
    trials = rg.log_count("ota_trial_boot")
    sup.power_on()
    wait_for(lambda: rg.log_count("ota_trial_boot") > trials, 30, "the trial boot")
    sup.power_cut()
    assert _boot(rg)["trial"]["tries"] == 1 and _boot(rg)["committed"] == "factory"

    # 4: the second trial boot passes the self-test and commits; power cut right after.
    sup.power_on()
    wait_for(lambda: "state=success" in rg.log_text(), 60, "the commit")
    sup.power_cut()
    boot = _boot(rg)
    assert boot["committed"] == "a" and boot["active"] == "a" and boot["counter"] == 3 and boot["trial"] is None
    assert boot["version"] == "1.2.0"

    # Powered on again: the new release runs, is "already installed", sends readings.
    sup.power_on()
    wait_for(_telemetry_after(rg, 5), 60, "readings from the updated node")
    wait_for(lambda: "success" in _states(rg, 3), 60, "the success status at the IOC")
    states = _states(rg, 3)
    for s in ("queued", "downloading", "installing", "restarting", "verifying", "success"):
        assert s in states, states
    assert "rolled-back" not in states and "failed" not in states
    started = [r for r in rg.ioc_lines() if r.get("event") == "agent_started"]
    assert started[-1]["version"] == "1.2.0"
    sboms = [r for r in rg.ioc_lines() if r.get("event") == "sbom" and r.get("release") == "1.2.0"]
    assert sboms, [r for r in rg.ioc_lines() if r.get("event") == "sbom"]
    want = {f"ue/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in bundle.iterdir()}
    assert sboms[-1]["files"] == want  # what runs is exactly the release, no mix
    assert sboms[-1]["mp"].count(".") == 2
    staged = rg.storage / "app" / "a" / "ue"
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in staged.iterdir()} == \
        {k[3:]: v for k, v in want.items()}
    assert rg.ioc_rejections() == ""


def test_broken_releases_fall_back_and_the_node_keeps_reporting(
        ota_rig: tuple[Rig, RepoServer, Path, Supervisor]) -> None:
    rg, server, pem, sup = ota_rig
    rg.start_receiver()
    sup.power_on()
    wait_for(lambda: rg.log_count("ota_no_manifest") >= 1, 60, "the node's first check (404)")

    # An app whose import raises: two trial boots crash, the third boot falls back to factory.
    _release(rg, server.root, pem, "1.3.0", 4,
             {"node.py": ("import asyncio\n", "import asyncio\nraise ImportError('broken release')\n")})
    wait_for(lambda: "rolled-back" in _states(rg, 4), 120, "rolled-back for the crashing release")
    rb = next(r for r in _ota(rg) if r["state"] == "rolled-back" and r["counter"] == 4)
    assert rb["release"] == "1.3.0" and "no commit after 2 boots" in rb["reason"]
    assert rg.log_count("ota_trial_boot") == 2 and "broken release" in rg.log_text()
    boot = _boot(rg)
    assert boot["committed"] == "factory" and boot["trial"] is None and boot["bad"] == 4
    wait_for(_telemetry_after(rg, 3), 60, "readings after the fallback")

    # A release whose uplink never gets a PUBACK: its self-test times out (trial_s), it says
    # so, and the loader falls back.
    _release(rg, server.root, pem, "1.4.0", 5, {"node.py": (
        "await self.client.publish(self.topics[ch], sealed)",
        "await asyncio.Event().wait()  # never acknowledged")})
    wait_for(lambda: "rolled-back" in _states(rg, 5), 120, "rolled-back for the release without PUBACKs")
    failed = [r for r in _ota(rg) if r["state"] == "failed" and r["counter"] == 5]
    assert failed and "no sealed batch acknowledged" in failed[0]["reason"]
    boot = _boot(rg)
    assert boot["committed"] == "factory" and boot["trial"] is None and boot["counter"] == 0
    wait_for(_telemetry_after(rg, 3), 60, "readings after the second fallback")
    assert "success" not in _states(rg, 4) + _states(rg, 5)
    # the bad releases are not tried again at every check
    trial_boots = rg.log_count("ota_trial_boot")
    checks = len(server.requested(f"nodes/{NODE_ID}.manifest"))
    wait_for(lambda: len(server.requested(f"nodes/{NODE_ID}.manifest")) >= checks + 3, 30, "three more checks")
    assert rg.log_count("ota_trial_boot") == trial_boots
    assert rg.log_count("ota_skip_bad_release") >= 2

    # A manifest signed by a key the node does not trust: refused, and a security event on the
    # node's own security topic reaches the IOC (a SOC subscribes to that topic alone).
    forger = rg.tmp / "forger.key.pem"
    forger.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _release(rg, server.root, forger, "1.5.0", 6, {})

    def security() -> list[dict[str, Any]]:
        return [r for r in rg.ioc_lines() if r["type"] == "event" and r.get("event") == "security"]
    wait_for(lambda: len(security()) >= 1, 60, "the node's security event at the IOC")
    (sec,) = security()
    assert (sec["source"], sec["category"], sec["reason"]) == (NODE_ID, "update_rejected", "bad-signature")
    assert any(r["reason"].startswith("key") for r in _ota(rg) if r["state"] == "rejected")
    assert "event=batch_acked channel=security" in rg.log_text()
    assert _boot(rg)["committed"] == "factory"
    assert sup.proc is not None and sup.proc.poll() is None
    assert rg.ioc_rejections() == ""


def test_a_hanging_release_is_reset_by_the_watchdog_and_falls_back(
        ota_rig: tuple[Rig, RepoServer, Path, Supervisor]) -> None:
    rg, server, pem, sup = ota_rig
    sup.wdt_ms = 4000
    rg.start_receiver()
    sup.power_on()
    wait_for(lambda: rg.log_count("ota_no_manifest") >= 1, 60, "the node's first check (404)")
    # The new app's poll task spins without yielding: the event loop, and every feed, stop.
    _release(rg, server.root, pem, "1.5.0", 6, {"node.py": (
        "        due = [time.ticks_ms()] * len(self.devices)\n",
        "        while True:  # hangs\n            pass\n")})
    wait_for(lambda: "rolled-back" in _states(rg, 6), 120, "rolled-back for the hanging release")
    assert rg.log_count("watchdog_expired") == 2 and sup.exits.count(-signal.SIGKILL) == 2
    rb = next(r for r in _ota(rg) if r["state"] == "rolled-back" and r["counter"] == 6)
    assert "no commit after 2 boots" in rb["reason"]
    boot = _boot(rg)
    assert boot["committed"] == "factory" and boot["trial"] is None
    wait_for(_telemetry_after(rg, 3), 60, "readings after the fallback")
    assert rg.log_count("watchdog_expired") == 2  # the factory app feeds it
