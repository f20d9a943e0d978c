"""A gateway takes signed updates end to end, under real parts.

The release team's commands (`urbanedge ota init|build-gateway|add-gateway|set-rollout`) make a
real TUF repository, served by a real HTTP server; the gateway runs under `urbanedge launch
--supervise` (what systemd does in the field) with real simulators and a real Mosquitto; the
test reads what reaches the IOC by opening the sealed records. A good release installs,
restarts, passes its health check and reports success; a release that crashes and one that
fails its health check both roll back by themselves; `kill -9` at every install step ends in a
good version; and the outbox loses nothing through any of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ota.sbom import release_digest, validate_doc
from ota.static_server import StaticServer
from tests.integration.test_agent_e2e import outbox_seqs
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import SimProc, Subscriber, agent_config, tcp_bus, wait_for

ROOT = Path(__file__).resolve().parents[2]
GW = "gw-test"
pytestmark = pytest.mark.slow


def ota(*args: str | Path) -> str:
    res = subprocess.run([sys.executable, "-m", "urbanedge", "ota", *map(str, args)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"ota {args[0]}: {res.stdout}{res.stderr}"
    return res.stdout


@dataclass
class Release:
    repo: Path
    keys: Path
    work: Path

    def publish(self, version: str, counter: int, source: Path = ROOT, *, percent: int = 100) -> str:
        tarball = self.work / f"urbanedge-{version}.tar.gz"
        sbom = self.work / f"urbanedge-{version}.cdx.json"
        ota("build-gateway", "--source", source, "--version", version, "--counter", str(counter), "--out", tarball,
            "--sbom-out", sbom)
        ota("add-gateway", "--repo", self.repo, "--keys", self.keys, "--tarball", tarball,
            "--version", version, "--counter", str(counter), "--sbom", sbom)
        target = f"gateway/urbanedge-{version}.tar.gz"
        ota("set-rollout", "--repo", self.repo, "--keys", self.keys, "--kind", "gateway",
            "--release", target, "--percent", str(percent))
        return target

    def broken_source(self, name: str, path: str, old: str, new: str) -> Path:
        """A copy of the code with one real fault put in (what a bad release looks like)."""
        src = self.work / name
        for pkg in ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "config"):
            shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        f = src / path
        text = f.read_text()
        assert old in text, f"{path} no longer contains {old!r}"
        f.write_text(text.replace(old, new, 1))
        return src


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Release, StaticServer]]:
    rel = Release(tmp_path / "repo", tmp_path / "keys", tmp_path / "work")
    rel.work.mkdir()
    ota("init", "--repo", rel.repo, "--keys", rel.keys)
    with StaticServer(rel.repo) as server:
        yield rel, server


@pytest.fixture
def release(served: tuple[Release, StaticServer]) -> tuple[Release, str]:
    return served[0], served[1].url


@pytest.fixture
def sim() -> Iterator[int]:
    port = free_port()
    s = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1-2", "--seed", "3")
    try:
        yield port
    finally:
        s.stop()


class Gateway:
    """`urbanedge launch --supervise` as its own process group: `kill -9` takes launcher and
    agent down together, like a power cut."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg
        self.log = cfg.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "urbanedge", "launch", "-c", str(self.cfg), "--supervise"],
                                     stdout=out, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)
        out.close()

    def power_cut(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.power_cut()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def gateway_config(tmp_path: Path, mosquitto: Mosquitto, sim_port: int, repo_url: str, repo: Path,
                   *, deadline: float = 20, max_tries: int = 2) -> Path:
    buses = tcp_bus(sim_port, [("sl-1", "streetlight", 1), ("sl-2", "streetlight", 2)], interval=0.5) + f"""
[update]
enabled = true
repository = "{repo_url}"
root = "{repo / "metadata" / "1.root.json"}"
state_dir = "update"
slots = "slots"
check_interval = 10
health_deadline = {deadline}
max_tries = {max_tries}
"""
    return agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=buses)


def statuses(sub: Subscriber, release: str) -> list[str]:
    return [r["state"] for r in sub.of_type("event")
            if r.get("event") == "ota_status" and r.get("release") == release]


def running_version(sub: Subscriber) -> Any:
    started = [r for r in sub.of_type("event") if r.get("event") == "agent_started"]
    return started[-1].get("version") if started else None


def sbom_of(sub: Subscriber, version: str) -> Any:
    for r in reversed(sub.of_type("event")):
        if r.get("event") == "sbom" and r["bom"]["metadata"]["component"].get("version") == version:
            return r["bom"]
    return None


def assert_nothing_lost(sub: Subscriber, db: Path) -> None:
    left, last = outbox_seqs(db)
    lost = set(range(1, last + 1)) - sub.seqs(GW) - left
    assert not lost, f"lost {len(lost)} of {last} records, e.g. {sorted(lost)[:10]}"


