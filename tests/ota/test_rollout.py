"""Rollout tallies (ota/rollout.py) from the devices' ota_status reports."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ota.rollout import should_halt, tally


def ev(device: str, state: str, release: str = "0.2.0", reason: str = "") -> dict[str, Any]:
    return {"type": "event", "event": "ota_status", "device_id": device, "state": state,
            "release": release, "reason": reason}


def test_latest_report_per_device_counts() -> None:
    recs = [ev("g1", "queued"), ev("g1", "success"), ev("g2", "failed", reason="health"),
            ev("g2", "rolled-back", reason="health"), ev("g3", "downloading"), ev("g4", "success", "0.1.0"),
            {"event": "agent_started", "device_id": "g5"}, ev("g6", "bogus"), {**ev("g7", "success"), "device_id": 7}]
    t = tally(recs, "0.2.0")
    assert (t.succeeded, t.failed, t.in_progress) == (["g1"], ["g2"], ["g3"])
    assert t.reasons == {"g2": "health"}
    assert t.failure_ratio() == 0.5


def test_halts_only_past_the_threshold_with_enough_answers() -> None:
    t = tally([ev("g1", "success"), ev("g2", "rolled-back")], "0.2.0")
    assert should_halt(t, max_failure_ratio=0.6)[0] is False
    halt, why = should_halt(t, max_failure_ratio=0.2)
    assert halt and "1 of 2 devices failed release 0.2.0" in why
    assert should_halt(t, max_failure_ratio=0.2, min_finished=3)[0] is False


def test_a_retry_that_worked_is_good() -> None:
    t = tally([ev("g1", "failed"), ev("g1", "queued"), ev("g1", "success")], "0.2.0")
    assert t.failed == [] and t.succeeded == ["g1"]


@given(st.lists(st.tuples(st.sampled_from(["g1", "g2", "g3"]),
                          st.sampled_from(["queued", "success", "failed", "rolled-back", "rejected", "verifying"]))))
def test_every_device_is_in_exactly_one_bucket(reports: list[tuple[str, str]]) -> None:
    t = tally([ev(d, s) for d, s in reports], "0.2.0")
    buckets = t.succeeded + t.failed + t.in_progress
    assert sorted(buckets) == sorted({d for d, _ in reports})
    assert 0.0 <= t.failure_ratio() <= 1.0
