"""LineSimulator → real socat pty pair → LineSensorPort: values, faults, reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from drivers.profiles import Profile, load_profile
from drivers.serial.port import LineSensorPort
from drivers.sim.line import LineSimulator
from tests.support.socat import PtyPair, open_pty_pair

PROFILE = Path(__file__).resolve().parents[2] / "config" / "profiles" / "rain-gauge.toml"
PERIOD = 0.03
DEADLINE = 15.0  # generous: only reached when something is broken


def rain_gauge() -> Profile:
    return load_profile(PROFILE)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def wait_until(what: str, predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(port: LineSensorPort) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(port.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def rig(
    pair: PtyPair, *, silence_timeout: float = 10.0, backoff_initial: float = 0.2,
    backoff_max: float = 10.0,
) -> AsyncIterator[tuple[LineSimulator, LineSensorPort]]:
    """A port reading pair.b (opened first), a seeded simulator writing pair.a."""
    profile = rain_gauge()
    assert profile.line is not None
    port = LineSensorPort(str(pair.b), profile.line, silence_timeout=silence_timeout,
                          backoff_initial=backoff_initial, backoff_max=backoff_max)
    sim = LineSimulator(profile, str(pair.a), period=PERIOD, seed=7)
    async with running(port):
        await wait_until("port open", lambda: port.connected)
        await sim.start()
        try:
            yield sim, port
        finally:
            await sim.stop()


async def fresh_values(port: LineSensorPort, count: int = 3) -> dict[str, Any]:
    """Wait until ``count`` more good sentences have arrived; return the latest values."""
    before = port.stats["sentences"]
    await wait_until(f"{count} more sentences", lambda: port.stats["sentences"] >= before + count)
    latest = port.latest()
    assert latest is not None
    return latest[0]


def test_values_arrive_and_match_what_was_sent(pty_pair: PtyPair) -> None:
    async def scenario() -> None:
        async with rig(pty_pair) as (sim, port):
            values = await fresh_values(port, 5)
            assert values in list(sim.history)
            assert set(values) == {"rain_total", "rain_rate", "water_level", "battery", "status"}
            assert isinstance(values["status"], int)
            latest = port.latest()
            assert latest is not None and abs(latest[1] - time.time()) < 60

            sim.inject_alarm("heavy_rain")
            sim.inject_alarm("battery_low")
            await wait_until("alarm values", lambda: (port.latest() or ({}, 0))[0].get(
                "rain_rate") == 80.0)
            values = await fresh_values(port, 1)
            assert (values["rain_rate"], values["battery"], values["status"]) == (80.0, 3.1, 4)
            sim.clear_alarms()
            # Sentences sent before the clear may still be in flight: wait for a later one.
            await wait_until("alarms cleared", lambda: (port.latest() or ({}, 0))[0].get(
                "rain_rate", 80.0) < 50)
            values = await fresh_values(port, 1)
            assert values["rain_rate"] < 50 and values["battery"] > 3.3

        stats = port.stats
        assert stats["opens"] == 1 and stats["reopens"] == 0
        bad = ("bad_checksum", "malformed", "overlong", "garbage_bytes", "parse_errors")
        assert all(stats[k] == 0 for k in bad), stats

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "counter", "expected"),
    [("garbage", "garbage_bytes", 2), ("bad-checksum", "bad_checksum", 2),
     ("truncated", "truncated", 2), ("silence", "silences", 1)],  # one outage, one count
)
def test_each_fault_is_counted_and_good_sentences_follow(
    pty_pair: PtyPair, fault: str, counter: str, expected: int
) -> None:
    async def scenario() -> None:
        async with rig(pty_pair, silence_timeout=0.5) as (sim, port):
            await fresh_values(port)
            assert port.stats[counter] == 0
            sim.set_fault(fault)
            await wait_until(f"{counter} counted", lambda: port.stats[counter] >= expected)
            sim.set_fault("none")
            stamp = (port.latest() or ({}, 0.0))[1]
            values = await fresh_values(port, 5)
            assert values in list(sim.history)
            latest = port.latest()
            assert latest is not None and latest[1] > stamp
            assert port.connected

    run(scenario())


def test_port_reconnects_when_the_pty_pair_comes_back(
    pty_pair: PtyPair, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers")

    async def scenario() -> None:
        async with rig(pty_pair, backoff_initial=0.02, backoff_max=0.2) as (_sim, port):
            await fresh_values(port)
            pty_pair.close()
            await wait_until("port lost", lambda: not port.connected)
            await wait_until("reopen attempts fail", lambda: port.stats["open_failures"] >= 2)
            again = open_pty_pair(tmp_path)  # same link paths, new ptys behind them
            try:
                assert again.b == pty_pair.b
                await wait_until("port reopened", lambda: port.stats["reopens"] == 1)
                await fresh_values(port, 5)  # the simulator reopened its end too
            finally:
                again.close()
        assert port.stats["lost"] == 1

    run(scenario())
    events = [r.getMessage().split()[0] for r in caplog.records if r.name.endswith("port")]
    assert events == [
        "event=line_port_opened", "event=line_port_lost",
        "event=line_port_open_failed", "event=line_port_reopened",
    ]


def test_cancel_while_backing_off_on_a_missing_device(tmp_path: Path) -> None:
    profile = rain_gauge()
    assert profile.line is not None
    port = LineSensorPort(str(tmp_path / "absent"), profile.line, backoff_initial=0.01,
                          backoff_max=0.05)

    async def scenario() -> None:
        task = asyncio.create_task(port.run())
        await wait_until("open failures", lambda: port.stats["open_failures"] >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not port.connected and port.latest() is None

    run(scenario())


# -- the simulator on its own (no I/O) ----------------------------------------------------


def frames(seed: int, faults: bool = True) -> list[bytes]:
    sim = LineSimulator(rain_gauge(), "/unused", period=1.0, seed=seed)
    out = []
    for i in range(300):
        if faults and i % 50 == 0:
            sim.set_fault(["none", "garbage", "bad-checksum", "truncated"][i // 50 % 4], rate=0.5)
        out.append(sim.frame())
    return out


def test_simulator_is_deterministic_when_seeded() -> None:
    assert frames(3) == frames(3)
    assert frames(3) != frames(4)


def test_simulated_values_are_plausible() -> None:
    sim = LineSimulator(rain_gauge(), "/unused", period=1.0, seed=11)
    for _ in range(3000):
        sim.frame()
    history = list(sim.history)
    assert len(history) == 256
    totals = [v["rain_total"] for v in history]
    assert totals == sorted(totals)
    assert any(v["rain_rate"] > 0 for v in history)
    assert all(0 <= v["rain_rate"] < 50 for v in history)
    assert all(3.3 < v["battery"] < 4.2 and v["status"] == 0 for v in history)
    assert all(v["water_level"] >= 0 for v in history)


def test_simulator_rejects_unknown_faults_and_alarms() -> None:
    sim = LineSimulator(rain_gauge(), "/unused", seed=1)
    with pytest.raises(ValueError):
        sim.set_fault("smoke")
    with pytest.raises(ValueError):
        sim.set_fault("garbage", rate=2.0)
    with pytest.raises(ValueError):
        sim.inject_alarm("flood")
