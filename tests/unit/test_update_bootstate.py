"""The A/B boot state machine (agent/update/bootstate.py): pure, so every path is checked here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.update.bootstate import (
    BadBootState,
    BootState,
    abandon,
    begin_trial,
    commit,
    decide_boot,
    inactive,
    without_pending,
)


def test_factory_boots_factory() -> None:
    d = decide_boot(BootState())
    assert (d.run, d.trial, d.fell_back) == ("factory", False, False)
    assert inactive(BootState()) == "a"


def test_trial_counts_boots_before_running_then_falls_back() -> None:
    s = begin_trial(BootState(), "a", "0.2.0", 2)
    runs = []
    for _ in range(3):
        d = decide_boot(s, max_tries=3)
        runs.append((d.run, d.trial))
        s = d.state
    assert runs == [("a", True)] * 3
    assert s.trial is not None and s.trial.tries == 3
    d = decide_boot(s, max_tries=3)
    assert (d.run, d.trial, d.fell_back) == ("factory", False, True)
    assert d.state.trial is None
    assert d.state.pending[-1]["state"] == "rolled-back"
    assert d.state.pending[-1]["release"] == "0.2.0"
    assert d.state.counter == 0  # a failed release never raises the anti-rollback floor


def test_commit_moves_committed_and_floor() -> None:
    s = commit(begin_trial(BootState(), "a", "0.2.0", 2))
    assert (s.committed, s.version, s.counter, s.trial) == ("a", "0.2.0", 2, None)
    assert inactive(s) == "b"
    s2 = commit(begin_trial(s, "b", "0.3.0", 3))
    assert (s2.committed, inactive(s2)) == ("b", "a")


def test_abandon_reports_and_keeps_committed() -> None:
    s = commit(begin_trial(BootState(), "a", "0.2.0", 2))
    s = abandon(begin_trial(s, "b", "0.3.0", 3), "health check failed")
    assert (s.committed, s.trial, s.counter) == ("a", None, 2)
    assert s.pending == ({"state": "rolled-back", "release": "0.3.0", "counter": 3,
                          "reason": "health check failed"},)
    assert without_pending(s, 1).pending == ()


def test_never_a_trial_in_the_running_slot() -> None:
    s = commit(begin_trial(BootState(), "a", "0.2.0", 2))
    with pytest.raises(ValueError):
        begin_trial(s, "a", "0.3.0", 3)
    with pytest.raises(ValueError):
        begin_trial(s, "factory", "0.3.0", 3)


@pytest.mark.parametrize("raw", [
    None, [], {"v": 2, "committed": "a"}, {"v": 1}, {"v": 1, "committed": "c"},
    {"v": 1, "committed": "a", "counter": -1}, {"v": 1, "committed": "a", "counter": True},
    {"v": 1, "committed": "a", "trial": {"slot": "a", "version": "1", "counter": 1}},
    {"v": 1, "committed": "a", "trial": {"slot": "b"}}, {"v": 1, "committed": "a", "pending": [1]},
])
def test_corrupt_state_is_named(raw: object) -> None:
    with pytest.raises(BadBootState):
        BootState.from_json(raw)


slots = st.sampled_from(["a", "b"])
ops = st.lists(st.sampled_from(["boot", "install", "commit", "abandon"]), max_size=40)


@given(ops)
def test_any_sequence_keeps_invariants(seq: list[str]) -> None:
    """Whatever happens, the state round-trips through JSON, the committed slot is never
    overwritten, and the anti-rollback floor never goes down."""
    s, counter, floor = BootState(), 1, 0
    for op in seq:
        if op == "boot":
            s = decide_boot(s, max_tries=2).state
        elif op == "install" and s.trial is None:
            counter += 1
            s = begin_trial(s, inactive(s), f"0.{counter}", counter)
            assert s.trial is not None and s.trial.slot != s.committed
        elif op == "commit" and s.trial is not None:
            s = commit(s)
        elif op == "abandon" and s.trial is not None:
            s = abandon(s, "x")
        assert s.counter >= floor
        floor = s.counter
        assert BootState.from_json(s.to_json()) == s


def test_a_failed_target_is_remembered_both_ways() -> None:
    s = begin_trial(BootState(), "a", "0.2.0", 2, target="gateway/urbanedge-0.2.0.tar.gz")
    assert abandon(s, "x").failed == ("gateway/urbanedge-0.2.0.tar.gz",)
    for _ in range(3):
        s = decide_boot(s, max_tries=3).state
    s = decide_boot(s, max_tries=3).state
    assert s.failed == ("gateway/urbanedge-0.2.0.tar.gz",)
    assert BootState.from_json(s.to_json()) == s
