"""`urbanedge demo` as a user runs it: embedded broker, simulators, agent, consumer."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path


def test_demo_json_shows_every_kind_and_the_alarm(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    cmd = [sys.executable, "-X", "faulthandler", "-m", "urbanedge", "demo", "--duration", "12", "--json",
           "--workdir", str(work), "--interval", "1", "--alarm-after", "4"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # Seen once under load: SIGABRT makes faulthandler print every thread's stack.
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"the demo did not stop; its stderr:\n{err[-8000:]}") from None
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
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


def test_demo_broker_carries_no_plaintext_and_prints_only_verified_readings(tmp_path: Path) -> None:
    """A spy on the demo's broker sees only COSE_Encrypt envelopes on the data topics, and no
    device name or reading anywhere; what the demo prints is what the IOC receiver verified."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    proc = subprocess.Popen(
        [sys.executable, "-m", "urbanedge", "demo", "--duration", "10", "--json", "--workdir",
         str(tmp_path / "demo"), "--interval", "1", "--alarm-after", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    seen: list[tuple[str, bytes]] = []
    spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")
    spy.on_message = lambda _c, _u, m: seen.append((m.topic, bytes(m.payload)))
    try:
        port = None
        for line in proc.stderr:
            if "mqtt://127.0.0.1:" in line:
                port = int(line.split("mqtt://127.0.0.1:")[1].split()[0])
                break
        assert port is not None, "the demo did not print its broker address"
        rest: list[str] = []
        drain = threading.Thread(target=lambda: rest.extend(proc.stderr or []), daemon=True)
        drain.start()
        spy.connect("127.0.0.1", port)
        spy.subscribe("#", qos=1)
        spy.loop_start()
        out, _ = proc.communicate(timeout=120)
        drain.join(10)
    finally:
        spy.loop_stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(rest)[-3000:]
    data = [(t, p) for t, p in seen if t.rsplit("/", 1)[-1] in ("telemetry", "alarm", "event")]
    assert data, "the spy saw no data messages"
    assert all(p[:2] == b"\xd8\x60" for _, p in data), "a data message is not a tagged COSE_Encrypt"
    for needle in (b"streetlight-1", b"water-meter-1", b"water_level", b"totaliser", b"flood_danger"):
        assert not any(needle in p for _, p in seen), f"{needle!r} in plaintext on the broker"
    records = [json.loads(line) for line in out.splitlines()]
    assert records and all(r["verified"]["signer"] == "demo-gw-1" for r in records)
    assert any(r["type"] == "alarm" for r in records)
