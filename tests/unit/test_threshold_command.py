"""The ``threshold`` command's pure core (agent/control/thresholds.py) and the alarm
evaluator taking a new threshold at run time (agent/poll/alarms.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.control import thresholds
from agent.control.thresholds import Change
from agent.poll.alarms import AlarmEvaluator
from drivers.profiles import AlarmRule, builtin_profiles
from pki.command import CommandError

FLOOD = builtin_profiles()["flood-sensor"].alarms
METER = builtin_profiles()["water-meter"].alarms
RULES = {"flood-1": FLOOD, "flood-2": FLOOD, "meter-1": METER}


def reason(exc: pytest.ExceptionInfo[CommandError]) -> str:
    return exc.value.reason


def test_parse_accepts_numbers_and_null_and_refuses_the_rest() -> None:
    assert thresholds.parse({"alarm": "flood_alert", "value": 120}) == ("flood_alert", 120.0)
    assert thresholds.parse({"alarm": "flood_alert", "value": None}) == ("flood_alert", None)
    for args in ({"alarm": "flood_alert", "value": math.nan}, {"alarm": "flood_alert", "value": math.inf},
                 {"alarm": "flood_alert", "value": True}, {"alarm": "flood_alert", "value": "120"},
                 {"value": 3}, {"alarm": "Flood!", "value": 3}, {"alarm": 7, "value": 3}):
        with pytest.raises(CommandError) as exc:
            thresholds.parse(args)
        assert reason(exc) == "bad_args", args


def test_plan_targets_every_device_with_the_alarm_and_reports_old_and_new() -> None:
    changes = thresholds.plan("flood_alert", 120.0, [], RULES, {"flood-2": {"flood_alert": 130.0}})
    assert changes == [Change("flood-1", "flood_alert", 150.0, 120.0, reset=False),
                       Change("flood-2", "flood_alert", 130.0, 120.0, reset=False)]
    reset = thresholds.plan("flood_alert", None, ["flood-2"], RULES, {"flood-2": {"flood_alert": 130.0}})
    assert reset == [Change("flood-2", "flood_alert", 130.0, 150.0, reset=True)]


@pytest.mark.parametrize(("alarm", "targets", "want"), [
    ("flood_alrt", [], "bad_args"),            # nobody has it
    ("flood_alert", ["meter-1"], "bad_args"),  # that device has no such alarm
    ("leak", ["meter-1"], "bad_args"),         # a flag alarm: no threshold to set
    ("leak", [], "bad_args"),
    ("flood_alert", ["flood-9"], "unknown_device"),
])
def test_plan_refuses_with_a_reason(alarm: str, targets: list[str], want: str) -> None:
    with pytest.raises(CommandError) as exc:
        thresholds.plan(alarm, 1.0, targets, RULES, {})
    assert reason(exc) == want


def test_usable_sets_aside_what_no_longer_fits() -> None:
    saved = {"flood-1": {"flood_alert": 120.0, "gone": 3.0}, "meter-1": {"leak": 1.0}, "removed": {"x": 1.0}}
    kept, dropped = thresholds.usable(saved, RULES)
    assert kept == {"flood-1": {"flood_alert": 120.0}}
    assert sorted(dropped) == ["flood-1.gone", "meter-1.leak", "removed.x"]


def test_decode_refuses_what_encode_never_makes() -> None:
    for bad in (b"", b"[]", b'{"v": 2, "overrides": {}}', b'{"v": 1, "overrides": {"d": 3}}',
                b'{"v": 1, "overrides": {"d": {"a": NaN}}}', b'{"v": 1, "overrides": {"d": {"a": true}}}'):
        with pytest.raises(ValueError):
            thresholds.decode(bad)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
names = st.sampled_from(["flood_alert", "flood_danger", "battery_low"])
ops = st.lists(st.tuples(st.sampled_from(["flood-1", "flood-2"]), names, st.none() | finite), max_size=20)


@given(ops)
def test_overrides_follow_the_last_command_and_survive_the_file(seq: list[tuple[str, str, float | None]]) -> None:
    """Property: after any sequence of commands the in-force threshold of each (device, alarm)
    is the last value set, or the configured one after a reset; the file round-trips."""
    overrides: thresholds.Overrides = {}
    expected: dict[tuple[str, str], float] = {}
    for dev, alarm, value in seq:
        changes = thresholds.plan(alarm, value, [dev], RULES, overrides)
        (c,) = changes
        configured = next(r.above if r.above is not None else r.below for r in FLOOD if r.name == alarm)
        assert c.old == expected.get((dev, alarm), configured)
        overrides = thresholds.apply(overrides, changes)
        if value is None:
            expected.pop((dev, alarm), None)
        else:
            expected[(dev, alarm)] = value
        assert thresholds.decode(thresholds.encode(overrides)) == overrides
    assert {(d, a): v for d, per in overrides.items() for a, v in per.items()} == expected


def rule(**kw: object) -> AlarmRule:
    return AlarmRule.model_validate({"name": "level_high", "point": "level", "above": 100, "hysteresis": 5, **kw})


def test_a_raised_threshold_clears_a_raised_alarm_and_a_lowered_one_raises() -> None:
    ev = AlarmEvaluator((rule(),))
    assert [t.state for t in ev.evaluate({"level": 120})] == ["raised"]
    ev.set_threshold("level_high", 130)
    (cleared,) = ev.evaluate({"level": 120})
    assert (cleared.state, cleared.threshold) == ("cleared", 130)
    assert ev.evaluate({"level": 120}) == []
    ev.set_threshold("level_high", 110)
    assert [t.state for t in ev.evaluate({"level": 120})] == ["raised"]
    ev.set_threshold("level_high", None)  # back to the configured 100
    assert ev.threshold("level_high") == 100 and ev.evaluate({"level": 120}) == []


def test_below_rules_and_flag_rules() -> None:
    ev = AlarmEvaluator((rule(above=None, below=3.3, hysteresis=0.1, name="battery_low", point="battery"),
                         rule(above=None, when=True, hysteresis=0, name="leak", point="leak")),
                        overrides={"battery_low": 3.0})
    assert ev.evaluate({"battery": 3.2, "leak": False}) == []  # 3.0 from the config, not 3.3
    ev.set_threshold("battery_low", 3.4)
    assert [t.rule.name for t in ev.evaluate({"battery": 3.2})] == ["battery_low"]
    ev.set_threshold("battery_low", None)
    assert ev.threshold("battery_low") == 3.0  # reset goes back to the config file's value
    with pytest.raises(ValueError):
        ev.set_threshold("leak", 1)


@given(st.lists(finite, min_size=1, max_size=30), finite, finite)
def test_after_a_change_the_state_is_what_a_fresh_evaluator_would_reach(levels: list[float], before: float,
                                                                         after: float) -> None:
    """Property: no hysteresis -> after set_threshold the raised state depends only on the new
    threshold and the value (as if the rule had always had it)."""
    ev = AlarmEvaluator((rule(above=before, hysteresis=0),))
    for x in levels[:-1]:
        ev.evaluate({"level": x})
    ev.set_threshold("level_high", after)
    ev.evaluate({"level": levels[-1]})
    assert ev.active() == (["level_high"] if levels[-1] > after else [])
