"""Security events and where records go: the security channel, group command topics, and which
refused updates and certificate states become security events (pure code, time passed in)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer.records import NewRecord, Priority, StoredRecord, alarm, event, telemetry
from agent.control.results import crl_event, security_event
from agent.security.events import RateLimit, certificate_expiry, update_event
from agent.uplink.routing import channel_of, event_name, same_channel_run
from agent.uplink.topics import TopicError, Topics, group_command_topic


def stored(seq: int, rec: NewRecord) -> StoredRecord:
    return StoredRecord(seq, rec.prio, rec.device_id, rec.ts, rec.body)


def test_channels_by_priority_and_security_events_apart() -> None:
    assert channel_of(Priority.ALARM, alarm("fs-1", "flood", 1.0, "flood", "raised", "critical", "level", 9).body) \
        == "alarm"
    assert channel_of(Priority.TELEMETRY, telemetry("sl-1", "streetlight", 1.0, {"v": 1}).body) == "telemetry"
    assert channel_of(Priority.EVENT, event("gw", 1.0, "device_offline", device="sl-1").body) == "event"
    sec = security_event("gw", 1.0, reason="unsigned", detail="x", command_id=None)
    assert sec.prio == Priority.EVENT  # ahead of telemetry, like every event
    assert channel_of(sec.prio, sec.body) == "security"
    assert channel_of(Priority.EVENT, crl_event("gw", 1.0, "crl_unreadable", "bad").body) == "security"
    # A detail that merely mentions security does not make an event a security event.
    assert channel_of(Priority.EVENT, event("gw", 1.0, "note", text='"event":"security"').body) == "event"


_names = st.sampled_from(["security", "device_offline", "command_result", "ota_status", "sec\"urity", "ü"])
_values = st.one_of(st.text(max_size=20), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
_details = st.dictionaries(st.sampled_from(["a", "event_x", "detail"]), _values, max_size=3)


@given(ts=st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), name=_names, details=_details)
def test_event_name_agrees_with_the_json(ts: float, name: str, details: dict[str, Any]) -> None:
    rec = event("gw", ts, name, **details)
    real = json.loads(rec.body)["event"]
    # Names JSON must escape are not read (None), never misread; "security" always is.
    assert event_name(rec.body) in (None, real)
    assert (event_name(rec.body) == "security") == (real == "security")
    if name.isascii() and '"' not in name:
        assert event_name(rec.body) == real


@given(st.lists(st.tuples(st.sampled_from(["security", "other", "telemetry", "alarm"]), st.integers(0, 3)),
                min_size=1, max_size=30))
def test_a_batch_is_the_leading_run_of_one_channel(spec: list[tuple[str, int]]) -> None:
    recs: list[StoredRecord] = []
    for i, (kind, n) in enumerate(spec):
        if kind == "telemetry":
            new = telemetry(f"d{n}", "streetlight", float(i), {"v": n})
        elif kind == "alarm":
            new = alarm(f"d{n}", "flood", float(i), "a", "raised", "critical", "level", n)
        else:
            new = event(f"d{n}", float(i), "security" if kind == "security" else "device_offline", n=n)
        recs.append(stored(i + 1, new))
    # The forwarder fetches one priority at a time: split the mix the same way.
    for prio in Priority:
        rows = [r for r in recs if r.prio == prio]
        while rows:
            channel, run = same_channel_run(rows)
            assert run == rows[:len(run)] and run
            assert {channel_of(r.prio, r.body) for r in run} == {channel}
            if len(run) < len(rows):
                assert channel_of(rows[len(run)].prio, rows[len(run)].body) != channel
            rows = rows[len(run):]
    with pytest.raises(ValueError):
        same_channel_run([])


def test_group_command_topics_and_the_reserved_site() -> None:
    assert group_command_topic("urbanedge/v1", "district-1") == "urbanedge/v1/group/district-1/command"
    assert Topics("urbanedge/v1", "s", "g").group_command("d") == "urbanedge/v1/group/d/command"
    assert Topics("p", "s", "g").security == "p/s/g/security"
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(TopicError):
            group_command_topic("urbanedge/v1", bad)
    with pytest.raises(TopicError, match="reserved"):
        Topics("urbanedge/v1", "group", "gw-1")


def _ota(state: str, reason: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"state": state, "release": "1.2.0", "counter": 7, "target": "gw-1.2.0.tar"}
    if reason is not None:
        body["reason"] = reason
    return body


def test_only_attack_like_update_rejections_are_security_events() -> None:
    for code in ("bad-signature", "rollback", "tampered", "replayed", "below-threshold"):
        rec = update_event("gw", 5.0, _ota("rejected", f"{code}: something about it"))
        assert rec is not None, code
        body = json.loads(rec.body)
        assert (body["event"], body["category"], body["reason"], body["detail"], body["release"]) == (
            "security", "update_rejected", code, "something about it", "1.2.0")
        assert channel_of(rec.prio, rec.body) == "security"
    for state, reason in (("rejected", "wrong-hardware: for pi4"), ("rejected", "agent-too-old: x"),
                          ("failed", "bad-signature: x"), ("done", None), ("rejected", None)):
        assert update_event("gw", 5.0, _ota(state, reason)) is None, (state, reason)


@given(not_after=st.floats(0, 1e10), now=st.floats(0, 1e10), warn=st.floats(0, 1e8))
def test_certificate_expiry_warns_inside_the_window_only(not_after: float, now: float, warn: float) -> None:
    got = certificate_expiry(not_after, now, warn)
    if now >= not_after:
        assert got is not None and got[0] == "own_certificate_expired"
    elif not_after - now <= warn:
        assert got is not None and got[0] == "own_certificate_expiring"
    else:
        assert got is None


def test_rate_limit_reports_once_per_period_per_key() -> None:
    rl = RateLimit(every=60.0)
    assert rl.allow("tls:x", 100.0)
    assert not rl.allow("tls:x", 159.0)
    assert rl.allow("tls:y", 159.0)
    assert rl.allow("tls:x", 160.0)
