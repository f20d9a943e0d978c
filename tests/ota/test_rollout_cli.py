"""`urbanedge ota rollout` against a real repository and a real IOC store."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from ioc.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", "ota", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def status_event(seq: int, device: str, state: str, reason: str = "") -> dict[str, Any]:
    return {"seq": seq, "type": "event", "device_id": device, "ts": 1_700_000_000.0 + seq,
            "event": "ota_status", "state": state, "release": "0.2.0", "counter": 2, "reason": reason}


def current_rollout(repo: Path) -> dict[str, Any]:
    newest = max((repo / "metadata").glob("*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    targets = json.loads(newest.read_text())
    tf = targets["signed"]["targets"]["rollouts/gateway.json"]
    return json.loads((repo / "targets" / "rollouts" / f"{tf['hashes']['sha256']}.gateway.json").read_bytes())


def test_rollout_halts_when_failures_pass_the_threshold(tmp_path: Path) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    assert run("init", "--repo", repo, "--keys", keys).returncode == 0
    tarball = tmp_path / "r.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        data = json.dumps({"version": "0.2.0", "release_counter": 2}).encode()
        info = tarfile.TarInfo("RELEASE.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert run("add-gateway", "--repo", repo, "--keys", keys, "--tarball", tarball, "--version", "0.2.0",
               "--counter", "2").returncode == 0
    db = tmp_path / "ioc.db"
    with open_store(f"sqlite:{db}") as store:
        store.accept("gw-1", [status_event(1, "gw-1", "queued"), status_event(2, "gw-1", "success")], received_at=1.0)
        store.accept("gw-2", [status_event(1, "gw-2", "failed", "health"),
                              status_event(2, "gw-2", "rolled-back", "health")], received_at=1.0)
    common = ["--repo", repo, "--keys", keys, "--kind", "gateway", "--store", f"sqlite:{db}"]
    ok = run("rollout", *common, "--release", "gateway/urbanedge-0.2.0.tar.gz", "--percent", "20",
             "--max-failures", "0.6", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["failed"] == ["gw-2"]
    first = current_rollout(repo)
    assert (first["percent"], first["state"]) == (20, "active")

    halted = run("rollout", *common, "--percent", "50", "--max-failures", "0.3")
    assert halted.returncode == 1, halted.stdout + halted.stderr
    assert "HALTED: 1 of 2 devices failed release 0.2.0" in halted.stdout
    assert "gw-2: health" in halted.stdout
    now = current_rollout(repo)
    # Same release: the same rollout id, so raising the share only added devices.
    assert (now["state"], now["percent"], now["id"]) == ("halted", 50, first["id"])


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    assert run("init", "--repo", repo, "--keys", keys).returncode == 0
    r = run("rollout", "--repo", repo, "--keys", keys, "--kind", "gateway", "--store", "sqlite:x.db")
    assert r.returncode == 2 and "--release and --percent are needed" in r.stderr
    r = run("rollout", "--repo", repo, "--keys", keys, "--kind", "gateway", "--store", "sqlite:x.db",
            "--release", "gateway/nope.tar.gz", "--percent", "5")
    assert r.returncode == 2 and "no such target" in r.stderr


def test_node_rollout_signs_manifests_for_the_cohort_and_halts_by_withdrawing_them(tmp_path: Path) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    assert run("init", "--repo", repo, "--keys", keys).returncode == 0
    assert run("add-node-bundle", "--repo", repo, "--dir", ROOT / "firmware", "--version", "0.2.0",
               "--hw", "esp32").returncode == 0
    nodes = [f"--node=n{i:02d}@{'canal-7' if i % 2 else 'lake-2'}" for i in range(40)]
    db = tmp_path / "ioc.db"
    with open_store(f"sqlite:{db}") as store:
        store.accept("n00", [{**status_event(1, "n00", "queued"), "seq": 1}], received_at=1.0)
    common = ["--repo", repo, "--keys", keys, "--kind", "node-esp32", "--store", f"sqlite:{db}",
              "--version", "0.2.0", "--counter", "2", "--key", keys / "node-release.key.pem", *nodes]
    r = run("rollout", *common, "--percent", "50", "--site", "canal-7")
    assert r.returncode == 0, r.stdout + r.stderr
    signed = sorted(p.stem for p in (repo / "nodes").glob("*.manifest"))
    # Only canal-7 nodes (odd numbers), about half of them; widening keeps them all.
    assert signed and all(int(n[1:]) % 2 for n in signed) and len(signed) < 20
    r = run("rollout", *common, "--percent", "100", "--site", "canal-7")
    wider = sorted(p.stem for p in (repo / "nodes").glob("*.manifest"))
    assert set(signed) < set(wider) and len(wider) == 20

    with open_store(f"sqlite:{db}") as store:
        first, second = wider[0], wider[1]
        store.accept(first, [status_event(1, first, "rolled-back", "no PUBACK")], received_at=2.0)
        store.accept(second, [status_event(1, second, "downloading")], received_at=2.0)
    halted = run("rollout", *common, "--percent", "100", "--site", "canal-7", "--max-failures", "0.5")
    assert halted.returncode == 1 and "HALTED" in halted.stdout, halted.stdout + halted.stderr
    # The failed node and the one already downloading keep their manifests; the rest never start.
    left = sorted(p.stem for p in (repo / "nodes").glob("*.manifest"))
    assert left == sorted([first, second])


def test_node_rollout_needs_its_arguments(tmp_path: Path) -> None:
    r = run("rollout", "--repo", tmp_path, "--keys", tmp_path, "--kind", "node-esp32", "--store", "sqlite:x.db",
            "--percent", "10")
    assert r.returncode == 2 and "--version, --counter, --key" in r.stderr
