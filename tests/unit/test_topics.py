"""Topic names: built from checked segments, parsed back, one channel per priority."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.buffer.records import Priority
from agent.uplink.topics import CHANNELS, MAX_SEGMENT, TopicError, Topics

_segments = st.text(
    st.characters(exclude_characters="+#/\x00", codec="utf-8"),
    min_size=1,
    max_size=MAX_SEGMENT,
)
_sites = _segments.filter(lambda s: s != "group")  # reserved: <prefix>/group/<g>/command


def test_example_topics() -> None:
    t = Topics("urbanedge/v1", "lisbon-01", "gw-7")
    assert t.telemetry == "urbanedge/v1/lisbon-01/gw-7/telemetry"
    assert t.alarm == "urbanedge/v1/lisbon-01/gw-7/alarm"
    assert t.event == "urbanedge/v1/lisbon-01/gw-7/event"
    assert t.status == "urbanedge/v1/lisbon-01/gw-7/status"
    assert t.birth == "urbanedge/v1/lisbon-01/gw-7/birth"
    assert t.command == "urbanedge/v1/lisbon-01/gw-7/command"


def test_priority_routing() -> None:
    t = Topics("p", "s", "g")
    assert t.for_priority(Priority.ALARM) == t.alarm
    assert t.for_priority(Priority.EVENT) == t.event
    assert t.for_priority(Priority.TELEMETRY) == t.telemetry


@given(prefix=st.lists(_segments, min_size=1, max_size=3), site=_sites, gw=_segments)
def test_parse_inverts_every_channel(prefix: list[str], site: str, gw: str) -> None:
    t = Topics("/".join(prefix), site, gw)
    for channel in CHANNELS:
        assert t.parse(t.channel(channel)) == (site, gw, channel)


def test_parse_reads_other_gateways_under_the_same_prefix() -> None:
    t = Topics("urbanedge/v1", "s", "g")
    assert t.parse("urbanedge/v1/porto/gw-2/alarm") == ("porto", "gw-2", "alarm")


@pytest.mark.parametrize(
    ("site", "gateway", "problem"),
    [
        ("", "g", "site must not be empty"),
        ("s", "", "gateway id must not be empty"),
        ("s+", "g", "forbidden"),
        ("s", "g#", "forbidden"),
        ("a/b", "g", "forbidden"),
        ("s", "x" * (MAX_SEGMENT + 1), "longer than"),
    ],
)
def test_invalid_segments(site: str, gateway: str, problem: str) -> None:
    with pytest.raises(TopicError, match=problem):
        Topics("urbanedge/v1", site, gateway)


@pytest.mark.parametrize("prefix", ["", "/x", "x/", "a//b", "a/+", "#"])
def test_invalid_prefix(prefix: str) -> None:
    with pytest.raises(TopicError, match="prefix level"):
        Topics(prefix, "s", "g")


def test_segment_of_max_length_is_fine() -> None:
    Topics("p", "s" * MAX_SEGMENT, "g")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/s/g/telemetry",
        "urbanedge/v1/s/g",
        "urbanedge/v1/s/g/telemetry/x",
        "urbanedge/v1//g/telemetry",
        "urbanedge/v1/s/g/nonsense",
        "urbanedge/v1/+/g/alarm",
        "urbanedge/v1",
    ],
)
def test_parse_rejects(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics("urbanedge/v1", "s", "g").parse(topic)


def test_unknown_channel() -> None:
    with pytest.raises(TopicError, match="unknown channel"):
        Topics("p", "s", "g").channel("metrics")


@given(st.text(max_size=80))
def test_parse_of_any_string_returns_or_raises_topic_error(topic: str) -> None:
    t = Topics("urbanedge/v1", "s", "g")
    try:
        site, gw, channel = t.parse(topic)
    except TopicError:
        return
    assert Topics(t.prefix, site, gw).channel(channel) == topic
