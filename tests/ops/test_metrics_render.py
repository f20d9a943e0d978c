"""The /metrics renderer, checked by a real Prometheus text-format parser (prometheus_client)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.ops.metrics import (
    COUNTER_HELP,
    Counters,
    DeviceSample,
    Family,
    OutboxSample,
    Snapshot,
    parse_listen,
    render,
    render_agent,
)


def parse(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def device(name: str, **kw: object) -> DeviceSample:
    base: dict[str, object] = dict(device=name, bus="lan", kind="streetlight", polls=10, good=8,
                                   errors={"timeout": 2}, busy_seconds=0.5, online=True,
                                   last_poll=1_700_000_000.0, cycles_skipped=0)
    base.update(kw)
    return DeviceSample(**base)  # type: ignore[arg-type]


def snapshot(**kw: object) -> Snapshot:
    base: dict[str, object] = dict(
        now=1_700_000_100.0, started=1_700_000_000.0, version="0.1.0", gateway_id="gw-1",
        devices=[device("sl-1"), device("flood-1", kind="flood-sensor", online=False, errors={})],
        bus_utilisation={"lan": 0.25},
        outbox=OutboxSample(depth={"alarm": 1, "event": 2, "telemetry": 300}, used_bytes=4096,
                            file_bytes=8192, max_bytes=1 << 20, oldest_ts=1_700_000_040.0,
                            evicted_by_prio={"telemetry": 7}, dropped_total=0),
        uplink_state="connecting", uplink={"reconnects": 3, "acked_records": 42},
        update_release="0.1.0", update_state="committed")
    base.update(kw)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_agent_page_parses_and_carries_the_figures() -> None:
    m = parse(render_agent(snapshot(), Counters()))
    assert ("urbanedge_polls_total", {"device": "sl-1", "bus": "lan", "kind": "streetlight"}, 10.0) \
        in m["urbanedge_polls"]
    assert m["urbanedge_poll_errors"] == [
        ("urbanedge_poll_errors_total", {"device": "sl-1", "bus": "lan", "reason": "timeout"}, 2.0)]
    lat = {(n, lb["device"]): v for n, lb, v in m["urbanedge_poll_duration_seconds"]}
    assert lat[("urbanedge_poll_duration_seconds_sum", "sl-1")] == 0.5
    assert lat[("urbanedge_poll_duration_seconds_count", "sl-1")] == 10
    online = {lb["device"]: v for _, lb, v in m["urbanedge_device_online"]}
    assert online == {"sl-1": 1.0, "flood-1": 0.0}
    depth = {lb["priority"]: v for _, lb, v in m["urbanedge_outbox_depth"]}
    assert depth == {"alarm": 1, "event": 2, "telemetry": 300}
    assert m["urbanedge_outbox_oldest_age_seconds"][0][2] == 60.0
    ev = {lb["priority"]: v for _, lb, v in m["urbanedge_outbox_evictions"]}
    assert ev == {"alarm": 0, "event": 0, "telemetry": 7}
    states = {lb["state"]: v for _, lb, v in m["urbanedge_uplink_state"]}
    assert states == {"offline": 0, "connecting": 1, "online": 0}
    assert m["urbanedge_uplink_reconnects"][0][2] == 3
    assert m["urbanedge_uplink_acked_records"][0][2] == 42
    assert m["urbanedge_update_info"][0][1] == {"release": "0.1.0", "state": "committed"}
    # The hook for commands and crypto: every declared counter is there at 0 before any event.
    for name in COUNTER_HELP:
        assert m[f"urbanedge_{name}"] == [(f"urbanedge_{name}_total", {}, 0.0)]


def test_empty_outbox_has_age_zero_and_no_uplink_means_no_state() -> None:
    s = snapshot(outbox=OutboxSample(depth={}, used_bytes=0, file_bytes=0, max_bytes=1, oldest_ts=None,
                                     evicted_by_prio={}, dropped_total=0), uplink_state=None)
    m = parse(render_agent(s, Counters()))
    assert m["urbanedge_outbox_oldest_age_seconds"][0][2] == 0
    assert "urbanedge_uplink_state" not in m


def test_counters_hook() -> None:
    c = Counters()
    c.inc("commands_rejected", reason="replayed")
    c.inc("commands_rejected", reason="replayed")
    c.inc("commands_rejected", reason="expired")
    c.inc("crypto_failures", 2, op="verify")
    m = parse(render(c.families()))
    rej = {lb["reason"]: v for _, lb, v in m["urbanedge_commands_rejected"]}
    assert rej == {"replayed": 2, "expired": 1}
    assert m["urbanedge_crypto_failures"] == [("urbanedge_crypto_failures_total", {"op": "verify"}, 2.0)]
    assert c.value("commands_rejected", reason="replayed") == 2
    with pytest.raises(KeyError, match="unknown counter"):
        c.inc("command_rejected", reason="typo")
    with pytest.raises(ValueError, match="only goes up"):
        c.inc("commands_rejected", -1)


def test_invalid_names_are_refused() -> None:
    with pytest.raises(ValueError, match="metric name"):
        Family("bad-name", "gauge", "x")
    with pytest.raises(ValueError, match="label name"):
        Family("ok", "gauge", "x").add(1, **{"bad-label": "v"})


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:9464", ("::1", 9464)), ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_parse_listen(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9464", ":9464", "::1:9464", "host:http", "host:70000"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


# Device ids come from configs (and later from remote configuration): any text must survive
# as a label value, including quotes, backslashes, newlines and non-ASCII (Vietnamese names).
label_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


@given(names=st.lists(label_text, min_size=1, max_size=5, unique=True), reason=label_text,
       value=st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_label_values_roundtrip_through_a_real_parser(names: list[str], reason: str, value: float) -> None:
    devs = [device(n, errors={reason: 3}, busy_seconds=value) for n in names]
    m = parse(render_agent(snapshot(devices=devs), Counters()))
    got = {lb["device"] for _, lb, _ in m["urbanedge_polls"]}
    assert got == set(names)
    assert {lb["reason"] for _, lb, _ in m["urbanedge_poll_errors"]} == {reason}
    sums = [v for n, _, v in m["urbanedge_poll_duration_seconds"] if n.endswith("_sum")]
    assert sums == pytest.approx([value] * len(names))
