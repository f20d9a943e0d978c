"""Alarm evaluation: one record per transition, hysteresis, flags, per-device overrides."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.poll.alarms import AlarmEvaluator
from drivers.profiles import AlarmRule

LEVEL = AlarmRule(name="flood_danger", point="level", above=200, hysteresis=5, severity="danger")
LEAK = AlarmRule(name="leak", point="leak", when=True, severity="alert")
BATT = AlarmRule(name="battery_low", point="battery", below=3.3, hysteresis=0.1)


def test_threshold_raises_once_and_clears_with_hysteresis() -> None:
    ev = AlarmEvaluator((LEVEL,))
    assert ev.evaluate({"level": 150}) == []
    [t] = ev.evaluate({"level": 201})
    assert (t.state, t.value, t.threshold) == ("raised", 201, 200)
    assert ev.evaluate({"level": 230}) == []
    assert ev.evaluate({"level": 197}) == []  # inside the hysteresis band: still raised
    [t] = ev.evaluate({"level": 194})
    assert t.state == "cleared"
    assert ev.active() == []


def test_flag_and_below_rules() -> None:
    ev = AlarmEvaluator((LEAK, BATT))
    assert ev.evaluate({"leak": False, "battery": 3.6}) == []
    states = {t.rule.name: t.state for t in ev.evaluate({"leak": True, "battery": 3.2})}
    assert states == {"leak": "raised", "battery_low": "raised"}
    assert ev.evaluate({"battery": 3.35}) == []  # hysteresis
    assert [t.state for t in ev.evaluate({"battery": 3.5, "leak": False})] == ["cleared", "cleared"]


def test_override_threshold() -> None:
    ev = AlarmEvaluator((LEVEL,), {"flood_danger": 100})
    [t] = ev.evaluate({"level": 120})
    assert t.threshold == 100


def test_missing_point_keeps_state() -> None:
    ev = AlarmEvaluator((LEVEL,))
    ev.evaluate({"level": 250})
    assert ev.evaluate({}) == []
    assert ev.active() == ["flood_danger"]


@given(st.lists(st.floats(min_value=0, max_value=400, allow_nan=False), max_size=60))
def test_transitions_alternate_and_match_final_state(levels: list[float]) -> None:
    ev = AlarmEvaluator((LEVEL,))
    states = [t.state for v in levels for t in ev.evaluate({"level": v})]
    # raised/cleared strictly alternate, starting with raised
    assert all(s == ("raised" if i % 2 == 0 else "cleared") for i, s in enumerate(states))
    assert (ev.active() == ["flood_danger"]) == (len(states) % 2 == 1)
    if levels:
        last = levels[-1]
        if last > 200:
            assert ev.active() == ["flood_danger"]
        if last <= 195:
            assert ev.active() == []
