"""The trial of a remote configuration: the pure state machine (agent/reconfig/trial), and the
file steps around it (agent/reconfig/files) interrupted after every single write."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import load_config
from agent.reconfig.files import ConfigFiles, atomic_write, sha256
from agent.reconfig.remote import fail_start, prepare_start
from agent.reconfig.trial import (
    FIXED_FIELDS,
    TrialRecord,
    TrialRecordError,
    begin,
    decide_start,
    forbidden_changes,
    judge,
    parse_args,
    rolled_back,
)
from agent.update.health import HealthSample, evaluate

OLD, NEW, OTHER = "a" * 64, "b" * 64, "c" * 64
T0 = 1_800_000_000.0


def trial(deadline: float = 30) -> TrialRecord:
    return begin("c0ffee", NEW, OLD, now=T0, deadline=deadline)


def sample(uplink: bool = True, acked: int = 1, polled: int = 1, written: int = 1) -> HealthSample:
    return HealthSample(uplink_online=uplink, acked_records=acked, records_written=written,
                        buses_polled={"lan": polled})


# -- at start --------------------------------------------------------------------------------


@pytest.mark.parametrize(("rec", "live", "now", "kind", "phase", "reason"), [
    (None, OLD, T0, "run", None, None),
    (trial(), NEW, T0 + 1, "trial", "trial", ""),
    (trial(), NEW, T0 + 30, "rollback", "rolled-back", "deadline"),
    (trial(), OLD, T0 + 1, "rollback", "rolled-back", "interrupted"),  # the switch never happened
    (trial(), OTHER, T0 + 1, "report", "abandoned", "edited"),
    (trial(), None, T0 + 1, "report", "abandoned", "edited"),
    (rolled_back(trial(), "uplink", "x"), NEW, T0 + 40, "rollback", "rolled-back", "uplink"),  # restore pending
    (rolled_back(trial(), "uplink", "x"), OLD, T0 + 40, "report", "rolled-back", "uplink"),
    (dataclasses.replace(trial(), phase="applied"), NEW, T0 + 5, "report", "applied", ""),
])
def test_decide_start(rec: TrialRecord | None, live: str | None, now: float, kind: str, phase: str | None,
                      reason: str | None) -> None:
    d = decide_start(rec, live, now)
    assert d.kind == kind
    assert (d.record.phase if d.record else None) == phase
    assert (d.record.reason if d.record else None) == reason


# -- on trial --------------------------------------------------------------------------------


def test_judge() -> None:
    rec = trial(10)
    assert judge(rec, evaluate(sample()), T0 + 1).kind == "commit"
    assert judge(rec, evaluate(sample(uplink=False, acked=0)), T0 + 9.9).kind == "wait"
    j = judge(rec, evaluate(sample(uplink=False, acked=0)), T0 + 10)
    assert (j.kind, j.record.phase, j.record.reason) == ("rollback", "rolled-back", "uplink")
    assert "uplink never connected" in j.record.detail
    j = judge(rec, evaluate(sample(polled=0)), T0 + 11)
    assert (j.kind, j.record.reason) == ("rollback", "buses")
    # Connected but nothing acknowledged: the IOC-bound path does not work end to end.
    assert judge(rec, evaluate(sample(acked=0)), T0 + 11).record.reason == "uplink"


samples = st.builds(sample, st.booleans(), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))


@settings(max_examples=300)
@given(st.floats(2, 600), st.lists(st.tuples(st.floats(0, 5), samples), min_size=1, max_size=40))
def test_a_trial_never_keeps_a_sick_config_nor_drops_a_healthy_one(deadline: float,
                                                                   looks: list[tuple[float, HealthSample]]) -> None:
    rec, now = trial(deadline), T0
    for step, s in looks:
        now += step
        verdict = evaluate(s)
        j = judge(rec, verdict, now)
        if verdict.ok:
            assert j.kind == "commit" and j.record.phase == "applied"
        elif now < rec.deadline:
            assert j.kind == "wait" and j.record == rec
        else:
            assert j.kind == "rollback" and j.record.reason in ("uplink", "buses") and j.record.detail
        if j.kind != "wait":
            # Whatever was decided is final at the next start, whatever the live file is then.
            assert decide_start(j.record, NEW, now + 1000).record.phase == j.record.phase  # type: ignore[union-attr]
            return


@settings(max_examples=200)
@given(st.builds(TrialRecord, st.text(max_size=8), st.sampled_from(["trial", "applied", "rolled-back", "abandoned"]),
                 st.floats(0, 2e9), st.floats(0, 2e9), st.text(max_size=64), st.text(max_size=64),
                 st.text(max_size=10), st.text(max_size=10)))
def test_record_round_trip(rec: TrialRecord) -> None:
    assert TrialRecord.from_dict(rec.to_dict()) == rec


@pytest.mark.parametrize("raw", [None, [], {"id": "x"}, {**trial().to_dict(), "phase": "maybe"},
                                 {**trial().to_dict(), "deadline": "soon"}, {**trial().to_dict(), "extra": 1},
                                 {**trial().to_dict(), "new_sha256": 5}])
def test_a_bad_record_is_named(raw: Any) -> None:
    with pytest.raises(TrialRecordError):
        TrialRecord.from_dict(raw)


# -- the command's args and what may not change -------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    ({}, "args.toml"), ({"toml": "  "}, "args.toml"), ({"toml": 5}, "args.toml"),
    ({"toml": "x=1", "deadline": True}, "number"), ({"toml": "x=1", "deadline": 1}, "outside"),
    ({"toml": "x=1", "deadline": 4000}, "outside"), ({"toml": "x=1", "deadline": float("nan")}, "number"),
    ({"toml": "x=1", "reboot": True}, "unknown args: reboot"),
])
def test_bad_args(args: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_args(args)


def test_args() -> None:
    assert parse_args({"toml": "x = 1"}) == ("x = 1", 120.0)
    assert parse_args({"toml": "x = 1", "deadline": 5}) == ("x = 1", 5.0)


def base_toml(**over: str) -> str:
    v = {"gw": "gw-1", "site": "s1", "host": "127.0.0.1", "outbox": "outbox.db", "interval": "60"} | over
    return (f'[identity]\ngateway_id = "{v["gw"]}"\nsite = "{v["site"]}"\n[broker]\nhost = "{v["host"]}"\n'
            f'[buffer]\npath = "{v["outbox"]}"\n[[buses]]\nname = "lan"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\n'
            f'[[buses.devices]]\nid = "l1"\nprofile = "streetlight"\ninterval = {v["interval"]}\n')


def test_forbidden_changes(tmp_path: Path) -> None:
    def load(name: str, text: str) -> Any:
        (tmp_path / name).write_text(text)
        return load_config(tmp_path / name).config

    live = load("live.toml", base_toml())
    assert forbidden_changes(live, load("a.toml", base_toml(host="10.0.0.9", interval="5"))) == []
    # Relative paths resolve next to the file: the same outbox written another way is no change.
    assert forbidden_changes(live, load("b.toml", base_toml(outbox=str(tmp_path / "outbox.db")))) == []
    changed = forbidden_changes(live, load("c.toml", base_toml(gw="gw-2", outbox="elsewhere.db")))
    assert [c.split(":")[0] for c in changed] == ["identity.gateway_id", "buffer.path"]
    assert "gw-1 -> gw-2" in changed[0]
    assert "identity.gateway_id" in FIXED_FIELDS


# -- the files, interrupted after every write ----------------------------------------------------

LIVE_OLD, LIVE_NEW = base_toml().encode(), base_toml(interval="5").encode()


def switch_steps(files: ConfigFiles, rec: TrialRecord) -> list[Any]:
    """The writes of ConfigFiles.switch, one by one (each is atomic on its own)."""
    return [lambda: atomic_write(files.prev, LIVE_OLD), lambda: files.save(rec),
            lambda: atomic_write(files.live, LIVE_NEW)]


def rollback_steps(files: ConfigFiles, rec: TrialRecord) -> list[Any]:
    decided = rolled_back(rec, "uplink", "no uplink")
    return [lambda: files.save(decided), lambda: files.restore(decided)]


@pytest.mark.parametrize("done", range(4))
def test_a_switch_interrupted_anywhere_leaves_a_loadable_config_and_a_record_that_decides(
        tmp_path: Path, done: int) -> None:
    files = ConfigFiles(tmp_path / "agent.toml")
    files.live.write_bytes(LIVE_OLD)
    rec = begin("c0ffee", sha256(LIVE_NEW), sha256(LIVE_OLD), now=T0, deadline=30)
    for step in switch_steps(files, rec)[:done]:
        step()
    d = prepare_start(files.live, now=T0 + 1)
    load_config(files.live)
    expected = {0: ("run", LIVE_OLD), 1: ("run", LIVE_OLD), 2: ("rollback", LIVE_OLD), 3: ("trial", LIVE_NEW)}
    assert (d.kind, files.live.read_bytes()) == expected[done]
    if done == 2:
        assert files.load() == rolled_back(rec, "interrupted", "stopped before the new file was in place")


@pytest.mark.parametrize("done", range(3))
def test_a_rollback_interrupted_anywhere_still_ends_on_the_previous_file(tmp_path: Path, done: int) -> None:
    files = ConfigFiles(tmp_path / "agent.toml")
    files.live.write_bytes(LIVE_OLD)
    rec = begin("c0ffee", sha256(LIVE_NEW), sha256(LIVE_OLD), now=T0, deadline=30)
    for step in switch_steps(files, rec):
        step()
    for step in rollback_steps(files, rec)[:done]:
        step()
    # Started again after the deadline: whatever was done, it ends on the old file, reported once.
    d = prepare_start(files.live, now=T0 + 60)
    assert files.live.read_bytes() == LIVE_OLD
    stored = files.load()
    assert stored is not None and stored.phase == "rolled-back"
    assert stored.reason == ("deadline" if done == 0 else "uplink")
    assert d.kind in ("rollback", "report")
    assert prepare_start(files.live, now=T0 + 61).kind == "report"  # idempotent


def test_fail_start_rolls_back_only_a_config_on_trial(tmp_path: Path) -> None:
    files = ConfigFiles(tmp_path / "agent.toml")
    files.live.write_bytes(LIVE_OLD)
    assert not fail_start(files.live, "broken")  # nothing on trial: the operator's own config
    rec = begin("c0ffee", sha256(LIVE_NEW), sha256(LIVE_OLD), now=T0, deadline=30)
    files.switch(rec, LIVE_NEW, LIVE_OLD)
    assert files.live.read_bytes() == LIVE_NEW and not files.new.exists()
    assert fail_start(files.live, "seal.key: cannot read")
    assert files.live.read_bytes() == LIVE_OLD
    stored = files.load()
    assert stored is not None and (stored.phase, stored.reason, stored.detail) == (
        "rolled-back", "start", "seal.key: cannot read")


def test_a_lost_previous_file_is_reported_not_hidden(tmp_path: Path) -> None:
    files = ConfigFiles(tmp_path / "agent.toml")
    files.live.write_bytes(LIVE_OLD)
    rec = begin("c0ffee", sha256(LIVE_NEW), sha256(LIVE_OLD), now=T0, deadline=30)
    files.switch(rec, LIVE_NEW, LIVE_OLD)
    files.prev.write_bytes(b"something else")
    out = files.roll_back(rolled_back(rec, "uplink", "x"))
    assert "RESTORE FAILED" in out.detail and files.live.read_bytes() == LIVE_NEW


def test_an_unreadable_record_is_set_aside(tmp_path: Path) -> None:
    files = ConfigFiles(tmp_path / "agent.toml")
    files.live.write_bytes(LIVE_OLD)
    files.trial.write_text("{not json")
    assert prepare_start(files.live, now=T0).kind == "run"
    assert not files.trial.exists() and files.trial.with_name(files.trial.name + ".bad").exists()


def test_files_keep_the_live_configs_permissions() -> None:
    with tempfile.TemporaryDirectory() as d:
        files = ConfigFiles(Path(d) / "agent.toml")
        files.live.write_bytes(LIVE_OLD)
        files.live.chmod(0o640)
        files.switch(begin("c0ffee", sha256(LIVE_NEW), sha256(LIVE_OLD), now=T0, deadline=30), LIVE_NEW, LIVE_OLD)
        assert files.live.stat().st_mode & 0o777 == 0o640 and files.prev.stat().st_mode & 0o777 == 0o640
        assert files.trial.stat().st_mode & 0o777 == 0o600
