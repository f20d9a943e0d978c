"""Installing a release tarball into a slot (agent/update/slotstore.py), on a real file system."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from agent.update.bootstate import BadBootState, BootState, begin_trial
from agent.update.slotstore import InstallError, SlotStore, unmet_requirements


def _tarball(path: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, to in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = to
            tar.addfile(info)
    return path


def _release(version: str = "0.2.0", counter: int = 2, requires: list[str] | None = None) -> dict[str, bytes]:
    rel = {"version": version, "release_counter": counter, "requires": requires or []}
    return {"RELEASE.json": json.dumps(rel).encode(), "agent/__init__.py": b"", "urbanedge/__init__.py": b"",
            "agent/app.py": b"# new\n"}


def test_install_then_reinstall(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    rel = store.install("a", _tarball(tmp_path / "r.tgz", _release()), version="0.2.0", counter=2)
    assert (rel.version, rel.counter) == ("0.2.0", 2)
    assert (tmp_path / "slots/a/agent/app.py").read_bytes() == b"# new\n"
    store.install("a", _tarball(tmp_path / "r3.tgz", _release("0.3.0", 3)), version="0.3.0", counter=3)
    assert json.loads((tmp_path / "slots/a/RELEASE.json").read_text())["version"] == "0.3.0"
    assert sorted(p.name for p in (tmp_path / "slots").iterdir()) == ["a"]


@pytest.mark.parametrize(("files", "links", "problem"), [
    (_release("0.9.9", 2), None, "RELEASE.json says 0.9.9/2"),
    ({"agent/__init__.py": b""}, None, "no RELEASE.json"),
    ({**_release(), "../evil.py": b"x"}, None, "cannot unpack"),
    (_release(), {"agent/x": "/etc/passwd"}, "cannot unpack"),
    (_release(requires=["no-such-package-xyz>=1"]), None, "no-such-package-xyz"),
    (_release(requires=["cryptography<1"]), None, "cryptography<1 (have"),
])
def test_bad_release_refused_and_slot_untouched(tmp_path: Path, files: dict[str, bytes],
                                                links: dict[str, str] | None, problem: str) -> None:
    store = SlotStore(tmp_path / "slots")
    store.install("a", _tarball(tmp_path / "good.tgz", _release()), version="0.2.0", counter=2)
    with pytest.raises(InstallError, match=re.escape(problem)):
        store.install("a", _tarball(tmp_path / "bad.tgz", files, links), version="0.2.0", counter=2)
    assert (tmp_path / "slots/a/agent/app.py").read_bytes() == b"# new\n"
    assert not (tmp_path / "slots/a.new").exists()
    assert not (tmp_path / "evil.py").exists()


def test_absolute_member_stays_inside_the_slot(tmp_path: Path) -> None:
    evil = tmp_path / "outside" / "evil.py"
    files = {**_release(), str(evil): b"x"}
    SlotStore(tmp_path / "slots").install("a", _tarball(tmp_path / "r.tgz", files), version="0.2.0", counter=2)
    assert not evil.exists()
    assert (tmp_path / "slots/a" / str(evil).lstrip("/")).read_bytes() == b"x"


def test_truncated_tarball_refused(tmp_path: Path) -> None:
    t = _tarball(tmp_path / "r.tgz", _release())
    t.write_bytes(t.read_bytes()[:-40])
    with pytest.raises(InstallError, match="cannot unpack"):
        SlotStore(tmp_path / "slots").install("b", t, version="0.2.0", counter=2)


def test_state_round_trip_and_corruption(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    assert store.load() == BootState()
    s = begin_trial(BootState(), "a", "0.2.0", 2)
    store.save(s)
    assert store.load() == s
    store.state_path.write_text("{not json")
    with pytest.raises(BadBootState, match=r"state\.json"):
        store.load()


def test_leftovers_of_a_cut_install_are_removed(tmp_path: Path) -> None:
    store = SlotStore(tmp_path / "slots")
    (tmp_path / "slots/b.new/agent").mkdir(parents=True)
    store.cleanup()
    assert not (tmp_path / "slots/b.new").exists()


def test_requirements() -> None:
    assert unmet_requirements(("cryptography>=1", "pydantic")) == []
    assert unmet_requirements(("not a requirement!!",)) == ["not a requirement!! (not a valid requirement)"]


def test_launcher_boots_factory_on_a_corrupt_state_and_says_so(tmp_path: Path) -> None:
    from agent.update.launcher import agent_env, boot

    store = SlotStore(tmp_path / "slots")
    store.root.mkdir()
    store.state_path.write_text('{"v": 1, "committed": "z"}')
    d = boot(store, max_tries=3)
    assert d.run == "factory" and not d.trial
    saved = store.load()  # the launcher replaced it with a valid state
    assert saved.pending and "boot state unreadable" in saved.pending[0]["reason"]
    env = agent_env(store, d)
    assert env["UE_SLOT"] == "factory" and str(store.root) not in env.get("PYTHONPATH", "")


def test_launcher_puts_the_trial_slot_first_on_the_path(tmp_path: Path) -> None:
    from agent.update.launcher import agent_env, boot

    store = SlotStore(tmp_path / "slots")
    store.install("b", _tarball(tmp_path / "r.tgz", _release()), version="0.2.0", counter=2)
    store.save(begin_trial(BootState(committed="a", counter=1), "b", "0.2.0", 2))
    d = boot(store, max_tries=3)
    assert (d.run, d.trial) == ("b", True)
    assert agent_env(store, d)["PYTHONPATH"].split(":")[0] == str(store.root / "b")
    assert store.load().trial.tries == 1  # type: ignore[union-attr]
