"""Where the hardware-in-the-loop checks run: real hardware named by ``UE_HW_*`` variables,
or simulators over socat ptys and loopback TCP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
from tests.support.procs import SimProc
from tests.support.socat import open_pty_pair


@dataclass(frozen=True)
class Target:
    """A bus with one device on it, as the agent config and the drivers need it."""

    kind: str  # rtu | tcp | line
    profile: str
    unit: int
    real: bool
    port: str = ""  # serial device path
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    host: str = ""
    tcp_port: int = 0
    absent_unit: int = 247

    def bus_toml(self, device_id: str, interval: float = 0.5) -> str:
        if self.kind == "tcp":
            head = (f'type = "modbus-tcp"\nhost = "{self.host}"\nport = {self.tcp_port}\n'
                    "timeout = 1.0\n")
        elif self.kind == "rtu":
            head = (f'type = "modbus-rtu"\nport = "{self.port}"\nbaudrate = {self.baudrate}\n'
                    f'parity = "{self.parity}"\nstopbits = {self.stopbits}\ntimeout = 0.5\n')
        else:
            head = f'type = "serial-line"\nport = "{self.port}"\nbaudrate = {self.baudrate}\n'
        unit = f"unit = {self.unit}\n" if self.kind != "line" else ""
        return (f'[[buses]]\nname = "hw-{self.kind}"\n{head}'
                f'[[buses.devices]]\nid = "{device_id}"\nprofile = "{self.profile}"\n{unit}'
                f"interval = {interval}\n")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _need_socat() -> str | None:
    return None if shutil.which("socat") else "socat is not installed (scripts/test.sh installs it)"


@contextmanager
def target(kind: str, tmp: Path) -> Iterator[Target]:
    """Yield the real target if its variables are set, else start a simulator for it."""
    absent = int(_env("UE_HW_ABSENT_UNIT", "247"))
    if kind == "rtu" and _env("UE_HW_RTU_PORT"):
        yield Target("rtu", _env("UE_HW_RTU_PROFILE", "flood-sensor"), int(_env("UE_HW_RTU_UNIT", "1")),
                     True, port=_env("UE_HW_RTU_PORT"), baudrate=int(_env("UE_HW_RTU_BAUD", "9600")),
                     parity=_env("UE_HW_RTU_PARITY", "N"), stopbits=int(_env("UE_HW_RTU_STOPBITS", "1")),
                     absent_unit=absent)
        return
    if kind == "tcp" and _env("UE_HW_TCP"):
        host, _, port = _env("UE_HW_TCP").rpartition(":")
        yield Target("tcp", _env("UE_HW_TCP_PROFILE", "streetlight"), int(_env("UE_HW_TCP_UNIT", "1")),
                     True, host=host, tcp_port=int(port), absent_unit=absent)
        return
    if kind == "line" and _env("UE_HW_LINE_PORT"):
        yield Target("line", _env("UE_HW_LINE_PROFILE", "rain-gauge"), 0, True,
                     port=_env("UE_HW_LINE_PORT"), baudrate=int(_env("UE_HW_LINE_BAUD", "9600")))
        return
    yield from _simulated(kind, tmp, absent)


def skip_reason(kind: str) -> str | None:
    """Why a simulated target cannot run here (None when it can)."""
    if kind in ("rtu", "line") and not _env(f"UE_HW_{kind.upper()}_PORT"):
        return _need_socat()
    return None


def _simulated(kind: str, tmp: Path, absent: int) -> Iterator[Target]:
    if kind == "tcp":
        port = free_port()
        sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1", "--seed", "3")
        try:
            yield Target("tcp", "streetlight", 1, False, host="127.0.0.1", tcp_port=port,
                         absent_unit=absent)
        finally:
            sim.stop()
        return
    pair = open_pty_pair(tmp, f"hw-{kind}")
    try:
        if kind == "rtu":
            sim = SimProc.start("flood-sensor", "--serial", str(pair.a), "--units", "1",
                                "--baudrate", "19200", "--seed", "4")
            target_ = Target("rtu", "flood-sensor", 1, False, port=str(pair.b), baudrate=19200,
                             absent_unit=absent)
        else:
            sim = SimProc.start("rain-gauge", "--serial", str(pair.a), "--seed", "5")
            target_ = Target("line", "rain-gauge", 0, False, port=str(pair.b))
        try:
            yield target_
        finally:
            sim.stop()
    finally:
        pair.close()
