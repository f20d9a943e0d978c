"""The release repository (ota/repo.py), its CLI (ota/repo_cli.py) and the static server."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tuf.api.metadata import Metadata

from ota.repo import Repo, RepoError, build_gateway
from ota.static_server import StaticServer
from tests.ota.tuf_support import gateway_tarball
from tests.support.process import read_line, stop_process
from urbanedge.cli import main


def cli(*argv: str) -> int:
    return main(["ota", *argv])


def init(tmp_path: Path) -> tuple[Path, Path]:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    assert cli("init", "--repo", str(repo), "--keys", str(keys), "--timestamp-hours", "6") == 0
    return repo, keys


def test_init_layout_keys_and_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    out = capsys.readouterr().out
    assert f"bootstrap root for gateways: {repo / 'metadata' / '1.root.json'}" in out
    assert os.stat(keys).st_mode & 0o777 == 0o700
    key_files = sorted(p.name for p in keys.glob("*.pem"))
    assert key_files == ["node-release.key.pem", "root-1.key.pem", "root-2.key.pem", "snapshot.key.pem",
                         "targets.key.pem", "timestamp.key.pem"]
    for name in key_files:
        assert os.stat(keys / name).st_mode & 0o777 == 0o600, name

    root = Metadata.from_file(str(repo / "metadata" / "1.root.json")).signed
    assert root.consistent_snapshot is True
    assert len(root.roles["root"].keyids) == 2 and root.roles["root"].threshold == 2
    for role in ("targets", "snapshot", "timestamp"):
        assert len(root.roles[role].keyids) == 1
    days = {name: (Metadata.from_file(str(repo / "metadata" / f)).signed.expires
                   - Metadata.from_file(str(repo / "metadata" / "1.root.json")).signed.expires)
            for name, f in (("targets", "1.targets.json"), ("snapshot", "1.snapshot.json"))}
    assert round(days["targets"].days) == 90 - 365 and round(days["snapshot"].days) == 7 - 365
    ts = Metadata.from_file(str(repo / "metadata" / "timestamp.json")).signed
    snap = Metadata.from_file(str(repo / "metadata" / "1.snapshot.json")).signed
    assert abs((snap.expires - ts.expires).total_seconds() - (7 * 86400 - 6 * 3600)) < 5

    priv = serialization.load_pem_private_key((keys / "node-release.key.pem").read_bytes(), None)
    pub = serialization.load_pem_public_key((repo / "node-release.pub.pem").read_bytes())
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(priv.curve, ec.SECP256R1)
    assert priv.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]


def test_init_twice_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    before = (repo / "metadata" / "1.root.json").read_bytes()
    assert cli("init", "--repo", str(repo), "--keys", str(keys)) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "refusing to overwrite" in err
    assert (repo / "metadata" / "1.root.json").read_bytes() == before


def test_add_gateway_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    missing = tmp_path / "nope.tar.gz"
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(missing),
               "--version", "0.2.0", "--counter", "2") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--version", "two"], "--version"),
    (["--version", "0.2.0", "--min-agent-version", "x"], "--min-agent-version"),
])
def test_add_gateway_bad_versions(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                  needle: str) -> None:
    repo, keys = init(tmp_path)
    tb = gateway_tarball(tmp_path / "gw.tar.gz", "0.2.0", size=100)
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(tb), "--counter", "2",
               *args) == 2
    assert needle in capsys.readouterr().err


def test_add_gateway_rejects_a_file_that_is_not_a_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"not a tarball")
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(bogus),
               "--version", "0.2.0", "--counter", "2") == 2
    assert f"{bogus}: not a gzip tarball" in capsys.readouterr().err


def test_add_gateway_with_sbom_rollout_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    tb = gateway_tarball(tmp_path / "gw.tar.gz", "0.2.0", size=1000)
    sbom = tmp_path / "bom.cdx.json"
    sbom.write_text(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1}))
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(tb), "--version", "0.2.0",
               "--counter", "2", "--min-agent-version", "0.1.0", "--sbom", str(sbom)) == 0
    assert cli("set-rollout", "--repo", str(repo), "--keys", str(keys), "--kind", "gateway",
               "--release", "gateway/urbanedge-0.2.0.tar.gz", "--percent", "25", "--site", "hai-chau",
               "--id", "r-first") == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1]) == {
        "target": "rollouts/gateway.json", "id": "r-first", "release": "gateway/urbanedge-0.2.0.tar.gz",
        "sites": ["hai-chau"], "percent": 25, "state": "active"}

    assert cli("list", "--repo", str(repo)) == 0
    lines = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {"gateway/urbanedge-0.2.0.tar.gz", "gateway/urbanedge-0.2.0.cdx.json",
                          "rollouts/gateway.json"}
    gw = lines["gateway/urbanedge-0.2.0.tar.gz"]
    assert gw[1] == str(tb.stat().st_size)
    assert json.loads(gw[3]) == {"urbanedge": {"kind": "gateway", "version": "0.2.0", "release_counter": 2,
                                               "hw": ["gateway-linux"], "min_agent_version": "0.1.0",
                                               "sbom": "gateway/urbanedge-0.2.0.cdx.json"}}
    assert json.loads(lines["gateway/urbanedge-0.2.0.cdx.json"][3])["urbanedge"]["kind"] == "sbom"

    # Two publishes after init: targets, snapshot and timestamp are all at version 3.
    r = Repo.open(repo, keys)
    assert (r.targets.signed.version, r.snapshot.signed.version, r.timestamp.signed.version) == (3, 3, 3)
    for v in (1, 2, 3):
        assert (repo / "metadata" / f"{v}.targets.json").exists()
        assert (repo / "metadata" / f"{v}.snapshot.json").exists()


def test_set_rollout_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    base = ["set-rollout", "--repo", str(repo), "--keys", str(keys)]
    assert cli(*base, "--kind", "gateway", "--release", "gateway/none.tar.gz", "--percent", "5") == 2
    assert "--release 'gateway/none.tar.gz': no such target" in capsys.readouterr().err
    tb = gateway_tarball(tmp_path / "gw.tar.gz", "0.2.0", size=100)
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(tb), "--version", "0.2.0",
               "--counter", "2") == 0
    assert cli(*base, "--kind", "gateway", "--release", "gateway/urbanedge-0.2.0.tar.gz", "--percent", "101") == 2
    assert "--percent 101" in capsys.readouterr().err
    assert cli(*base, "--kind", "toaster", "--release", "gateway/urbanedge-0.2.0.tar.gz", "--percent", "1") == 2
    assert "--kind 'toaster'" in capsys.readouterr().err


def test_add_file_and_timestamp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    f = tmp_path / "node.py"
    f.write_text("print('hi')\n")
    base = ["--repo", str(repo), "--keys", str(keys)]
    assert cli("add-file", *base, "--path", "node/esp32/0.2.0/ue/node.py", "--file", str(f),
               "--custom", '{"urbanedge": {"kind": "node-file"}}') == 0
    assert cli("add-file", *base, "--path", "../evil", "--file", str(f)) == 2
    assert "target path '../evil'" in capsys.readouterr().err
    assert cli("add-file", *base, "--path", "a/b", "--file", str(f), "--custom", "[1]") == 2
    assert "--custom: must be a JSON object" in capsys.readouterr().err
    r = Repo.open(repo, keys)
    t = r.target_files()["node/esp32/0.2.0/ue/node.py"]
    assert t.custom == {"urbanedge": {"kind": "node-file"}}
    assert (repo / "targets" / "node/esp32/0.2.0/ue" / f"{t.hashes['sha256']}.node.py").read_bytes() == f.read_bytes()
    before = r.timestamp.signed.version
    assert cli("timestamp", *base) == 0
    assert Repo.open(repo, keys).timestamp.signed.version == before + 1
    assert "expires" in capsys.readouterr().out


def test_open_with_keys_of_another_repository(tmp_path: Path) -> None:
    Repo.create(tmp_path / "a", tmp_path / "ka")
    Repo.create(tmp_path / "b", tmp_path / "kb")
    with pytest.raises(RepoError, match="not a root key of the repository"):
        Repo.open(tmp_path / "a", tmp_path / "kb")
    with pytest.raises(RepoError, match="missing"):
        Repo.open(tmp_path / "nothing", tmp_path / "ka")


def _source_tree(root: Path) -> Path:
    for pkg in ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "config"):
        (root / pkg / "__pycache__").mkdir(parents=True)
        (root / pkg / "__init__.py").write_text(f"# {pkg}\n")
        (root / pkg / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"junk")
    (root / "config" / "profiles").mkdir()
    (root / "config" / "profiles" / "x.toml").write_text("a = 1\n")
    (root / "README.md").write_text("not packaged\n")
    (root / "pyproject.toml").write_text('[project]\nname = "urbanedge"\ndependencies = ["cbor2>=5.6,<6"]\n')
    return root


def test_build_gateway_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source_tree(tmp_path / "src")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert cli("build-gateway", "--source", str(src), "--version", "0.2.0", "--counter", "2", "--out", str(a)) == 0
    os.utime(src / "agent" / "__init__.py", (1, 1))  # mtimes must not matter
    assert cli("build-gateway", "--source", str(src), "--version", "0.2.0", "--counter", "2", "--out", str(b)) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header MTIME
    with tarfile.open(a) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[0] == "RELEASE.json" and names[1:] == sorted(names[1:])
        assert "urbanedge_config/profiles/x.toml" in names and "README.md" not in names
        assert not any("__pycache__" in n for n in names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        release = json.loads(tar.extractfile("RELEASE.json").read())  # type: ignore[union-attr]
    assert (release["version"], release["release_counter"], release["requires"]) == ("0.2.0", 2, ["cbor2>=5.6,<6"])
    assert set(release["files"]) == set(names[1:])


def test_build_gateway_missing_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source_tree(tmp_path / "src")
    (src / "ioc" / "__init__.py").unlink()
    (src / "ioc" / "__pycache__" / "__init__.cpython-311.pyc").unlink()
    (src / "ioc" / "__pycache__").rmdir()
    (src / "ioc").rmdir()
    assert cli("build-gateway", "--source", str(src), "--version", "0.2.0", "--counter", "2",
               "--out", str(tmp_path / "o")) == 2
    assert f"{src / 'ioc'}: package directory missing" in capsys.readouterr().err
    with pytest.raises(RepoError, match="--version"):
        build_gateway(src, "latest", tmp_path / "o", counter=1)


def _get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host_port = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host_port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_static_server_ranges(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.bin").write_bytes(data)
    (tmp_path.parent / "secret.txt").write_text("outside")
    with StaticServer(tmp_path) as srv:
        status, headers, body = _get(srv.url, "/d/f.bin")
        assert (status, body, headers["accept-ranges"]) == (200, data, "bytes")
        status, headers, body = _get(srv.url, "/d/f.bin", {"Range": "bytes=1000-"})
        assert (status, headers["content-range"], body) == (206, "bytes 1000-1023/1024", data[1000:])
        status, headers, body = _get(srv.url, "/d/f.bin", {"Range": "bytes=10-19"})
        assert (status, body) == (206, data[10:20])
        status, headers, body = _get(srv.url, "/d/f.bin", {"Range": "bytes=-4"})
        assert (status, body) == (206, data[-4:])
        status, headers, _ = _get(srv.url, "/d/f.bin", {"Range": "bytes=1024-"})
        assert (status, headers["content-range"]) == (416, "bytes */1024")
        assert _get(srv.url, "/d/../../secret.txt")[0] == 404
        assert _get(srv.url, "/d/nope")[0] == 404
        assert srv.faults.count("/d/f.bin") == 5
        assert srv.faults.ranges("/d/f.bin") == ["bytes=1000-", "bytes=10-19", "bytes=-4", "bytes=1024-"]


def test_ota_serve_cli(tmp_path: Path) -> None:
    repo, keys = tmp_path / "repo", tmp_path / "keys"
    Repo.create(repo, keys)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from urbanedge.cli import main; sys.exit(main())",
                             "ota", "serve", "--repo", str(repo)], stdout=subprocess.PIPE, text=True)
    try:
        url = read_line(proc, timeout=20).strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, body = _get(url, "/metadata/1.root.json", {"Range": "bytes=0-0"})
        assert (status, body) == (206, b"{")
    finally:
        assert stop_process(proc) == 0


def test_add_gateway_refuses_a_tarball_built_for_another_counter(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    repo, keys = init(tmp_path)
    tb = gateway_tarball(tmp_path / "gw.tar.gz", "0.2.0", size=100, counter=3)
    assert cli("add-gateway", "--repo", str(repo), "--keys", str(keys), "--tarball", str(tb), "--version", "0.2.0",
               "--counter", "2") == 2
    assert "RELEASE.json release_counter is 3, not 2" in capsys.readouterr().err


def test_timestamp_cron_renews_snapshot_and_targets_before_they_expire(tmp_path: Path) -> None:
    repo = Repo.create(tmp_path / "repo", tmp_path / "keys")
    now = datetime.now(UTC)
    assert repo.renew(now) == []
    assert repo.targets.signed.version == 1
    # Five days on, the 7-day snapshot is inside its renewal window; the 90-day targets are not.
    assert repo.renew(now + timedelta(days=5)) == ["snapshot"]
    assert (repo.targets.signed.version, repo.snapshot.signed.version, repo.timestamp.signed.version) == (2, 2, 2)
    assert repo.snapshot.signed.expires - now > timedelta(days=6)
    again = Repo.open(tmp_path / "repo", tmp_path / "keys")
    assert again.renew(now + timedelta(days=70)) == ["targets", "snapshot"]
    assert again.targets.signed.expires - now > timedelta(days=89)
