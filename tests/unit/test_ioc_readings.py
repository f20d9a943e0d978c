"""`urbanedge ioc readings --wait-for POINT=VALUE`: parsing and matching, and the store tail the
operator tools wait on (a real SQLite reading store)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioc.readings import matches, parse_expect
from ioc.store import open_store
from ioc.store_tail import StoreTail


def test_parse_expect() -> None:
    assert parse_expect("dim_level=40") == ("dim_level", 40.0)
    assert parse_expect("lamp_on=off") == ("lamp_on", False)
    for bad in ("dim_level", "=4", "dim_level=", "dim_level=high", "x=nan", "x=inf"):
        with pytest.raises(ValueError):
            parse_expect(bad)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9))
def test_a_value_matches_itself_and_not_its_neighbour(x: float) -> None:
    assert matches({"p": x}, "p", x)
    assert not matches({"p": x + max(1.0, abs(x) * 1e-3)}, "p", x)
    assert not matches({}, "p", x)


def test_bools_and_strings() -> None:
    assert matches({"lamp_on": True}, "lamp_on", True) and not matches({"lamp_on": False}, "lamp_on", True)
    assert not matches({"p": "junk"}, "p", 1.0)
    assert math.isfinite(parse_expect("p=1e3")[1])


def telemetry(seq: int, level: int) -> dict[str, object]:
    return {"type": "telemetry", "seq": seq, "ts": 1_700_000_000.0 + seq, "device_id": "light-1",
            "kind": "streetlight", "quality": "good", "values": {"dim_level": level}}


def test_tail_yields_each_record_once_and_from_now_skips_the_past(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'ioc.db'}"
    assert list(StoreTail(url).new()) == []  # no store yet: nothing, and nothing created
    assert not (tmp_path / "ioc.db").exists()
    with open_store(url) as store:
        store.accept("gw-1", [telemetry(0, 10), telemetry(1, 20)], received_at=0)
    everything, later = StoreTail(url), StoreTail(url, from_now=True)
    assert [r["seq"] for r in everything.new()] == [0, 1]
    with open_store(url) as store:
        store.accept("gw-1", [telemetry(2, 40)], received_at=0)
        store.accept("gw-2", [telemetry(0, 5)], received_at=0)
    assert [(r["source"], r["seq"]) for r in everything.new()] == [("gw-1", 2), ("gw-2", 0)]
    assert [(r["source"], r["seq"]) for r in later.new()] == [("gw-1", 2), ("gw-2", 0)]
    assert list(later.new()) == []


def test_waiting_needs_a_store_and_bad_expectations_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "urbanedge", "ioc"]
    res = subprocess.run([*run, "command", "--gateway", "gw", "--site", "s", "--wait-for", "done", "on"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--wait-for needs --store" in res.stderr
    res = subprocess.run([*run, "readings", "--store", f"sqlite:{tmp_path / 'x.db'}", "--wait-for", "dim_level"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "expected POINT=VALUE" in res.stderr
    args = tmp_path / "opts.args"
    args.write_text("--gateway\ngw\n--site\ns\n--wait-for\ndone\n")
    res = subprocess.run([*run, "command", f"@{args}", "on"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--wait-for needs --store" in res.stderr  # options from the @file


def ev(seq: int, name: str, **body: object) -> dict[str, object]:
    return {"type": "event", "seq": seq, "ts": 1_700_000_000.0 + seq, "device_id": "gw-1", "event": name, **body}


def test_a_config_command_is_followed_to_the_end_of_its_trial(tmp_path: Path) -> None:
    from ioc.command_wait import wait_result

    url = f"sqlite:{tmp_path / 'ioc.db'}"
    with open_store(url) as store:
        store.accept("gw-1", [ev(0, "command_result", id="c1", cmd="config", state="accepted"),
                              ev(1, "command_result", id="c1", cmd="config", state="done"),
                              ev(2, "config_status", id="other", state="applied"),
                              ev(3, "config_status", id="c1", state="rolled-back", reason="uplink")],
                     received_at=0)
    seen: list[str] = []
    assert wait_result(StoreTail(url), "c1", timeout=0, say=seen.append) == "done"
    assert wait_result(StoreTail(url), "c1", timeout=0, say=seen.append, config_outcome=True) == "rolled-back"
    assert seen[-1] == "gw-1: config rolled-back (uplink)"
    assert wait_result(StoreTail(url), "nope", timeout=0, say=seen.append) is None


def test_ioc_events_lists_and_filters(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:{tmp_path / 'ioc.db'}"
    with open_store(url) as store:
        store.accept("gw-1", [ev(0, "security", reason="replayed"), telemetry(1, 40),
                              ev(2, "config_status", id="c1", state="applied")], received_at=0)
    run = [sys.executable, "-m", "urbanedge", "ioc", "events", "--store", url]
    res = subprocess.run([*run, "--event", "config_status"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 1 and "state=applied" in res.stdout
    res = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["event"] for line in res.stdout.splitlines()] == ["security", "config_status"]
    res = subprocess.run([*run, "--wait-for", "state"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "FIELD=VALUE" in res.stderr
    res = subprocess.run([*run, "--wait-for", "state=applied", "--timeout", "0"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1  # only new events count when waiting
