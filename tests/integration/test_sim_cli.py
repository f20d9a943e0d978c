"""``python -m drivers.sim.cli``: ready line, serving, stdin control, SIGTERM, bad arguments."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.errors import DeviceExceptionResponse
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import plan_reads
from drivers.profiles import Value, builtin_profiles
from tests.support.ports import free_port
from tests.support.socat import PtyPair

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 20.0  # generous: only reached when something is broken


class SimProcess:
    """The simulator CLI as a child process, with line-wise stdout reading."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drivers.sim.cli", *args], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )
        self._buffer = b""

    def line(self) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no line from the simulator within {DEADLINE}s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"simulator exited: {self.stderr()}")
            self._buffer += chunk
        text, _, self._buffer = self._buffer.partition(b"\n")
        return text.decode()

    def send(self, text: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        return self.line()

    def stderr(self) -> str:
        self.proc.wait(DEADLINE)
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(DEADLINE)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE)


@pytest.fixture
def spawn() -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    yield started
    for sim in started:
        sim.kill()


def ready_fields(line: str) -> dict[str, str]:
    assert line.startswith("sim ready "), line
    return dict(part.split("=", 1) for part in line.split()[2:])


async def read_unit(bus: ModbusBus, kind: str, unit: int) -> dict[str, Value]:
    """The unit's values; a Modbus exception answer raises."""
    try:
        values, failed = await bus.read_device(unit, plan_reads(builtin_profiles()[kind].points))
        if failed:
            code = int(next(iter(failed.values())).split(":")[1])
            raise DeviceExceptionResponse(code)
        return values
    finally:
        await bus.close()


def test_tcp_sim_serves_takes_control_lines_and_exits_on_sigterm(
    spawn: list[SimProcess],
) -> None:
    port = free_port()
    sim = SimProcess("flood-sensor", "--tcp", f"127.0.0.1:{port}", "--units", "1-3",
                     "--seed", "5", "--alarm", "flood_danger")
    spawn.append(sim)
    fields = ready_fields(sim.line())
    assert fields == {"kind": "flood-sensor", "endpoint": f"tcp://127.0.0.1:{port}",
                      "units": "1-3"}

    values = asyncio.run(read_unit(ModbusBus.tcp("127.0.0.1", port, timeout=2.0),
                                   "flood-sensor", 3))
    assert isinstance(values["water_level"], float) and values["water_level"] > 200

    assert sim.send("fault exception 1 2") == "sim ok fault exception 1 2"
    with pytest.raises(DeviceExceptionResponse) as info:
        asyncio.run(read_unit(ModbusBus.tcp("127.0.0.1", port, timeout=2.0), "flood-sensor", 2))
    assert info.value.code == 4
    assert sim.send("clear") == "sim ok clear"
    assert sim.send("fault sideways").startswith("sim error ")
    values = asyncio.run(read_unit(ModbusBus.tcp("127.0.0.1", port, timeout=2.0),
                                   "flood-sensor", 1))
    assert values["water_level"] < 150

    assert sim.stop() == 0


def test_rtu_sim_serves_on_a_pty(spawn: list[SimProcess], pty_pair: PtyPair) -> None:
    sim = SimProcess("water-meter", "--serial", str(pty_pair.a), "--unit", "7",
                     "--baudrate", "19200")
    spawn.append(sim)
    assert ready_fields(sim.line())["units"] == "7"
    bus = ModbusBus.rtu(str(pty_pair.b), baudrate=19200, parity="N", stopbits=1, bytesize=8,
                        timeout=2.0)
    values = asyncio.run(read_unit(bus, "water-meter", 7))
    assert set(values) == {p.name for p in builtin_profiles()["water-meter"].points}
    assert sim.stop() == 0


def test_duration_ends_the_run(spawn: list[SimProcess]) -> None:
    sim = SimProcess("streetlight", "--tcp", "127.0.0.1:0", "--duration", "0.2")
    spawn.append(sim)
    assert ready_fields(sim.line())["endpoint"].startswith("tcp://127.0.0.1:")
    assert sim.proc.wait(DEADLINE) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lamppost", "--tcp", "127.0.0.1:0"], "unknown kind"),
        (["streetlight", "--tcp", "localhost"], "HOST:PORT"),
        (["streetlight", "--tcp", "127.0.0.1:0", "--fault", "flaky"], "unknown fault"),
        (["streetlight", "--tcp", "127.0.0.1:0", "--fault", "garbage:2"], "0..1"),
        (["streetlight", "--tcp", "127.0.0.1:0", "--units", "0-3"], "1..255"),
        (["streetlight", "--tcp", "127.0.0.1:0", "--alarm", "flood_danger"], "no alarm"),
        (["rain-gauge", "--tcp", "127.0.0.1:0"], "--serial"),
        (["streetlight"], "required"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "drivers.sim.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "sim ready" not in proc.stdout
