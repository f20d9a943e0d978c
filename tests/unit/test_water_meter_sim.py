"""The simulated water meter (drivers/sim/model.py): a household that mostly draws no water
at night (so the night-flow leak rule stays quiet), an injected leak that flows all night,
and a valve that throttles and shuts the flow."""

from __future__ import annotations

import calendar

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.poll.rules import RuleEngine
from drivers.profiles import builtin_profiles
from drivers.sim.model import UnitModel

PROFILE = builtin_profiles()["water-meter"]
LEAK = next(a for a in PROFILE.alarms if a.name == "leak")
# 2026-03-10 00:00 Vietnam (UTC+7) = 2026-03-09 17:00 UTC
MIDNIGHT_VN = calendar.timegm((2026, 3, 9, 17, 0, 0)) * 1.0
TICK = 60.0  # one step a minute: a simulated day is 1440 steps


def day(seed: int, *, leak: bool = False) -> list[tuple[float, dict[str, object]]]:
    m = UnitModel(PROFILE, 1, seed=seed, start=MIDNIGHT_VN, tick=TICK)
    if leak:
        m.force_alarm(LEAK)
    out = []
    for i in range(1, 24 * 60 + 1):
        m.advance(i)
        out.append((MIDNIGHT_VN + i * TICK, dict(m.values())))
    return out


def night_flow_alarms(readings: list[tuple[float, dict[str, object]]]) -> list[str]:
    engine = RuleEngine(PROFILE.rules)
    return [t.state for ts, v in readings for t in engine.evaluate(v, ts)]  # type: ignore[arg-type]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_a_household_night_raises_no_night_flow_alarm_and_a_leak_does(seed: int) -> None:
    quiet = day(seed)
    night = [v["flow"] for ts, v in quiet if 3600 <= ts - MIDNIGHT_VN < 4 * 3600]
    assert sum(1 for f in night if f == 0) > 0.8 * len(night)  # mostly nothing flows at night
    assert any(v["flow"] for _ts, v in quiet)  # but the household does use water in the day
    assert night_flow_alarms(quiet) == []
    leaky = day(seed, leak=True)
    assert all(v["flow"] > 0 for _ts, v in leaky)
    assert night_flow_alarms(leaky)[:1] == ["raised"]


def test_the_valve_throttles_and_shuts_the_flow_and_reports_its_position() -> None:
    m = UnitModel(PROFILE, 1, seed=4, start=MIDNIGHT_VN + 7 * 3600, tick=1.0)
    m.force_alarm(LEAK)  # something always flows: the valve has something to stop
    m.advance(1)
    open_flow = m.values()["flow"]
    assert m.values()["valve_position"] == 100 and open_flow > 0
    m.command("valve_setpoint", 0)
    assert m.values()["valve_setpoint"] == 0
    m.advance(2)
    assert 0 < m.values()["valve_position"] < 100  # a motorised valve takes seconds to stroke
    m.advance(6)
    assert (m.values()["valve_position"], m.values()["flow"]) == (0, 0)
    total = m.values()["totaliser"]
    m.advance(100)
    assert m.values()["totaliser"] == total  # closed: the register stops counting
    m.command("valve_setpoint", 50)
    m.advance(110)
    assert m.values()["valve_position"] == 50 and m.values()["flow"] > 0


def test_same_seed_same_values() -> None:
    assert day(7)[:300] == day(7)[:300]
