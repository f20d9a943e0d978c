"""Edge rules (rate of rise, night-flow leak, power while off): exact transitions for
constructed series, no flapping, sampling-rate invariance, and profile errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.poll.rules import NightFlow, RateAbove, RuleEngine, RuleTransition
from drivers.errors import ProfileError
from drivers.profiles import (
    NightFlowRule,
    PowerWhileOffRule,
    RateAboveRule,
    Value,
    builtin_profiles,
    load_profile,
)

RISE = RateAboveRule(type="rate_above", name="flood_rising_fast", point="level", rate=0.5,
                     window=600, hysteresis=0.25, min_samples=5, severity="danger")
NIGHT = NightFlowRule(type="night_flow", name="night_flow_leak", point="flow", zero_below=0.002)
POWER = PowerWhileOffRule(type="power_while_off", name="power_while_off", switch="lamp_on",
                          point="active_power", above=5, hysteresis=1, polls=3)

DAY0 = 1_699_920_000  # a UTC midnight; 01:00 at UTC+7 is 18:00 UTC the day before
H = 3600


def run(engine: RuleEngine, series: Iterable[tuple[float, Mapping[str, Value]]]
        ) -> list[tuple[float, RuleTransition]]:
    out = []
    for t, values in series:
        out += [(t, tr) for tr in engine.evaluate(dict(values), t)]
    return out


# --- rate of rise ----------------------------------------------------------------------

def test_rate_raises_when_window_half_covered_and_clears_after_the_rise() -> None:
    # 1 cm/min for 20 minutes, then flat; a poll a minute.
    series = [(float(60 * i), {"level": 40.0 + min(i, 20)}) for i in range(40)]
    trs = run(RuleEngine((RISE,)), series)
    assert (trs[0][0], trs[0][1].state) == (300.0, "raised")  # 6 polls, 300 s span
    assert trs[0][1].value == pytest.approx(1.0)
    assert trs[0][1].threshold == 0.5
    [(t_clear, cleared)] = trs[1:]
    assert cleared.state == "cleared" and cleared.value < 0.25
    assert 20 * 60 < t_clear <= 20 * 60 + 600  # after the rise stopped, within one window


def test_one_wild_sample_neither_raises_nor_clears() -> None:
    flat = [(float(60 * i), {"level": 40.0}) for i in range(20)]
    flat[10] = (600.0, {"level": 300.0})  # one echo off a bird
    assert run(RuleEngine((RISE,)), flat) == []
    # ... even as the newest sample: it only counts once its neighbour confirms it.
    rule = RateAbove(RISE)
    for i in range(11):
        assert rule.feed({"level": 300.0 if i == 10 else 40.0}, 60.0 * i) is None


def test_rate_waits_for_enough_samples_and_ignores_non_numbers() -> None:
    rule = RateAbove(RISE)
    assert rule.feed({"level": 1.0}, 0) is None
    assert rule.feed({"level": 500.0}, 400) is None  # 2 samples only
    assert rule.feed({"other": 1.0}, 500) is None
    assert rule.feed({"level": float("nan")}, 600) is None
    assert rule.rate() is None


def test_clock_stepping_back_restarts_the_window() -> None:
    rule = RateAbove(RISE)
    for i in range(10):
        rule.feed({"level": float(i)}, 60.0 * i)
    assert rule.raised
    assert rule.feed({"level": 0.0}, 10.0) is None  # earlier than the last poll
    assert rule.rate() is None and rule.raised  # no decision on one sample: state is kept


@settings(max_examples=150, deadline=None)
@given(slope=st.floats(0, 3).filter(lambda s: abs(s - 0.5) > 0.05),
       dt=st.floats(30, 120), level=st.floats(-50, 300))
def test_rate_verdict_does_not_depend_on_sampling_interval(slope: float, dt: float,
                                                           level: float) -> None:
    rule = RateAbove(RISE)
    t = 0.0
    while t < 1500:
        rule.feed({"level": level + slope * t / 60}, t)
        t += dt
    rate = rule.rate()
    assert rate == pytest.approx(slope, abs=1e-6)
    assert rule.raised == (slope > 0.5)


@settings(max_examples=150, deadline=None)
@given(slope=st.floats(0, 0.25), dt=st.floats(30, 120), spike_at=st.integers(0, 60),
       spike=st.floats(-1000, 1000))
def test_slow_rise_with_one_spike_never_raises(slope: float, dt: float, spike_at: int,
                                               spike: float) -> None:
    engine = RuleEngine((RISE,))
    for i in range(60):
        level = 40 + slope * i * dt / 60 + (spike if i == spike_at else 0.0)
        assert engine.evaluate({"level": level}, i * dt) == []


# --- no flapping on a constant series (all rules) --------------------------------------

@settings(max_examples=200, deadline=None)
@given(level=st.floats(-100, 1000), flow=st.floats(0, 5), power=st.floats(0, 200),
       lamp=st.booleans(), dt=st.floats(10, 1800), start=st.integers(0, 86400 * 3))
def test_constant_series_never_flaps(level: float, flow: float, power: float, lamp: bool,
                                     dt: float, start: int) -> None:
    engine = RuleEngine((RISE, NIGHT, POWER))
    values: dict[str, Value] = {"level": level, "flow": flow, "active_power": power, "lamp_on": lamp}
    trs = [tr for i in range(400) for tr in engine.evaluate(values, DAY0 + start + i * dt)]
    # A constant input may raise once (a leak that never stops, a lamp that never goes out)
    # but never clears and raises again.
    assert all(tr.state == "raised" for tr in trs)
    assert len({tr.name for tr in trs}) == len(trs)
    assert "flood_rising_fast" not in {tr.name for tr in trs}


# --- night flow ------------------------------------------------------------------------

def local(day: int, hour: float) -> float:
    """UNIX time of ``hour`` (local, UTC+7) on local day ``day`` after DAY0."""
    return DAY0 + day * 86400 + hour * H - 7 * H


def test_leak_raises_once_per_night_two_hours_into_the_window_and_clears_on_zero() -> None:
    engine = RuleEngine((NIGHT,))
    every5min = [local(1, 0) + 300 * i for i in range(12 * 30)]  # 30 h from local midnight
    trs = run(engine, [(t, {"flow": 0.03}) for t in every5min])
    # Flowing since before the window: the run counts from 01:00, so 03:00 raises.
    assert [(t, tr.state) for t, tr in trs] == [(local(1, 3), "raised")]
    assert (trs[0][1].value, trs[0][1].threshold) == (0.03, 0.002)
    # Morning: the house is empty for a moment, the leak alarm clears...
    assert engine.evaluate({"flow": 0.0}, local(2, 9)) == [
        RuleTransition("night_flow_leak", "cleared", "warning", "flow", 0.0, 0.002)]
    # ... and the next night raises it again, once.
    trs = run(engine, [(local(2, 0) + 86400 + 300 * i, {"flow": 0.03}) for i in range(12 * 6)])
    assert [(t, tr.state) for t, tr in trs] == [(local(3, 3), "raised")]


def test_a_quiet_moment_in_the_window_is_no_leak() -> None:
    engine = RuleEngine((NIGHT,))
    series = [(local(1, 0) + 300 * i, {"flow": 0.03}) for i in range(12 * 6)]
    series[12 * 2 + 6] = (series[30][0], {"flow": 0.001})  # 02:30: below zero_below
    assert run(engine, series) == []


def test_flow_outside_the_window_does_not_count() -> None:
    engine = RuleEngine((NIGHT,))
    # Flow all evening, stopping at 00:50 local and restarting at 01:30 after a zero at 01:00.
    series = [(local(0, 18) + 600 * i, {"flow": 0.2}) for i in range(41)]
    series += [(local(1, 1), {"flow": 0.0})]
    series += [(local(1, 1.5) + 600 * i, {"flow": 0.2}) for i in range(18)]
    assert run(engine, series) == []


def test_a_gap_in_the_polls_restarts_the_count() -> None:
    engine = RuleEngine((NIGHT,))
    series = [(local(1, 1) + 300 * i, {"flow": 0.03}) for i in range(7)]  # 01:00-01:30
    series += [(local(1, 2.25) + 300 * i, {"flow": 0.03}) for i in range(21)]  # 02:15-03:55
    # 45 min unseen: the count restarts at 02:15 and only reaches 1 h 40 min.
    assert run(engine, series) == []
    # The same polls without the gap raise at 03:00.
    series = [(local(1, 1) + 300 * i, {"flow": 0.03}) for i in range(36)]
    assert [(t, tr.state) for t, tr in run(RuleEngine((NIGHT,)), series)] == [(local(1, 3), "raised")]


def test_time_zone_and_window_across_midnight() -> None:
    utc = NightFlowRule(type="night_flow", name="n", point="flow", start="23:00", end="02:00",
                        utc_offset="+00:00", min_duration=3600)
    ev = NightFlow(utc)
    assert ev.night(DAY0 + 22.9 * H) is None
    assert ev.night(DAY0 + 23 * H) == ev.night(DAY0 + 25.9 * H) is not None
    assert ev.night(DAY0 + 26 * H) is None
    trs = run(RuleEngine((utc,)), [(DAY0 + 20 * H + 600 * i, {"flow": 1.0}) for i in range(60)])
    assert [(t - DAY0, tr.state) for t, tr in trs] == [(24 * H, "raised")]
    west = utc.model_copy(update={"utc_offset": "-05:00"})
    trs = run(RuleEngine((west,)), [(DAY0 + 20 * H + 600 * i, {"flow": 1.0}) for i in range(60)])
    assert [(t - DAY0, tr.state) for t, tr in trs] == [(29 * H, "raised")]


def test_counter_mode_reads_a_totaliser() -> None:
    rule = NIGHT.model_copy(update={"point": "totaliser", "counter": True, "zero_below": 0.0005,
                                    "zero_period": 3600})
    engine = RuleEngine((rule,))
    # 2 L/h leak on a 1 L resolution register: the counter steps every half hour, so it is
    # never still for the hour that would count as "no flow".
    series = [(local(1, 0) + 300 * i, {"totaliser": 100 + 0.001 * ((i * 300) // 1800)})
              for i in range(12 * 5)]
    trs = run(engine, series)
    assert [(t, tr.state) for t, tr in trs] == [(local(1, 3), "raised")]
    # The leak is fixed: an hour after the counter's last step it counts as zero flow.
    last_step = local(1, 0) + 1800 * ((series[-1][0] - local(1, 0)) // 1800)
    total = series[-1][1]["totaliser"]
    assert engine.evaluate({"totaliser": total}, last_step + 3599) == []
    [tr] = engine.evaluate({"totaliser": total}, last_step + 3600)
    assert tr.state == "cleared"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(60, 3 * H), st.sampled_from([0.0, 0.0, 0.01, 0.5, 3.0])),
                min_size=1, max_size=200),
       st.integers(0, 86400))
def test_night_flow_only_raises_inside_the_window(steps: list[tuple[float, float]],
                                                  start: int) -> None:
    ev = NightFlow(NIGHT.model_copy(update={"min_duration": 1800}))
    t = float(DAY0 + start)
    nights: list[int] = []
    for dt, flow in steps:
        t += dt
        tr = ev.feed({"flow": flow}, t)
        if tr is not None and tr.state == "raised":
            hour = ((t + 7 * H) % 86400) / H
            assert 1.0 <= hour < 4.0
            night = ev.night(t)
            assert night is not None and night not in nights  # once per night
            nights.append(night)


# --- power while off -------------------------------------------------------------------

def test_power_while_off_needs_n_polls_and_clears_with_hysteresis() -> None:
    engine = RuleEngine((POWER,))

    def poll(i: int, lamp: bool, watts: float) -> list[str]:
        return [tr.state for tr in engine.evaluate({"lamp_on": lamp, "active_power": watts}, i)]

    assert poll(0, False, 0.5) == []  # standby
    assert poll(1, True, 60) == []  # lamp on: power is expected
    assert poll(2, False, 40) == poll(3, False, 40) == []
    assert poll(4, False, 0.5) == []  # streak broken
    assert poll(5, False, 40) == poll(6, False, 40) == []
    assert poll(7, False, 40) == ["raised"]
    assert poll(8, False, 4.5) == []  # inside the hysteresis band
    assert poll(9, False, 40) == []
    assert engine.evaluate({"lamp_on": False}, 10) == []  # missing point: state kept
    assert poll(11, True, 60) == ["cleared"]
    assert engine.active() == []


def test_shipped_profiles_carry_the_edge_rules() -> None:
    profiles = builtin_profiles()
    assert [r.type for r in profiles["flood-sensor"].rules] == ["rate_above"]
    assert [r.type for r in profiles["water-meter"].rules] == ["night_flow"]
    assert [r.type for r in profiles["streetlight"].rules] == ["power_while_off"]
    night = profiles["water-meter"].rules[0]
    assert isinstance(night, NightFlowRule)
    assert (night.start, night.end, night.offset_seconds) == ("01:00", "04:00", 7 * H)


# --- profile errors --------------------------------------------------------------------

BASE = """
name = "gauge"
kind = "gauge"
[[points]]
name = "level"
table = "input"
address = 0
[[points]]
name = "lamp_on"
table = "coil"
address = 0
type = "bool"
[[alarms]]
name = "high"
point = "level"
above = 10
"""


@pytest.mark.parametrize(("rule", "field", "problem"), [
    ('type = "slope"\nname = "r"\npoint = "level"', "rules.0", "does not match any of the expected tags"),
    ('type = "rate_above"\nname = "r"\npoint = "level"', "rules.0.rate_above.rate", "Field required"),
    ('type = "rate_above"\nname = "r"\npoint = "depth"\nrate = 1', "(top level)",
     "rules[0] ('r'): point 'depth' is not a point"),
    ('type = "rate_above"\nname = "r"\npoint = "level"\nrate = 1\nhysteresis = 1', "rules.0.rate_above",
     "smaller than 'rate'"),
    ('type = "night_flow"\nname = "r"\npoint = "level"\nstart = "25:00"', "rules.0.night_flow.start",
     "should match pattern"),
    ('type = "night_flow"\nname = "r"\npoint = "level"\nutc_offset = "7"', "rules.0.night_flow.utc_offset",
     "should match pattern"),
    ('type = "night_flow"\nname = "r"\npoint = "level"\nmin_duration = 20000', "rules.0.night_flow",
     "longer than the window 01:00-04:00"),
    ('type = "power_while_off"\nname = "r"\nswitch = "relay"\npoint = "level"', "(top level)",
     "rules[0] ('r'): switch 'relay' is not a point"),
    ('type = "power_while_off"\nname = "high"\nswitch = "lamp_on"\npoint = "level"', "(top level)",
     "names must be unique: high"),
])
def test_bad_rule_names_file_field_and_problem(tmp_path: Path, rule: str, field: str,
                                               problem: str) -> None:
    path = tmp_path / "gauge.toml"
    path.write_text(BASE + "[[rules]]\n" + rule + "\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert problem in info.value.problem
    assert str(path) in str(info.value)


# --- the simulator can produce the conditions -----------------------------------------

def test_simulator_set_control_holds_points_until_clear() -> None:
    from drivers.sim.cli import _Control
    from drivers.sim.server import Simulator

    sim = Simulator(builtin_profiles()["streetlight"], units=[1, 2], seed=1, tick=1.0)
    control = _Control(sim, line=False)
    control.apply("set active_power 40 1")
    control.apply("set lamp_on off 1")
    engine = RuleEngine(builtin_profiles()["streetlight"].rules)
    values = {p: sim.value(1, p) for p in ("lamp_on", "active_power")}
    assert values == {"lamp_on": False, "active_power": 40.0}
    assert [[tr.state for tr in engine.evaluate(values, t)] for t in range(3)] == [[], [], ["raised"]]
    assert sim.value(2, "active_power") != 40.0  # only unit 1 was told
    for bad in ("set lamp_on maybe", "set no_such_point 1", "set dim_level nan", "set dim_level"):
        with pytest.raises(ValueError, match=r"bad value|no point|expected"):
            control.apply(bad)
    control.apply("clear")
    assert sim.value(1, "active_power") != 40.0
