"""The pure lighting controller (agent/control/lighting.py): schedule lookup, ambient
hysteresis and dwell, traffic boost, manual holds; directly and with hypothesis."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.lighting import (
    DAY,
    AmbientRule,
    Controller,
    Decision,
    LightingError,
    Schedule,
    Settings,
    Step,
    TrafficRule,
    parse_step,
    parse_utc_offset,
)

VN = 7 * 3600
MIDNIGHT_VN = 1_795_539_600.0  # 2026-11-25 00:00 in Vietnam (17:00 UTC the day before)
NIGHT = Schedule.parse(["18:00=100", "23:00=50", "05:30=off"])


def at(hhmm: str, day: int = 0) -> float:
    h, m = hhmm.split(":")
    return MIDNIGHT_VN + day * DAY + int(h) * 3600 + int(m) * 60


def ctl(schedule: Schedule = NIGHT, **kw: object) -> Controller:
    return Controller(Settings(schedule=schedule, utc_offset=VN, **kw))  # type: ignore[arg-type]


def test_midnight_constant_is_local_midnight() -> None:
    assert (MIDNIGHT_VN + VN) % DAY == 0


@pytest.mark.parametrize(("text", "step"), [
    ("18:00=100", Step(64800, 100)), ("5:30 -> off", Step(19800, None)), (" 00:00 = 0 ", Step(0, 0)),
    ("23:59=OFF", Step(86340, None)), ("18:00:30=80", Step(64830, 80)),
])
def test_parse_step(text: str, step: Step) -> None:
    assert parse_step(text) == step


@pytest.mark.parametrize("text", ["24:00=10", "18:60=10", "18:00=101", "18:00", "18:00=-1", "dusk=100", "",
                                  "18:00=50%", "18:00:60=5"])
def test_bad_steps_are_refused_naming_the_step(text: str) -> None:
    with pytest.raises(LightingError, match="step"):
        parse_step(text)


def test_bad_schedules() -> None:
    with pytest.raises(LightingError, match="at least one"):
        Schedule.parse([])
    with pytest.raises(LightingError, match="two steps at 18:00"):
        Schedule.parse(["18:00=100", "18:00=off"])


def test_utc_offset() -> None:
    assert parse_utc_offset("+07:00") == VN
    assert parse_utc_offset("-03:30") == -(3 * 3600 + 1800)
    with pytest.raises(LightingError):
        parse_utc_offset("7")


def test_schedule_in_local_time_wrapping_midnight() -> None:
    c = ctl()
    assert c.decide("l", at("17:59")) == Decision(False, None, "schedule")
    assert c.decide("l", at("18:00")) == Decision(True, 100, "schedule")
    assert c.decide("l", at("23:30")) == Decision(True, 50, "schedule")
    assert c.decide("l", at("00:10", 1)) == Decision(True, 50, "schedule")  # yesterday's last step
    assert c.decide("l", at("05:30", 1)) == Decision(False, None, "schedule")
    # 18:00 in Hanoi is 11:00 UTC: the same instant in UTC+0 is still day.
    utc = Controller(Settings(schedule=NIGHT, utc_offset=0))
    assert utc.decide("l", at("18:00")).lamp_on is False


def test_ambient_dark_day_and_bright_evening_with_dwell() -> None:
    c = ctl(ambient=AmbientRule(on_below=30, off_above=80, dwell=60, level=90))
    c.feed("l", at("14:00"), {"ambient_lux": 5000})
    assert c.decide("l", at("14:00")) == Decision(False, None, "schedule")
    # A storm darkens the afternoon: on only once it held for the dwell.
    for s in range(0, 60, 10):
        c.feed("l", at("14:01") + s, {"ambient_lux": 10})
        assert c.decide("l", at("14:01") + s).lamp_on is False
    c.feed("l", at("14:02"), {"ambient_lux": 10})
    assert c.decide("l", at("14:02")) == Decision(True, 90, "ambient")
    # Between the thresholds nothing changes (hysteresis); a headlight flash does not count.
    c.feed("l", at("14:10"), {"ambient_lux": 50})
    c.feed("l", at("14:11"), {"ambient_lux": 20000})
    c.feed("l", at("14:11") + 30, {"ambient_lux": 10})
    c.feed("l", at("14:13"), {"ambient_lux": 10})
    assert c.decide("l", at("14:13")).lamp_on is True
    # A bright summer evening after 18:00: the schedule says on, the photocell off.
    c.feed("l", at("18:00"), {"ambient_lux": 500})
    c.feed("l", at("18:01"), {"ambient_lux": 500})
    assert c.decide("l", at("18:01")) == Decision(False, None, "ambient")
    c.feed("l", at("18:30"), {"ambient_lux": 2})
    c.feed("l", at("18:31"), {"ambient_lux": 2})
    assert c.decide("l", at("18:31")) == Decision(True, 100, "schedule")  # dark again: the schedule's level


def test_no_lux_reading_means_schedule_only() -> None:
    c = ctl(ambient=AmbientRule(30, 80, 60))
    c.feed("l", at("12:00"), {"ambient_lux": None, "other": 3})
    assert c.decide("l", at("19:00")) == Decision(True, 100, "schedule")


def test_traffic_boost_holds_then_falls_back() -> None:
    c = ctl(traffic=TrafficRule(above=10, boost=80, hold=120))
    c.feed("l", at("23:30"), {"traffic_count": 25})
    assert c.decide("l", at("23:30")) == Decision(True, 80, "traffic")
    assert c.decide("l", at("23:31")) == Decision(True, 80, "traffic")
    c.feed("l", at("23:31"), {"traffic_count": 3})
    assert c.decide("l", at("23:32") + 1) == Decision(True, 50, "schedule")
    # Never below the schedule level, and never lights a lamp the schedule has off.
    c.feed("l", at("19:00"), {"traffic_count": 99})
    assert c.decide("l", at("19:00")) == Decision(True, 100, "schedule")
    c.feed("l", at("12:00"), {"traffic_count": 99})
    assert c.decide("l", at("12:00")) == Decision(False, None, "schedule")
    c.feed("l", at("23:40"), {"traffic_count": 10})  # "more than" the threshold
    assert c.decide("l", at("23:40")).reason == "schedule"


def test_a_new_schedule_ends_a_hold_at_its_own_next_step() -> None:
    c = ctl()
    c.manual("l", at("19:00"), level=40)  # held until 23:00 on the night schedule
    c.set_schedule(Schedule.parse(["19:10=30", "20:00=70"]), at("19:01"))
    assert c.decide("l", at("19:09")) == Decision(None, 40, "manual")
    assert c.decide("l", at("19:10")) == Decision(True, 30, "schedule")
    # A hold that ends sooner than the new schedule's next step is not stretched.
    c.manual("l", at("19:20"), level=10)
    c.set_schedule(Schedule.parse(["19:10=30", "21:00=70"]), at("19:21"))
    assert c.decide("l", at("19:59")).reason == "manual" and c.decide("l", at("20:00")).reason == "schedule"


def test_manual_holds_until_the_next_step_and_auto_resumes() -> None:
    c = ctl(traffic=TrafficRule(above=10, boost=100, hold=120))
    c.manual("l", at("19:00"), level=20)
    c.feed("l", at("19:30"), {"traffic_count": 50})
    assert c.decide("l", at("19:30")) == Decision(None, 20, "manual")
    c.manual("l", at("20:00"), lamp_on=False)
    assert c.decide("l", at("22:59")) == Decision(False, 20, "manual")
    assert c.decide("l", at("23:00")) == Decision(True, 50, "schedule")
    assert c.decide("other", at("20:00")).reason == "schedule"  # per device
    # After the last step of the day the hold runs to the first step of the next day.
    c.manual("l", at("06:00"), lamp_on=True)
    assert c.decide("l", at("17:59")).reason == "manual"
    assert c.decide("l", at("18:00")).reason == "schedule"
    c.manual("l", at("19:00"), level=5)
    c.mode = "manual"
    assert c.decide("other", at("19:00")) == Decision(None, None, "manual")
    c.resume()
    assert c.decide("l", at("19:00")) == Decision(True, 100, "schedule")


def test_non_numeric_readings_are_ignored() -> None:
    c = ctl(ambient=AmbientRule(30, 80, 0), traffic=TrafficRule(1, 100, 60))
    c.feed("l", at("12:00"), {"ambient_lux": True, "traffic_count": float("nan")})
    assert c.decide("l", at("12:00")) == Decision(False, None, "schedule")


def test_rule_parameters_are_checked() -> None:
    with pytest.raises(LightingError):
        AmbientRule(on_below=80, off_above=30)
    with pytest.raises(LightingError):
        TrafficRule(above=5, boost=120)


# -- properties ---------------------------------------------------------------------------

steps = st.dictionaries(st.integers(0, DAY - 1), st.one_of(st.none(), st.integers(0, 100)), min_size=1, max_size=8)


def schedule_of(d: dict[int, int | None]) -> Schedule:
    return Schedule.parse([str(Step(m, lv)) for m, lv in d.items()])


@given(steps, st.integers(0, DAY - 1))
def test_schedule_lookup_is_the_latest_step_at_or_before_wrapping_midnight(d: dict[int, int | None],
                                                                          second: int) -> None:
    sched = schedule_of(d)
    earlier = [m for m in d if m <= second]
    expect = max(earlier) if earlier else max(d)  # before the first step: yesterday's last
    assert sched.level_at(second) == d[expect]
    assert sched.level_at(second + DAY) == sched.level_at(second)
    nxt = sched.next_change(second)
    assert 0 < nxt <= DAY
    assert sched.level_at(second + nxt) == d[sorted(d)[(sorted(d).index(expect) + 1) % len(d)]]


events = st.lists(st.tuples(st.floats(0.1, 400), st.integers(0, 2000), st.integers(0, 60)), min_size=1,
                  max_size=60)


@settings(max_examples=200)
@given(steps, st.integers(0, DAY - 1), events, st.integers(0, 100), st.integers(0, 100), st.floats(0, 300))
def test_levels_in_range_boost_never_below_schedule_no_flicker(
        d: dict[int, int | None], start: int, evs: list[tuple[float, int, int]], boost: int, amb_level: int,
        dwell: float) -> None:
    c = ctl(schedule_of(d), ambient=AmbientRule(30, 80, dwell, amb_level), traffic=TrafficRule(10, boost, 90))
    t = MIDNIGHT_VN + start
    flips: list[float] = []
    last_on: bool | None = None
    for gap, lux, count in evs:
        t += gap
        c.feed("l", t, {"ambient_lux": lux, "traffic_count": count})
        dec = c.decide("l", t)
        scheduled = c.settings.schedule.level_at(c.local_second(t))
        assert dec.reason != "manual"
        if dec.lamp_on:
            assert dec.level is not None and 0 <= dec.level <= 100
            if scheduled is not None:
                assert dec.level >= scheduled  # boost and ambient never dim below the schedule
        else:
            assert dec.level is None
        # The ambient verdict changes at most once per dwell.
        dark = c.devices["l"].dark
        if last_on is not None and dark != last_on:
            flips.append(t)
        last_on = dark
    assert all(b - a >= dwell for a, b in itertools.pairwise(flips))


@given(steps, st.integers(0, DAY - 1), st.integers(0, 100), st.floats(0, 2 * DAY))
def test_manual_hold_ends_exactly_at_the_next_step(d: dict[int, int | None], start: int, level: int,
                                                   later: float) -> None:
    c = ctl(schedule_of(d))
    t0 = MIDNIGHT_VN + start
    c.manual("l", t0, level=level)
    end = t0 + c.settings.schedule.next_change(c.local_second(t0))
    dec = c.decide("l", t0 + later)
    assert (dec.reason == "manual") == (t0 + later < end)


def test_holds_and_boosts_survive_a_restart_by_wall_clock() -> None:
    c = ctl(traffic=TrafficRule(above=10, boost=80, hold=600))
    c.manual("l", at("19:00"), level=20)  # until 23:00
    c.manual("m", at("19:00"), lamp_on=False)
    c.feed("t", at("23:30"), {"traffic_count": 50})  # boost until 23:40
    saved = json.loads(json.dumps(c.holds(at("19:00"))))  # through the state file's JSON
    assert saved["l"] == {"manual": {"lamp_on": None, "level": 20, "until": at("23:00")}}
    after = ctl(traffic=TrafficRule(above=10, boost=80, hold=600))
    assert after.restore(saved, at("19:05")) == []
    assert after.decide("l", at("22:59")) == Decision(None, 20, "manual")
    assert after.decide("m", at("19:05")) == Decision(False, None, "manual")
    assert after.decide("l", at("23:00")) == Decision(True, 50, "schedule")
    assert after.decide("t", at("23:35")) == Decision(True, 80, "traffic")
    assert after.decide("t", at("23:41")) == Decision(True, 50, "schedule")
    # Down past the end of a hold: it is gone, not resumed.
    late = ctl()
    assert late.restore(saved, at("23:01")) == [] and late.decide("l", at("23:01")).reason == "schedule"
    assert set(late.holds(at("23:01"))) == {"t"}  # only the boost (till 23:40) is still to come


@pytest.mark.parametrize("saved", [
    {"l": {"manual": {"lamp_on": "yes", "level": 20, "until": None}}},
    {"l": {"manual": {"lamp_on": None, "level": 120, "until": None}}},
    {"l": {"manual": {"level": 20}}},
    {"l": {"boost_until": "soon"}},
    {"l": 7},
    [1, 2],
])
def test_a_malformed_saved_hold_is_skipped_and_named(saved: object) -> None:
    c = ctl()
    skipped = c.restore(saved, at("19:00"))
    assert len(skipped) == 1
    assert c.decide("l", at("19:00")) == Decision(True, 100, "schedule")
