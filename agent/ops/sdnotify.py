"""The systemd notify protocol (sd_notify(3)) without libsystemd: datagrams to ``$NOTIFY_SOCKET``.

``READY=1`` once the agent's tasks run, ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` but only
while the agent proves it is alive (its health loop ran recently), ``STOPPING=1`` on the way
out. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("urbanedge.sdnotify")


class Notifier:
    def __init__(self, address: str | None) -> None:
        # "@name" is an abstract-namespace socket: the leading "@" becomes a NUL byte.
        self.address: str | bytes | None = None
        if address:
            self.address = b"\0" + address[1:].encode() if address.startswith("@") else address
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one state string; False when not under systemd or the socket is gone."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.warning("event=sd_notify_failed message=%r error=%r", message, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None when systemd
    does not watch this process (unset, or ``WATCHDOG_PID`` names another process)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid and wpid.isdigit() and int(wpid) != (os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None


class Heartbeat:
    """Proof of life: ``beat()`` from a loop that does real work, ``alive()`` is true while the
    last beat is younger than ``stale_after`` seconds (monotonic clock, injectable)."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self._clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self._clock()

    def alive(self) -> bool:
        return self._clock() - self.last < self.stale_after


class Watchdog:
    """Pings only while ``alive()`` says the agent's loops are running: a hung agent then
    misses its pings and systemd restarts it (``Restart=always``)."""

    def __init__(self, notifier: Notifier, alive: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.alive = alive
        self.sent = 0
        self.withheld = 0

    def tick(self) -> bool:
        if self.alive():
            self.sent += 1
            return self.notifier.notify("WATCHDOG=1")
        self.withheld += 1
        if self.withheld == 1 or self.withheld % 10 == 0:
            log.warning("event=watchdog_withheld reason=%r count=%d", "health loop stalled", self.withheld)
        return False

    async def run(self, interval: float) -> None:
        while True:
            self.tick()
            await asyncio.sleep(interval)
