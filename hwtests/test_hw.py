"""End-to-end checks, written once, run against real hardware (``UE_HW_*``) or simulators.

See hwtests/README.md for the variables and the wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.errors import DeviceTimeout
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import plan_reads
from drivers.profiles import builtin_profiles
from drivers.serial.port import LineSensorPort
from hwtests.targets import Target, skip_reason, target
from tests.support.mosquitto import Mosquitto
from tests.support.procs import AgentProc, Subscriber, agent_config, wait_for

pytestmark = pytest.mark.hw


def _target(kind: str, tmp_path: Path) -> Iterator[Target]:
    reason = skip_reason(kind)
    if reason:
        pytest.skip(reason)
    with target(kind, tmp_path) as t:
        yield t


@pytest.fixture(params=["rtu", "tcp", "line"])
def hw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from _target(request.param, tmp_path)


@pytest.fixture(params=["rtu", "tcp"])
def hw_modbus(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Only the targets with unit addressing (a serial line sensor has none)."""
    yield from _target(request.param, tmp_path)


def _bus(t: Target) -> ModbusBus:
    if t.kind == "tcp":
        return ModbusBus.tcp(t.host, t.tcp_port, timeout=1.0)
    return ModbusBus.rtu(t.port, baudrate=t.baudrate, parity=t.parity, stopbits=t.stopbits,
                         bytesize=8, timeout=0.5)


def _plausible(values: dict[str, object], names: list[str]) -> None:
    assert set(values) == set(names), f"missing points: {set(names) - set(values)}"
    for name, v in values.items():
        assert isinstance(v, bool | int | float), (name, v)
        if isinstance(v, float):
            assert math.isfinite(v), (name, v)


def test_every_point_reads_and_decodes(hw: Target) -> None:
    profile = builtin_profiles()[hw.profile]
    if hw.kind == "line":
        assert profile.line is not None
        port = LineSensorPort(hw.port, profile.line, baudrate=hw.baudrate)

        async def read_line() -> dict[str, object]:
            task = asyncio.create_task(port.run())
            try:
                async with asyncio.timeout(15):
                    while port.latest() is None:  # noqa: ASYNC110 - the port exposes state, not an event
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            latest = port.latest()
            assert latest is not None
            return dict(latest[0])

        _plausible(asyncio.run(read_line()), profile.value_names())
        return

    blocks = plan_reads(profile.points)

    async def read() -> dict[str, object]:
        bus = _bus(hw)
        await bus.connect()
        try:
            values, failed = await bus.read_device(hw.unit, blocks)
        finally:
            await bus.close()
        assert not failed, failed
        return dict(values)

    _plausible(asyncio.run(read()), profile.value_names())


def test_absent_unit_times_out_and_bus_recovers(hw_modbus: Target) -> None:
    hw = hw_modbus
    profile = builtin_profiles()[hw.profile]
    blocks = plan_reads(profile.points)

    async def run() -> None:
        bus = _bus(hw)
        await bus.connect()
        try:
            with pytest.raises(DeviceTimeout):
                await bus.read_device(hw.absent_unit, blocks)
            values, failed = await bus.read_device(hw.unit, blocks)
            assert values and not failed
        finally:
            await bus.close()

    asyncio.run(run())


def test_agent_delivers_this_device_to_the_broker(hw: Target, tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    sub = Subscriber(broker.host, broker.port).start()
    cfg = agent_config(tmp_path / "agent.toml", broker_port=broker.port,
                       buses=hw.bus_toml("hw-device"), gateway_id="gw-hw")
    agent = AgentProc(cfg)
    agent.start()
    try:
        wait_for(lambda: any(r["device_id"] == "hw-device" and r["quality"] == "good"
                             for r in sub.of_type("telemetry")), 30, "good telemetry from the device")
    finally:
        agent.stop()
        sub.stop()
        broker.stop()
    good = next(r for r in sub.of_type("telemetry") if r["quality"] == "good")
    _plausible(good["values"], builtin_profiles()[hw.profile].value_names())
