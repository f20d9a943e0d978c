"""Real processes for end-to-end tests: the agent, simulators, and an MQTT subscriber that
checks by (source, seq) what arrived."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ioc.verify import Opener, Rejected
from tests.support import testpki
from tests.support.process import stop_process


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class SimProc:
    """``urbanedge sim`` as a subprocess, controlled through its stdin."""

    proc: subprocess.Popen[str]
    endpoint: str

    @classmethod
    def start(cls, kind: str, *args: str) -> SimProc:
        proc = subprocess.Popen(
            [sys.executable, "-m", "urbanedge", "sim", kind, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("sim ready"):
            proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r}")
        return cls(proc, line.strip())

    def control(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


@dataclass
class AgentProc:
    """``urbanedge run`` as a subprocess (so it can be killed with SIGKILL)."""

    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> None:
        self.log = self.config.with_suffix(".log")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "urbanedge", "run", "-c", str(self.config)],
                                     stdout=out, stderr=out, env=env)
        out.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        code = stop_process(self.proc, grace=20)
        return 0 if code is None else int(code)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


@dataclass
class Subscriber:
    """Subscribes to everything under the prefix and indexes records by (source, seq)."""

    host: str
    port: int
    prefix: str = "urbanedge/v1"
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)
    duplicates: int = 0
    retained: dict[str, Any] = field(default_factory=dict)
    births: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # reasons, for messages the IOC would refuse
    opener: Opener = field(default_factory=testpki.opener)
    _raw: list[tuple[str, bytes]] = field(default_factory=list)
    parked: list[bytes] = field(default_factory=list)  # batches waiting for their signer's announcement
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: mqtt.Client | None = None

    def start(self, session: str | None = None) -> Subscriber:
        """Subscribe; with ``session`` (a client id) the broker keeps our subscription and
        queue while we are away, across subscriber objects (and broker restarts with persistence)."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session or f"test-sub-{os.getpid()}-{id(self)}",
                        clean_session=session is None)
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_connect = lambda cl, *a: cl.subscribe(f"{self.prefix}/#", qos=1)
        c.connect(self.host, self.port, keepalive=30)
        c.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")
        self._client = c
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Only queued here: opening (ECDH, AES-GCM, ECDSA) happens when a test looks, so paho's
        # thread keeps draining the socket as fast as before sealing and the broker never holds
        # a backlog for us (a broker crash in a test loses only what it holds).
        with self._lock:
            self._raw.append((msg.topic.rsplit("/", 1)[-1], bytes(msg.payload)))

    def _drain(self) -> None:
        """Open what arrived since the last look (called with the lock held). Like the IOC, a
        batch whose signer is not known yet waits for the announcement (a persistent session
        delivers its queue before the retained announcement)."""
        raw, self._raw = self._raw, []
        for channel, payload in raw:
            if channel == "status":
                self.retained["status"] = json.loads(payload)
            elif channel == "birth":
                self.births.append(json.loads(payload))
            elif channel == "cert":
                try:
                    self.opener.learn_announcement(payload)
                except Rejected as exc:
                    self.rejected.append(exc.reason)
                    continue
                parked, self.parked = self.parked, []
                for p in parked:
                    self._open(p)
            elif channel in ("telemetry", "alarm", "event", "security"):
                self._open(payload)

    def _open(self, payload: bytes) -> None:
        try:
            batch = self.opener.open(payload)
        except Rejected as exc:
            if exc.reason == "unknown_certificate":
                self.parked.append(payload)
            else:
                self.rejected.append(exc.reason)
            return
        for rec in batch.records:
            key = (batch.source, int(rec["seq"]))
            if key in self.records:
                self.duplicates += 1
                continue
            self.records[key] = rec
            self.order.append(key)

    def seqs(self, source: str) -> set[int]:
        with self._lock:
            self._drain()
            return {s for (src, s) in self.records if src == source}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            self._drain()
            return [r for r in self.records.values() if r["type"] == kind]

    def count(self) -> int:
        with self._lock:
            self._drain()
            return len(self.records)

    def settle(self) -> Subscriber:
        """Open everything received so far; returns self (for tests reading fields directly)."""
        with self._lock:
            self._drain()
        return self


def tcp_bus(port: int, devices: list[tuple[str, str, int]], *, interval: float, name: str = "lan",
            timeout: float = 0.5, extra: str = "") -> str:
    """The ``[[buses]]`` TOML of one Modbus TCP bus on loopback: ``devices`` are (id, profile, unit)."""
    text = (f'[[buses]]\nname = "{name}"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
            f"timeout = {timeout}\n{extra}")
    for dev_id, profile, unit in devices:
        text += f'[[buses.devices]]\nid = "{dev_id}"\nprofile = "{profile}"\nunit = {unit}\ninterval = {interval}\n'
    return text


def agent_config(path: Path, *, broker_port: int, buses: str, gateway_id: str = "gw-test",
                 max_bytes: str = "64MB", extra_broker: str = "", durability: str = "full") -> Path:
    path.write_text(
        f"""
log_level = "info"
[identity]
gateway_id = "{gateway_id}"
site = "test-site"
[broker]
host = "127.0.0.1"
port = {broker_port}
reconnect_min = 0.2
reconnect_max = 2.0
keepalive = 10
{extra_broker}
[buffer]
path = "outbox.db"
max_bytes = "{max_bytes}"
durability = "{durability}"
{testpki.seal_toml(gateway_id)}
{buses}
"""
    )
    return path


def missing(seqs: set[int]) -> list[int]:
    """Sequence numbers absent between 1 and the highest received."""
    if not seqs:
        return []
    return sorted(set(range(1, max(seqs) + 1)) - seqs)


def ioc_command(host: str, port: int, gateway: str, site: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`urbanedge ioc command` signed with the test PKI's IOC command key, to ``gateway``."""
    from tests.support import testpki

    pki = testpki.shared_pki()
    cmd = [sys.executable, "-m", "urbanedge", "ioc", "command", "--broker", f"{host}:{port}",
           "--key", str(pki.ioc_command_key), "--cert", str(pki.ioc_command_key.with_name("command.chain.pem")),
           "--gateway", gateway, "--site", site, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
