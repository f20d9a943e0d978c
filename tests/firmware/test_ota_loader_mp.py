"""The loader (firmware/main.py, never updated) under the real MicroPython unix port: which slot
it runs for every boot.json it may find (none, torn, wrong type, a trial to count, a trial
to give up), and that it never crashes on one; plus the node.json ``ota`` checks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from tests.support.micropython import FIRMWARE, run_mp

CHOOSE = """
import sys
sys.path.insert(0, sys.argv[2])
import main
print("SLOT", main.choose(sys.argv[1]))
"""


def _choose(app_dir: Path, boot: str | None) -> tuple[str, dict[str, object] | None]:
    app_dir.mkdir(parents=True, exist_ok=True)
    path = app_dir / "boot.json"
    if boot is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(boot)
    out = run_mp(CHOOSE, args=[str(app_dir), str(FIRMWARE)])
    slot = next(line.split()[1] for line in out.splitlines() if line.startswith("SLOT "))
    after = None
    with contextlib.suppress(OSError, ValueError):
        after = json.loads(path.read_text())
    assert not (app_dir / "boot.json.tmp").exists()
    return slot, after


def _boot(**over: object) -> str:
    st: dict[str, object] = {"active": "a", "committed": "a", "trial": None, "counter": 3, "version": "1.2.0"}
    st.update(over)
    return json.dumps(st)


def test_missing_or_unusable_boot_json_means_factory(tmp_path: Path) -> None:
    app = tmp_path / "app"
    assert _choose(app, None) == ("factory", None)
    torn = _boot()[:17]
    assert _choose(app, torn)[0] == "factory"
    assert _choose(app, "[1, 2]")[0] == "factory"
    assert _choose(app, json.dumps({"trial": 7}))[0] == "factory"
    assert _choose(app, _boot())[0] == "a"


def test_trial_boots_are_counted_before_the_new_code_runs_then_given_up(tmp_path: Path) -> None:
    app = tmp_path / "app"
    trial = {"slot": "b", "tries": 0, "version": "1.3.0", "counter": 4}
    slot, st = _choose(app, _boot(active="b", trial=trial))
    assert slot == "b" and st is not None and st["trial"] == {**trial, "tries": 1}
    slot, st = _choose(app, json.dumps(st))
    assert slot == "b" and st is not None and st["trial"]["tries"] == 2  # type: ignore[index]
    slot, st = _choose(app, json.dumps(st))
    assert slot == "a"
    assert st is not None and st["trial"] is None and st["active"] == "a" and st["committed"] == "a"
    assert st["rolled_back"] == {"version": "1.3.0", "counter": 4, "reason": "no commit after 2 boots"}
    assert st["counter"] == 3  # the committed release's counter is untouched


def test_a_trial_marked_failed_falls_back_at_once(tmp_path: Path) -> None:
    slot, st = _choose(tmp_path / "app", _boot(committed="factory", active="a", counter=0, trial={
        "slot": "a", "tries": 1, "version": "1.4.0", "counter": 5, "failed": "self-test: no PUBACK"}))
    assert slot == "factory" and st is not None and st["trial"] is None
    assert st["rolled_back"]["reason"] == "self-test: no PUBACK"  # type: ignore[index]


CONFIG = """
import sys
from ue import node
try:
    node.load_config(sys.argv[1])
    print("OK")
except node.ConfigError as e:
    print("ERR", e)
"""


@pytest.mark.parametrize(("ota", "problem"), [
    ({"url": "https://x/", "keys": ["04" + "00" * 64]}, "field ota.url"),
    ({"url": "http://x/", "keys": []}, "field ota.keys"),
    ({"url": "http://x/", "keys": ["05" + "00" * 64]}, "field ota.keys[0]"),
    ({"url": "http://x/", "keys": ["04" + "zz" * 64]}, "field ota.keys[0]"),
    ({"url": "http://x/", "keys": ["04" + "00" * 64], "trial_s": 0}, "field ota.trial_s"),
    ({"keys": ["04" + "00" * 64]}, "missing field ota.url"),
    ({"url": "http://x/", "keys": ["04" + "ab" * 64], "check_s": 60, "trial_s": 300}, None),
])
def test_node_json_ota_section_is_checked(tmp_path: Path, ota: dict[str, object], problem: str | None) -> None:
    cfg = {"node_id": "n1", "site": "s", "broker": {"host": "h"}, "bus": {"port": "/dev/null"},
           "devices": [{"id": "d", "profile": "flood-sensor"}], "ota": ota}
    path = tmp_path / "node.json"
    path.write_text(json.dumps(cfg))
    out = run_mp(CONFIG, args=[str(path)], heap="1m").strip()
    if problem is None:
        assert out == "OK"
    else:
        assert out.startswith("ERR") and problem in out, out