def test_good_release_installs_then_broken_ones_roll_back(
        tmp_path: Path, mosquitto: Mosquitto, sim: int, release: tuple[Release, str]) -> None:
    rel, url = release
    cfg = gateway_config(tmp_path, mosquitto, sim, url, rel.repo)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    gw = Gateway(cfg)
    gw.start()
    try:
        wait_for(lambda: running_version(sub) == "0.1.0", 60, "the factory agent's start")
        rel.publish("0.2.0", 2)
        # The IOC asks it to look now instead of waiting for the schedule.
        mosquitto_pub(mosquitto, f"urbanedge/v1/test-site/{GW}/command", '{"cmd": "update-check"}')
        wait_for(lambda: "success" in statuses(sub, "0.2.0"), 90, "0.2.0 success", step=0.2)
        assert statuses(sub, "0.2.0") == ["queued", "downloading", "installing", "restarting", "verifying", "success"]
        assert running_version(sub) == "0.2.0"
        # The new release reported what it is: a CycloneDX 1.6 SBOM whose application hashes
        # are those of the release the province built.
        wait_for(lambda: sbom_of(sub, "0.2.0") is not None, 60, "the SBOM of 0.2.0")
        bom = sbom_of(sub, "0.2.0")
        validate_doc(bom)
        app = {h["alg"]: h["content"] for h in bom["metadata"]["component"]["hashes"]}
        built = release_digest(rel.work / "urbanedge-0.2.0.tar.gz")
        assert (app["SHA-256"], app["SHA-512"]) == (built.sha256, built.sha512)
        # ... and the release SBOM the province published says the same.
        published = json.loads((rel.work / "urbanedge-0.2.0.cdx.json").read_text())
        assert published["metadata"]["component"]["hashes"] == bom["metadata"]["component"]["hashes"]
        assert any(c["name"] == "cryptography" for c in bom["components"])

        # A release whose agent crashes at start: the trial boots use up their tries and the
        # launcher goes back to 0.2.0, which reports the roll-back.
        crash = rel.broken_source("crash", "agent/app.py", "log = logging.getLogger",
                                  "raise SystemExit(70)\nlog = logging.getLogger")
        rel.publish("0.3.0", 3, crash)
        wait_for(lambda: "rolled-back" in statuses(sub, "0.3.0"), 120, "0.3.0 rolled back", step=0.2)
        back = [r for r in sub.of_type("event") if r.get("event") == "ota_status" and r["state"] == "rolled-back"]
        assert "did not pass its health check in 2 boots" in back[-1]["reason"]

        # A release that runs but cannot seal: nothing is acknowledged, the health check fails
        # at its deadline, and it rolls back without the launcher having to count crashes.
        mute = rel.broken_source("mute", "agent/uplink/forwarder.py", "            s.port,\n",
                                 "            s.port + 1,\n")
        rel.publish("0.4.0", 4, mute)
        wait_for(lambda: "rolled-back" in statuses(sub, "0.4.0"), 150, "0.4.0 rolled back", step=0.2)
        st = statuses(sub, "0.4.0")
        assert st[:5] == ["queued", "downloading", "installing", "restarting", "verifying"]
        assert "failed" in st
        failed = [r for r in sub.of_type("event") if r.get("event") == "ota_status"
                  and r["release"] == "0.4.0" and r["state"] == "failed"]
        assert "uplink never connected" in failed[0]["reason"]
        wait_for(lambda: running_version(sub) == "0.2.0", 30, "0.2.0 running again")
        # The broken releases are not tried again by later checks.
        assert statuses(sub, "0.3.0").count("queued") == 1
        assert statuses(sub, "0.4.0").count("queued") == 1
        # A validly signed older release is refused (anti-rollback floor 2 was committed).
        rel.publish("0.1.5", 1)
        mosquitto_pub(mosquitto, f"urbanedge/v1/test-site/{GW}/command", '{"cmd": "update-check"}')
        wait_for(lambda: "rejected" in statuses(sub, "0.1.5"), 60, "0.1.5 rejected", step=0.2)
    finally:
        gw.stop()
    sub.settle()
    assert not sub.rejected
    assert_nothing_lost(sub, tmp_path / "outbox.db")


STEPS = [
    ("downloading", r"state=downloading release=0\.2\.0"),
    ("installing", r"state=installing release=0\.2\.0"),
    ("restarting", r"state=restarting release=0\.2\.0"),
    ("trial boot", r"event=launch slot=a trial=True"),
    ("verifying", r"state=verifying release=0\.2\.0"),
]


