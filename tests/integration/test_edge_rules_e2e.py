"""An edge rule end to end: a simulated flood level shoots up while the broker is down;
the agent's rate-of-rise rule raises a sealed alarm that jumps the telemetry backlog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from drivers.profiles import builtin_profiles_dir
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, Subscriber, agent_config, tcp_bus, wait_for

GW = "gw-test"
RULE = "flood_rising_fast"
# Test-sized copy of the shipped rule: a 4 s window instead of 10 min, and a rate far above
# what the simulator's noise and rain bursts produce (~1 cm/s), far below the injected jump.
FAST_RULE = f"""
[[rules]]
type = "rate_above"
name = "{RULE}"
point = "water_level"
rate = 600
window = 4
hysteresis = 300
min_samples = 5
severity = "danger"
"""


def flood_profile(folder: Path) -> Path:
    folder.mkdir()
    text = (builtin_profiles_dir() / "flood-sensor.toml").read_text()
    shipped, _, _ = text.partition("# --- edge rules")
    (folder / "flood-sensor.toml").write_text(shipped + FAST_RULE)
    return folder


def backlog(db: Path) -> int:
    """Telemetry records waiting in the outbox (read-only, beside the running agent)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        try:
            return int(con.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:  # the agent has not created the table yet
            return 0
    finally:
        con.close()


def test_rate_of_rise_alarm_jumps_the_backlog(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    sim = SimProc.start("flood-sensor", "--tcp", f"127.0.0.1:{port}", "--seed", "7")
    # A persistent session, created before the outage, receives what the agent publishes
    # the moment it reconnects, whoever connects first.
    mosquitto.stop()
    mosquitto.persistence = True
    mosquitto.start()
    Subscriber(mosquitto.host, mosquitto.port).start(session="rules-sub").stop()
    mosquitto.stop()  # uplink down from the agent's first poll: telemetry piles up
    buses = tcp_bus(port, [("flood-1", "flood-sensor", 1)], interval=0.2)
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=buses)
    profiles = flood_profile(tmp_path / "profiles")
    cfg.write_text(cfg.read_text().replace('log_level = "info"',
                                           f'log_level = "info"\nprofile_dirs = ["{profiles}"]', 1))
    agent = AgentProc(cfg)
    sub: Subscriber | None = None
    agent.start()
    try:
        db = tmp_path / "outbox.db"
        wait_for(lambda: backlog(db) >= 30, 30, "a telemetry backlog")
        assert f"alarm={RULE}" not in agent.log_text()  # the simulator's own noise is no alarm
        sim.control("alarm flood_danger")  # the level jumps ~40 cm -> ~210 cm
        wait_for(lambda: f"alarm={RULE} state=raised" in agent.log_text(), 30,
                 "the rule to fire in the agent")
        waiting = backlog(db)
        mosquitto.start()
        sub = Subscriber(mosquitto.host, mosquitto.port).start(session="rules-sub")

        def rule_alarms() -> list[dict[str, object]]:
            assert sub is not None
            return [r for r in sub.of_type("alarm") if r["alarm"] == RULE]

        wait_for(lambda: len(rule_alarms()) == 2, 60, "the rule's raise and clear delivered")
    finally:
        agent.stop()
        sim.stop()
        if sub is not None:
            sub.stop()
    assert sub.rejected == [] and sub.parked == [], (sub.rejected, len(sub.parked))
    raised, cleared = rule_alarms()
    assert raised["device_id"] == "flood-1"
    assert (raised["state"], raised["severity"], raised["point"], raised["threshold"]) == (
        "raised", "danger", "water_level", 600)
    assert isinstance(raised["value"], float) and raised["value"] > 600
    assert cleared["state"] == "cleared"  # the level stays up: its rate falls back to zero
    # It overtook the backlog: among the first records delivered, ahead of telemetry that
    # was queued before it.
    order = [sub.records[k] for k in sub.order]
    at = next(i for i, r in enumerate(order) if r is raised)
    older = [r for r in order[at + 1:] if r["type"] == "telemetry" and int(r["seq"]) < int(raised["seq"])]  # type: ignore[call-overload]
    print(f"backlog when raised: {waiting} records; the alarm arrived as record #{at + 1}; "
          f"{len(older)} older telemetry records arrived after it")
    assert at < 10, at
    assert len(older) >= 25, len(older)


def test_lamp_drawing_power_while_reported_off(tmp_path: Path, mosquitto: Mosquitto) -> None:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--seed", "3")
    buses = tcp_bus(port, [("sl-1", "streetlight", 1)], interval=0.2)
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port, buses=buses)
    sub = Subscriber(mosquitto.host, mosquitto.port).start()
    agent = AgentProc(cfg)
    agent.start()

    def rule_alarms() -> list[dict[str, object]]:
        return [r for r in sub.of_type("alarm") if r["alarm"] == "power_while_off"]

    try:
        wait_for(lambda: len(sub.of_type("telemetry")) >= 5, 30, "first readings")
        # Someone taps the lighting circuit: the meter sees 40 W, the relay reports off.
        # (Power first: the lamp may be lit by schedule, which is no alarm.)
        sim.control("set active_power 40")
        sim.control("set lamp_on false")
        wait_for(lambda: len(rule_alarms()) == 1, 30, "the power-while-off alarm")
        sim.control("clear")
        wait_for(lambda: len(rule_alarms()) == 2, 30, "the alarm cleared")
    finally:
        agent.stop()
        sim.stop()
        sub.stop()
    raised, cleared = rule_alarms()
    assert (raised["device_id"], raised["state"], raised["severity"], raised["point"]) == (
        "sl-1", "raised", "alert", "active_power")
    assert (raised["value"], raised["threshold"]) == (40.0, 5.0)
    assert cleared["state"] == "cleared"
    # Three polls in a row are needed: the readings just before the alarm all show it.
    before = [r for r in sub.of_type("telemetry") if int(r["seq"]) < int(raised["seq"])]  # type: ignore[call-overload]
    last3 = sorted(before, key=lambda r: int(r["seq"]))[-3:]
    assert all(r["values"]["lamp_on"] is False and r["values"]["active_power"] == 40 for r in last3)
