"""`urbanedge demo` as a user runs it: embedded broker, simulators, agent, consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_json_shows_every_kind_and_the_alarm(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    res = subprocess.run(
        [sys.executable, "-m", "urbanedge", "demo", "--duration", "12", "--json",
         "--workdir", str(work), "--interval", "1", "--alarm-after", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert records, "no records printed"
    for r in records:
        assert {"device_id", "seq", "ts", "type", "source"} <= set(r)
    telemetry = [r for r in records if r["type"] == "telemetry"]
    assert {r["kind"] for r in telemetry} >= {"streetlight", "water-meter", "flood-sensor"}
    assert all(isinstance(r["values"], dict) for r in telemetry)
    assert any(r["type"] == "alarm" and r["alarm"] == "flood_danger" for r in records)
    seqs = [r["seq"] for r in records]
    assert len(seqs) == len(set(seqs)), "the consumer must drop duplicates"
    assert "mqtt://127.0.0.1:" in res.stderr
    # --workdir keeps what the demo generated, and status can read it.
    assert (work / "demo.toml").is_file() and (work / "outbox.db").is_file()
    st = subprocess.run([sys.executable, "-m", "urbanedge", "status", "-c", str(work / "demo.toml")],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0, st.stderr
    assert "flood-sensor-1" in st.stdout and "outbox:" in st.stdout


def test_demo_rejects_bad_duration() -> None:
    res = subprocess.run([sys.executable, "-m", "urbanedge", "demo", "--duration", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "--duration" in res.stderr