def test_power_cut_at_every_install_step(
        tmp_path: Path, mosquitto: Mosquitto, sim: int, release: tuple[Release, str]) -> None:
    rel, url = release
    # Two of the cuts land in trial boots, which count as tries (a cut before the commit looks
    # like a crash to the launcher): three tries leave room for the boot that succeeds.
    cfg = gateway_config(tmp_path, mosquitto, sim, url, rel.repo, max_tries=3)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    gw = Gateway(cfg)
    rel.publish("0.2.0", 2)
    cut_at: list[str] = []
    try:
        for name, pattern in STEPS:
            gw.start()
            seen = len(gw.text())

            def reached(pattern: str = pattern, seen: int = seen) -> bool:
                return re.search(pattern, gw.text()[seen:]) is not None or "state=success" in gw.text()[seen:]

            wait_for(reached, 90, f"step {name}", step=0.02)
            if "state=success" in gw.text()[seen:]:
                break  # the release committed before the cut: later steps are past
            gw.power_cut()
            cut_at.append(name)
        else:
            gw.start()
        assert cut_at, "no power cut happened"
        if gw.proc is None or gw.proc.poll() is not None:
            gw.start()
        wait_for(lambda: "success" in statuses(sub, "0.2.0"), 120, "0.2.0 success after power cuts", step=0.2)
        wait_for(lambda: running_version(sub) == "0.2.0", 30, "0.2.0 running")
        state = (tmp_path / "slots" / "state.json").read_text()
        assert '"committed": "a"' in state and '"trial": null' in state
        # What the technician on site sees.
        shown = subprocess.run([sys.executable, "-m", "urbanedge", "status", "-c", str(cfg)],
                               capture_output=True, text=True, timeout=60)
        assert "software: 0.2.0 (slot a, release counter 2)" in shown.stdout, shown.stdout + shown.stderr
        live = subprocess.Popen([sys.executable, "-m", "urbanedge", "status", "-c", str(cfg), "--watch", "0.2"],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert live.stdout is not None
            refreshed = 0
            for _ in range(500):  # the view repeats itself: two screens are enough
                refreshed += live.stdout.readline().startswith("software: 0.2.0")
                if refreshed == 2:
                    break
            assert refreshed == 2
        finally:
            live.terminate()
            live.wait(10)
    finally:
        gw.stop()
    assert_nothing_lost(sub.settle(), tmp_path / "outbox.db")
    assert not sub.rejected


def mosquitto_pub(m: Mosquitto, topic: str, payload: str) -> None:
    import paho.mqtt.publish as publish

    publish.single(topic, payload, qos=1, hostname=m.host, port=m.port)


def test_hostile_server_is_reported_and_survived(
        tmp_path: Path, mosquitto: Mosquitto, sim: int, served: tuple[Release, StaticServer]) -> None:
    """Endless data, then a server answering 500: each is reported once, the gateway keeps
    its version and its readings flowing; once the mirror is fixed the release installs."""
    import hashlib

    rel, server = served
    cfg = gateway_config(tmp_path, mosquitto, sim, server.url, rel.repo)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    gw = Gateway(cfg)
    gw.start()
    topic = f"urbanedge/v1/test-site/{GW}/command"
    try:
        wait_for(lambda: running_version(sub) == "0.1.0", 60, "the factory agent's start")
        rel.publish("0.2.0", 2)
        digest = hashlib.sha256((rel.work / "urbanedge-0.2.0.tar.gz").read_bytes()).hexdigest()
        path = f"/targets/gateway/{digest}.urbanedge-0.2.0.tar.gz"
        server.faults.append(path, b"\0" * 100_000)
        mosquitto_pub(mosquitto, topic, '{"cmd": "update-check"}')
        wait_for(lambda: "rejected" in statuses(sub, "0.2.0"), 60, "endless data rejected", step=0.2)
        rejected = [r for r in sub.of_type("event") if r.get("event") == "ota_status" and r["state"] == "rejected"]
        assert rejected[0]["reason"].startswith("too-long")
        # A target that does not stop is an attack on the gateway: the SOC hears of it too.
        wait_for(lambda: any(r["event"] == "security" and r["category"] == "update_rejected"
                             and r["reason"] == "too-long" for r in sub.of_type("event")), 30, "security event")

        server.faults.clear()
        server.faults.fail(path, 500)
        before = server.faults.count(path)
        mosquitto_pub(mosquitto, topic, '{"cmd": "update-check"}')
        wait_for(lambda: "failed" in statuses(sub, "0.2.0"), 90, "server error reported", step=0.2)
        # Bounded retries: a handful of requests for the check, not a download loop.
        assert 1 <= server.faults.count(path) - before <= 4
        assert running_version(sub) == "0.1.0"
        n = len(sub.of_type("telemetry"))
        wait_for(lambda: len(sub.of_type("telemetry")) > n + 2, 30, "readings still flowing")

        server.faults.clear()
        mosquitto_pub(mosquitto, topic, '{"cmd": "update-check"}')
        wait_for(lambda: "success" in statuses(sub, "0.2.0"), 90, "0.2.0 success from the fixed mirror", step=0.2)
    finally:
        gw.stop()
    assert_nothing_lost(sub.settle(), tmp_path / "outbox.db")
