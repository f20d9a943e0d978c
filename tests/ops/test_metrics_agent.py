"""A real agent (``urbanedge run``) between a streetlight simulator and Mosquitto, with
``[metrics]`` on and systemd's notify socket bound by the test: /metrics is scraped over
HTTP and read by prometheus_client's parser; READY/WATCHDOG/STOPPING arrive as datagrams."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, agent_config, wait_for

Metrics = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(port: int) -> Metrics:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def value(m: Metrics, family: str, **labels: str) -> float:
    for _, lb, v in m.get(family, []):
        if all(lb.get(k) == want for k, want in labels.items()):
            return v
    raise KeyError(f"{family}{labels} not in the scrape")


def try_scrape(port: int) -> Metrics | None:
    try:
        return scrape(port)
    except (urllib.error.URLError, ConnectionError):
        return None  # not listening yet


@pytest.fixture
def streetlights() -> Iterator[int]:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1-2", "--seed", "3")
    try:
        yield port
    finally:
        sim.stop()


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    name = f"urbanedge-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(30)
    try:
        yield sock
    finally:
        sock.close()


def test_metrics_follow_polls_outbox_and_uplink_and_systemd_is_notified(
        tmp_path: Path, mosquitto: Mosquitto, streetlights: int, notify_socket: socket.socket) -> None:
    mport = free_port()
    devices = "".join(f'[[buses.devices]]\nid = "sl-{u}"\nprofile = "streetlight"\nunit = {u}\ninterval = 0.2\n'
                      for u in (1, 2))
    buses = f'[[buses]]\nname = "lan"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = {streetlights}\n{devices}'
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=buses)
    with cfg.open("a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{mport}"\n')
    agent = AgentProc(cfg)
    # What systemd sets for a Type=notify unit with WatchdogSec=1 (pings every 0.5 s); for the
    # agent only: a restarted Mosquitto would notify too (it speaks sd_notify).
    name = notify_socket.getsockname()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTIFY_SOCKET", "@" + name[1:].decode())
        mp.setenv("WATCHDOG_USEC", "1000000")
        mp.delenv("WATCHDOG_PID", raising=False)
        agent.start()
    try:
        # systemd protocol: READY=1 first, then watchdog pings (the health loop is running).
        first = notify_socket.recv(4096).decode()
        assert first.startswith("READY=1\n"), first
        assert notify_socket.recv(4096) == b"WATCHDOG=1"

        wait_for(lambda: (m := try_scrape(mport)) is not None
                 and value(m, "urbanedge_uplink_state", state="online") == 1
                 and value(m, "urbanedge_polls", device="sl-1") > 0, 30, "online with polls")
        m1 = scrape(mport)
        p1 = value(m1, "urbanedge_polls", device="sl-1")
        assert value(m1, "urbanedge_device_online", device="sl-1") == 1
        assert value(m1, "urbanedge_agent_info", gateway="gw-test") == 1
        assert value(m1, "urbanedge_commands_rejected") == 0  # the command hook, at 0
        wait_for(lambda: value(scrape(mport), "urbanedge_polls", device="sl-1") > p1, 30, "polls to increase")
        wait_for(lambda: value(scrape(mport), "urbanedge_uplink_acked_records") > 0, 30, "acked records")

        # Broker outage: the uplink leaves "online", readings pile up in the outbox and age.
        mosquitto.stop()
        wait_for(lambda: value(scrape(mport), "urbanedge_uplink_state", state="online") == 0, 30, "uplink down")
        d0 = value(scrape(mport), "urbanedge_outbox_depth", priority="telemetry")
        wait_for(lambda: value(scrape(mport), "urbanedge_outbox_depth", priority="telemetry") >= d0 + 20, 30,
                 "outbox to fill during the outage")
        down = scrape(mport)
        assert value(down, "urbanedge_outbox_oldest_age_seconds") > 0
        assert value(down, "urbanedge_outbox_used_bytes") > 0
        peak = value(down, "urbanedge_outbox_depth", priority="telemetry")

        # Back: online again, one more reconnect, the backlog drains.
        mosquitto.start()
        wait_for(lambda: value(m := scrape(mport), "urbanedge_uplink_state", state="online") == 1
                 and value(m, "urbanedge_uplink_reconnects") >= 1
                 and value(m, "urbanedge_outbox_depth", priority="telemetry") < peak, 60, "recovery and drain")

        # Only /metrics is served, only for GET/HEAD.
        with pytest.raises(urllib.error.HTTPError) as nf:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=10)
        assert nf.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as na:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{mport}/metrics", data=b"x"), timeout=10)
        assert na.value.code == 405
    finally:
        code = agent.stop()
    assert code == 0, agent.log_text()[-3000:]
    seen = []
    while (msg := notify_socket.recv(4096).decode()) != "STOPPING=1":
        seen.append(msg)
    assert set(seen) <= {"WATCHDOG=1"}


def test_a_taken_metrics_address_is_logged_and_the_agent_keeps_running(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No broker either: the agent must run regardless of both.
        cfg = agent_config(tmp_path / "agent.toml", broker_port=free_port(), buses="")
        with cfg.open("a") as f:
            f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        agent = AgentProc(cfg)
        agent.start()
        try:
            wait_for(lambda: "event=metrics_bind_failed" in agent.log_text(), 30, "the bind failure to be logged")
            assert agent.alive()
        finally:
            code = agent.stop()
    assert code == 0, agent.log_text()[-3000:]
