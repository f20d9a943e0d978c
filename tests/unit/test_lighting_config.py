"""The ``[lighting]`` section: defaults, the state file beside the outbox, and every bad
field named (``urbanedge config check`` exits 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from tests.support.config_errors import assert_config_error

BASE = """
[identity]
gateway_id = "gw-1"
site = "site-1"
[buffer]
path = "data/outbox.db"
[[buses]]
name = "lan"
type = "modbus-tcp"
host = "127.0.0.1"
[[buses.devices]]
id = "light-1"
profile = "streetlight"
[[buses.devices]]
id = "meter-1"
profile = "water-meter"
unit = 2
"""


def test_off_by_default_vietnam_time_and_state_next_to_the_outbox(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(BASE)
    lt = load_config(tmp_path / "agent.toml").config.lighting
    assert not lt.enabled and lt.utc_offset == "+07:00" and lt.state == tmp_path / "data" / "lighting.json"
    assert lt.ambient is None and lt.traffic is None and lt.devices == []


def test_full_section(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(BASE + """
[lighting]
enabled = true
utc_offset = "+07:00"
schedule = ["18:00=100", "23:00=50", "05:30=off"]
devices = ["light-1"]
[lighting.ambient]
on_below = 20
off_above = 60
dwell = 90
[lighting.traffic]
above = 5
boost = 90
hold = 60
""")
    lt = load_config(tmp_path / "agent.toml").config.lighting
    assert lt.enabled and lt.devices == ["light-1"] and lt.ambient is not None and lt.traffic is not None
    assert (lt.ambient.on_below, lt.ambient.off_above, lt.ambient.dwell) == (20, 60, 90)
    assert (lt.traffic.above, lt.traffic.boost, lt.traffic.hold) == (5, 90, 60)


@pytest.mark.parametrize(("section", "field", "problem"), [
    ('schedule = ["18:00=100", "25:00=off"]', "lighting.schedule", "'25:00=off'"),
    ('schedule = ["18:00=140"]', "lighting.schedule", "outside 0..100"),
    ("schedule = []", "lighting.schedule", "at least one step"),
    ('utc_offset = "7"', "lighting.utc_offset", "match pattern"),
    ('devices = ["nope"]', "lighting.devices[0]", "no device 'nope'"),
    ('devices = ["meter-1"]', "lighting.devices[0]", "no writable dim_level"),
    ("[lighting.ambient]\non_below = 80\noff_above = 30", "lighting.ambient", "must be below off_above"),
    ("[lighting.traffic]\nboost = 101", "lighting.traffic.boost", "less than or equal to 100"),
    ("period = 0", "lighting.period", "greater than or equal to 0.2"),
])
def test_bad_lighting_section_names_field_and_problem(tmp_path: Path, section: str, field: str,
                                                      problem: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + "[lighting]\nenabled = true\n" + section + "\n")
    assert_config_error(path, field, problem)


def test_state_file_round_trip_atomic_and_a_corrupt_file_is_ignored(tmp_path: Path) -> None:
    from agent.control.lighting_task import StateFile

    store = StateFile(tmp_path / "state" / "lighting.json")
    assert store.load() == {}
    store.save({"schedule": ["18:00=100", "05:30=off"], "mode": "auto"})
    assert store.load() == {"schedule": ["18:00=100", "05:30=off"], "mode": "auto"}
    assert [p.name for p in store.path.parent.iterdir()] == ["lighting.json"]  # no temp file left
    store.path.write_text('{"schedule": ["18:00=1')  # torn by hand: the config's schedule runs
    assert store.load() == {}
    store.path.write_text("[1, 2]")
    assert store.load() == {}
