"""`urbanedge ioc ota`: per-device update status from a real IOC store."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ioc.store import open_store


def ev(seq: int, device: str, state: str, reason: str = "") -> dict[str, Any]:
    return {"seq": seq, "type": "event", "device_id": device, "ts": 1_700_000_000.0 + seq, "event": "ota_status",
            "state": state, "release": "0.2.0", "counter": 2, **({"reason": reason} if reason else {})}


def ioc_ota(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", "ioc", "ota", *args],
                          capture_output=True, text=True, timeout=60)


def test_lists_history_and_waits(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'ioc.db'}"
    with open_store(url) as s:
        s.accept("gw-1", [ev(1, "gw-1", "queued"), ev(2, "gw-1", "downloading")], received_at=1.0)
        s.accept("node-1", [ev(1, "node-1", "failed", "hash"), ev(2, "node-1", "rolled-back", "hash")], received_at=1.0)
    r = ioc_ota("--store", url, "--release", "0.2.0", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["device"]: x for x in json.loads(r.stdout)}
    assert rows["gw-1"]["history"] == ["queued", "downloading"]
    assert (rows["node-1"]["state"], rows["node-1"]["reason"]) == ("rolled-back", "hash")

    late = threading.Timer(1.5, lambda: _accept(url, "gw-1", [ev(3, "gw-1", "success")]))
    late.start()
    r = ioc_ota("--store", url, "--release", "0.2.0", "--device", "gw-1", "--wait-for", "success", "--timeout", "30")
    late.join()
    assert r.returncode == 0, r.stderr
    assert "queued > downloading > success" in r.stdout

    r = ioc_ota("--store", url, "--release", "0.2.0", "--device", "node-1", "--wait-for", "success", "--timeout", "1")
    assert r.returncode == 1 and "timed out" in r.stderr
    assert ioc_ota("--store", url, "--release", "0.2.0", "--wait-for", "success").returncode == 2


def _accept(url: str, source: str, recs: list[dict[str, Any]]) -> None:
    with open_store(url) as s:
        s.accept(source, recs, received_at=2.0)
