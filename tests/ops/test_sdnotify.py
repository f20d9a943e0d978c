"""sd_notify against a real AF_UNIX datagram socket the test binds (as systemd does)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from agent.ops.sdnotify import Heartbeat, Notifier, Watchdog, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    # Abstract namespace ("@..."): no path length limit, nothing left on disk.
    name = f"@urbanedge-test-{os.getpid()}-{os.urandom(4).hex()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name[1:].encode())
    try:
        yield name, sock
    finally:
        sock.close()


def pending(sock: socket.socket) -> list[str]:
    """Every datagram already queued. AF_UNIX datagrams are queued by sendto() itself, so an
    empty queue right after a call means nothing was sent — no waiting involved."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return out


def test_ready_then_watchdog_then_stopping(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": name})
    assert n.enabled
    assert n.ready("polling 3 devices")
    dog = Watchdog(n, lambda: True)
    assert dog.tick()
    assert n.stopping()
    n.close()
    assert pending(sock) == ["READY=1\nSTATUS=polling 3 devices", "WATCHDOG=1", "STOPPING=1"]


def test_no_ping_while_the_loop_is_stalled(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    alive = {"v": False}
    dog = Watchdog(Notifier(name), lambda: alive["v"])
    for _ in range(3):
        assert not dog.tick()
    assert pending(sock) == []
    assert dog.withheld == 3
    alive["v"] = True
    assert dog.tick()
    assert pending(sock) == ["WATCHDOG=1"]


def test_without_systemd_everything_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and not n.stopping()
    assert not Watchdog(n, lambda: True).tick()


def test_vanished_socket_is_logged_not_raised(tmp_path: object) -> None:
    n = Notifier("@urbanedge-test-nobody-listens-" + os.urandom(4).hex())
    assert n.notify("READY=1") is False


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_stalled_heartbeat_withholds_the_ping(notify_socket: tuple[str, socket.socket]) -> None:
    # The agent's wiring: Watchdog(notifier, heartbeat.alive). A clock the test moves by hand
    # stands for a health loop that stops beating; no real time passes.
    name, sock = notify_socket
    now = [100.0]
    hb = Heartbeat(stale_after=11.0, clock=lambda: now[0])
    dog = Watchdog(Notifier(name), hb.alive)
    assert dog.tick()
    now[0] += 10.9
    assert dog.tick()
    now[0] += 0.2  # 11.1 s since the last beat: the loop is stuck
    assert not dog.tick()
    assert pending(sock) == ["WATCHDOG=1", "WATCHDOG=1"]
    hb.beat()
    assert dog.tick()
    assert pending(sock) == ["WATCHDOG=1"]
