"""ModbusBus against real pymodbus simulators, over TCP and over RTU on socat ptys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.errors import (
    ConnectionLost,
    DeviceExceptionResponse,
    DeviceTimeout,
    FrameError,
)
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.profiles import AlarmRule, Profile, builtin_profiles
from drivers.sim.model import UnitModel
from drivers.sim.server import Simulator
from tests.support.ports import free_port
from tests.support.socat import PtyPair

TIMEOUT = 0.25  # per request; faults below are sized against it
FROZEN = 3600.0  # simulator tick: values do not move during a test


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> Iterator[None]:
    # pymodbus logs each dropped frame at error level; the faults here are deliberate.
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture(params=["tcp", "rtu"])
def transport(request: pytest.FixtureRequest) -> Iterator[PtyPair | None]:
    """None for TCP, a pty pair for RTU."""
    yield request.getfixturevalue("pty_pair") if request.param == "rtu" else None


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def profile(name: str) -> Profile:
    return builtin_profiles()[name]


@contextlib.asynccontextmanager
async def rig(name: str, pair: PtyPair | None, units: tuple[int, ...] = (1,),
              ) -> AsyncIterator[tuple[Simulator, ModbusBus]]:
    sim = Simulator(profile(name), units=units, seed=11, tick=FROZEN)
    if pair is None:
        await sim.serve_tcp("127.0.0.1", free_port())
        assert sim.tcp_port is not None
        bus = ModbusBus.tcp("127.0.0.1", sim.tcp_port, timeout=TIMEOUT)
    else:
        await sim.serve_rtu(str(pair.a), baudrate=19200)
        bus = ModbusBus.rtu(str(pair.b), baudrate=19200, parity="N", stopbits=1, bytesize=8,
                            timeout=TIMEOUT)
    try:
        await bus.connect()
        yield sim, bus
    finally:
        await bus.close()
        await sim.stop()


def expected(sim: Simulator, unit: int) -> dict[str, Any]:
    return {p.name: sim.value(unit, p.name) for p in sim.profile.points}


@pytest.mark.parametrize("name", ["streetlight", "water-meter", "flood-sensor"])
def test_every_profile_reads_correctly(transport: PtyPair | None, name: str) -> None:
    async def main() -> None:
        async with rig(name, transport, units=(1, 2)) as (sim, bus):
            blocks = plan_reads(sim.profile.points)
            first, failed1 = await bus.read_device(1, blocks)
            second, failed2 = await bus.read_device(2, blocks)
            assert failed1 == failed2 == {}
            assert first == expected(sim, 1)
            assert second == expected(sim, 2)
            assert first != second  # each unit has its own seeded model
            assert sim.requests == {1: len(blocks), 2: len(blocks)}  # one request per block

    run(main())


def _reading_fails(kind: str, code: int) -> type[Exception] | str:
    """The error a read raises under ``kind``, or the per-point reason it reports."""
    outcomes: dict[str, type[Exception] | str] = {
        "no-response": DeviceTimeout, "slow": DeviceTimeout, "garbage": FrameError,
        "bad-crc": FrameError, "exception": f"exception:{code}",
    }
    return outcomes[kind]


@pytest.mark.parametrize(
    ("kind", "code"),
    [("no-response", 4), ("exception", 4), ("exception", 2), ("exception", 6),
     ("garbage", 4), ("bad-crc", 4), ("slow", 4)],
)
def test_fault_maps_to_error_and_bus_recovers(transport: PtyPair | None, kind: str,
                                              code: int) -> None:
    async def main() -> None:
        async with rig("water-meter", transport) as (sim, bus):
            blocks = plan_reads(sim.profile.points)
            sim.set_fault(kind, code=code, delay=1.2 * TIMEOUT)
            outcome = _reading_fails(kind, code)
            if isinstance(outcome, str):
                values, failed = await bus.read_device(1, blocks)
                assert values == {}
                assert failed == {p.name: outcome for p in sim.profile.points}
                with pytest.raises(DeviceExceptionResponse) as info:
                    await bus.read_block(1, blocks[0])
                assert info.value.code == code
            else:
                with pytest.raises(outcome):
                    await bus.read_device(1, blocks)
            sim.set_fault("none")
            values, failed = await bus.read_device(1, blocks)
            assert (values, failed) == (expected(sim, 1), {})

    run(main())


def test_partial_fault_rate_hits_some_requests(transport: PtyPair | None) -> None:
    async def main() -> None:
        async with rig("flood-sensor", transport) as (sim, bus):
            sim.set_fault("exception", rate=0.5, code=6)
            (block,) = plan_reads(sim.profile.points)
            outcomes = []
            for _ in range(40):
                try:
                    await bus.read_block(1, block)
                    outcomes.append("ok")
                except DeviceExceptionResponse as exc:
                    outcomes.append(f"exception:{exc.code}")
            assert set(outcomes) == {"ok", "exception:6"}  # seeded: both happen in 40 tries

    run(main())


def test_late_response_is_not_taken_for_the_next_answer(transport: PtyPair | None) -> None:
    """The slow answer to block A must not be read as the answer to block B (same unit,
    same size) sent right after A timed out; on RTU there is no transaction id."""

    async def main() -> None:
        async with rig("flood-sensor", transport) as (sim, bus):
            points = {p.name: p for p in sim.profile.points}
            block_a = ReadBlock("input", 0, 1, (points["water_level"],))
            block_b = ReadBlock("input", 1, 1, (points["distance"],))
            sim.set_fault("slow", delay=1.2 * TIMEOUT)
            with pytest.raises(DeviceTimeout):
                await bus.read_block(1, block_a)
            sim.set_fault("none")
            values, failed = await bus.read_device(1, [block_b])
            assert failed == {}
            assert values == {"distance": sim.value(1, "distance")}
            assert sim.value(1, "distance") != round(sim.value(1, "water_level") * 10)

    run(main())


def test_dead_unit_does_not_break_another_unit_on_rtu(pty_pair: PtyPair) -> None:
    async def main() -> None:
        async with rig("streetlight", pty_pair, units=(1, 2)) as (sim, bus):
            blocks = plan_reads(sim.profile.points)
            sim.set_fault("no-response", unit=1)
            for _ in range(2):
                with pytest.raises(DeviceTimeout):
                    await bus.read_device(1, blocks)
                assert await bus.read_device(2, blocks) == (expected(sim, 2), {})
            with pytest.raises(DeviceTimeout):  # a unit nobody simulates stays silent on RTU
                await bus.read_block(7, blocks[0])
            assert await bus.read_device(2, blocks) == (expected(sim, 2), {})

    run(main())


def test_connection_lost_then_reconnects_on_next_call() -> None:
    async def main() -> None:
        port = free_port()
        dead = ModbusBus.tcp("127.0.0.1", port, timeout=TIMEOUT)
        with pytest.raises(ConnectionLost):
            await dead.connect()
        sim = Simulator(profile("flood-sensor"), seed=3, tick=FROZEN)
        await sim.serve_tcp("127.0.0.1", port)
        blocks = plan_reads(sim.profile.points)
        try:
            assert await dead.read_device(1, blocks) == (expected(sim, 1), {})
            await sim.stop()
            for _ in range(2):  # refused each time, reported as a connection problem
                with pytest.raises(ConnectionLost):
                    await dead.read_device(1, blocks)
            sim = Simulator(profile("flood-sensor"), seed=3, tick=FROZEN)
            await sim.serve_tcp("127.0.0.1", port)
            assert await dead.read_device(1, blocks) == (expected(sim, 1), {})
        finally:
            await dead.close()
            await sim.stop()

    run(main())


def test_write_points(transport: PtyPair | None) -> None:
    async def main() -> None:
        async with rig("streetlight", transport) as (sim, bus):
            points = {p.name: p for p in sim.profile.points}
            await bus.write_point(1, points["dim_level"], 30)
            await bus.write_point(1, points["lamp_on"], True)
            values, _ = await bus.read_device(1, plan_reads(sim.profile.points))
            assert (values["dim_level"], values["lamp_on"]) == (30, True)
            assert values["active_power"] == pytest.approx(18.0, rel=0.05)  # 30 % of 60 W
            await bus.write_point(1, points["lamp_on"], False)
            assert sim.value(1, "lamp_on") is False
            with pytest.raises(ValueError, match="not writable"):
                await bus.write_point(1, points["voltage"], 230)
            read_only = points["dim_level"].model_copy(update={"address": 5})
            with pytest.raises(DeviceExceptionResponse) as info:
                await bus.write_point(1, read_only, 1)
            assert info.value.code == 2

    run(main())


def test_unit_nobody_simulates_times_out(transport: PtyPair | None) -> None:
    """RTU: silence. TCP: the simulator answers like a TCP-to-RTU gateway (exception 11,
    target device failed to respond), which the client reports as a timeout too."""

    async def main() -> None:
        async with rig("flood-sensor", transport) as (sim, bus):
            blocks = plan_reads(sim.profile.points)
            with pytest.raises(DeviceTimeout):
                await bus.read_device(9, blocks)
            assert await bus.read_device(1, blocks) == (expected(sim, 1), {})

    run(main())


def test_out_of_map_read_is_an_illegal_address(transport: PtyPair | None) -> None:
    async def main() -> None:
        async with rig("water-meter", transport) as (_sim, bus):
            with pytest.raises(DeviceExceptionResponse) as info:
                await bus.read_block(1, ReadBlock("input", 0, 40, ()))
            assert info.value.code == 2

    run(main())


def test_missing_serial_port_is_a_connection_problem(tmp_path: Path) -> None:
    async def main() -> None:
        bus = ModbusBus.rtu(str(tmp_path / "no-such-tty"), baudrate=9600, parity="N",
                            stopbits=1, bytesize=8, timeout=TIMEOUT)
        with pytest.raises(ConnectionLost):
            await bus.read_device(1, plan_reads(profile("flood-sensor").points))
        await bus.close()

    run(main())


# --- the simulators themselves, as a client sees them ------------------------------------

def _trips(rule: AlarmRule, value: Any) -> bool:
    if rule.when is not None:
        return bool(value) is rule.when
    if rule.above is not None:
        return bool(value > rule.above + rule.hysteresis)
    assert rule.below is not None
    return bool(value < rule.below - rule.hysteresis)


@pytest.mark.parametrize("name", ["streetlight", "water-meter", "flood-sensor"])
def test_injected_alarms_hold_until_cleared(name: str) -> None:
    async def main() -> None:
        async with rig(name, None, units=(1, 2)) as (sim, bus):
            blocks = plan_reads(sim.profile.points)
            assert sim.profile.alarms
            for rule in sim.profile.alarms:
                sim.inject_alarm(rule.name, unit=1)
                forced, _ = await bus.read_device(1, blocks)
                other, _ = await bus.read_device(2, blocks)
                assert _trips(rule, forced[rule.point]), (rule.name, forced[rule.point])
                assert not _trips(rule, other[rule.point]), (rule.name, other[rule.point])
                sim.clear_alarms(unit=1)
                cleared, _ = await bus.read_device(1, blocks)
                assert not _trips(rule, cleared[rule.point]), (rule.name, cleared[rule.point])
            with pytest.raises(ValueError, match="no alarm"):
                sim.inject_alarm("no_such_alarm")

    run(main())


def test_forced_flood_level_keeps_distance_consistent() -> None:
    async def main() -> None:
        async with rig("flood-sensor", None) as (sim, bus):
            sim.inject_alarm("flood_danger")
            values, _ = await bus.read_device(1, plan_reads(sim.profile.points))
            assert isinstance(values["water_level"], float) and values["water_level"] > 205
            assert values["distance"] == round(4000 - values["water_level"] * 10)

    run(main())


@pytest.mark.parametrize("name", ["streetlight", "water-meter", "flood-sensor"])
def test_models_are_deterministic_when_seeded_and_values_move(name: str) -> None:
    def trace(seed: int) -> list[dict[str, Any]]:
        model = UnitModel(profile(name), 1, seed=seed, start=1_700_000_000.0, tick=60.0)
        states = []
        for tick in range(1, 120):
            model.advance(tick)
            states.append(dict(model.values()))
        return states

    first = trace(9)
    assert first == trace(9)
    assert first != trace(10)
    moving = {k for k in first[0] if any(s[k] != first[0][k] for s in first)}
    assert len(moving) >= 2, moving


def test_served_values_follow_the_clock() -> None:
    async def main() -> None:
        sim = Simulator(profile("streetlight"), seed=4, tick=0.02)
        await sim.serve_tcp("127.0.0.1", free_port())
        assert sim.tcp_port is not None
        bus = ModbusBus.tcp("127.0.0.1", sim.tcp_port, timeout=1.0)
        blocks = plan_reads(sim.profile.points)
        try:
            seen = set()
            for _ in range(40):
                values, _ = await bus.read_device(1, blocks)
                seen.add(values["voltage"])
                await asyncio.sleep(0.03)
            assert len(seen) > 1
        finally:
            await bus.close()
            await sim.stop()

    run(main())
