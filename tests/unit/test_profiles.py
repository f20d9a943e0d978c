"""Shipped device profiles load; broken profiles fail naming file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.errors import ProfileError
from drivers.modbus.plan import plan_reads
from drivers.profiles import builtin_profiles_dir, load_profile

SHIPPED = sorted(builtin_profiles_dir().glob("*.toml"))
MINE = ("streetlight", "water-meter", "flood-sensor")


def test_my_profiles_are_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= set(MINE)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    if profile.protocol == "modbus":
        assert plan_reads(profile.points)


def test_streetlight_layout() -> None:
    profile = load_profile(builtin_profiles_dir() / "streetlight.toml")
    points = {p.name: p for p in profile.points}
    assert 10 <= len(points) <= 14
    assert points["lamp_on"].table == "coil" and points["lamp_on"].writable
    assert points["dim_level"].table == "holding" and points["dim_level"].writable
    assert (points["lamp_fault"].address, points["lamp_fault"].bit) == (10, 0)
    assert (points["driver_fault"].address, points["driver_fault"].bit) == (10, 1)
    assert {a.name: a.when for a in profile.alarms} == {"lamp_fault": True, "driver_fault": True}


def test_water_meter_and_flood_sensor_rules() -> None:
    meter = load_profile(builtin_profiles_dir() / "water-meter.toml")
    totaliser = next(p for p in meter.points if p.name == "totaliser")
    assert (totaliser.type, totaliser.word_order, totaliser.scale) == ("uint32", "little", 0.001)
    assert {a.name for a in meter.alarms} == {"leak", "tamper", "reverse_flow", "low_battery"}
    flood = load_profile(builtin_profiles_dir() / "flood-sensor.toml")
    rules = {a.name: a for a in flood.alarms}
    assert (rules["flood_alert"].above, rules["flood_alert"].severity) == (150, "alert")
    assert (rules["flood_danger"].above, rules["flood_danger"].severity) == (200, "danger")
    assert rules["battery_low"].below == 3.3


GOOD_POINT = '[[points]]\nname = "level"\ntable = "input"\naddress = 0\n'
HEAD = 'name = "x"\nkind = "x"\n'

BROKEN = {
    "bad_type": (HEAD + GOOD_POINT + 'type = "int64"\n', "points.0.type", "int16"),
    "bit_on_coil": (
        HEAD + '[[points]]\nname = "relay"\ntable = "coil"\naddress = 0\ntype = "bool"\nbit = 3\n',
        "points.0", "holding/input",
    ),
    "coil_not_bool": (
        HEAD + '[[points]]\nname = "relay"\ntable = "coil"\naddress = 0\ntype = "uint16"\n',
        "points.0", "bool",
    ),
    "unknown_alarm_point": (
        HEAD + GOOD_POINT + '[[alarms]]\nname = "high"\npoint = "levle"\nabove = 3\n',
        "(top level)", "levle",
    ),
    "duplicate_names": (HEAD + GOOD_POINT + GOOD_POINT.replace("0\n", "1\n"), "(top level)",
                        "unique"),
    "toml_syntax": (HEAD + "[[points]\nname = 'x'\n", "(syntax)", "invalid TOML"),
    "unknown_key": (HEAD + GOOD_POINT + "scael = 0.1\n", "points.0.scael", "xtra"),
    "two_conditions": (
        HEAD + GOOD_POINT + '[[alarms]]\nname = "a"\npoint = "level"\nabove = 3\nbelow = 1\n',
        "alarms.0", "exactly one",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_profile_names_file_and_field(tmp_path: Path, case: str) -> None:
    text, field, problem = BROKEN[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert problem in err.problem
    assert str(path) in str(err) and field in str(err)
