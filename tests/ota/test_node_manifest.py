"""Per-node manifests (ota/node_manifest.py) and their CLI (``urbanedge ota add-node-bundle |
node-manifest | node-key-hex``): build, sign, and the checks a node makes, by reason."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from ota import node_cli
from ota.node_manifest import (
    MAX_FILES,
    ManifestError,
    ManifestRejected,
    NodeManifest,
    check_files,
    key_id,
    load_private_key,
    public_key_hex,
    public_sec1,
    sign_manifest,
    verify_manifest,
)
from tests.firmware.ota_http import sign_raw

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _manifest(**over: object) -> NodeManifest:
    base: dict[str, object] = {
        "node": "n1", "hw": "esp32", "version": "1.2.0", "counter": 7, "issued": NOW - 10, "expires": NOW + 3600,
        "base": "node/esp32/1.2.0/",
        "files": (("ue/app.py", 10, hashlib.sha256(b"a").digest()), ("ue/node.py", 20, hashlib.sha256(b"b").digest())),
    }
    base.update(over)
    return NodeManifest(**base)  # type: ignore[arg-type]


def _verify(data: bytes, key: ec.EllipticCurvePrivateKey, *, committed: int = 3) -> NodeManifest:
    return verify_manifest(data, [public_sec1(key.public_key())], node="n1", hw="esp32", now=NOW,
                           committed_counter=committed)


def test_round_trip_and_wire_layout() -> None:
    key = _key()
    m = _manifest()
    data = sign_manifest(m, key)
    assert _verify(data, key) == m
    tag = cbor2.loads(data)
    assert tag.tag == 18
    protected, unprotected, payload, sig = tag.value
    assert cbor2.loads(protected) == {1: -7}
    assert unprotected == {4: key_id(public_sec1(key.public_key()))} and len(unprotected[4]) == 8
    assert len(sig) == 64
    body = cbor2.loads(payload)
    assert body["v"] == 1 and body["files"][0] == ["ue/app.py", 10, hashlib.sha256(b"a").digest()]
    # equal counter: passes (the caller says "already installed")
    assert _verify(data, key, committed=7).counter == 7


def _reason(data: bytes, key: ec.EllipticCurvePrivateKey, **kw: int) -> str:
    with pytest.raises(ManifestRejected) as e:
        _verify(data, key, **kw)
    return e.value.reason


def test_each_rejection_names_its_reason() -> None:
    key, other = _key(), _key()
    good = sign_manifest(_manifest(), key)
    forged = bytearray(good)
    forged[-5] ^= 1
    assert _reason(bytes(forged), key) == "signature"
    assert _reason(sign_manifest(_manifest(), other), key) == "key"
    # the right kid, another key's signature
    kid = key_id(public_sec1(key.public_key()))
    assert _reason(sign_raw(_manifest().to_cbor_map(), other, kid=kid), key) == "signature"
    assert _reason(sign_manifest(_manifest(node="n2"), key), key) == "node"
    assert _reason(sign_manifest(_manifest(hw="esp32s3"), key), key) == "hw"
    assert _reason(sign_manifest(_manifest(expires=NOW), key), key) == "expired"
    assert _reason(sign_manifest(_manifest(counter=2), key), key) == "rollback"
    evil = _manifest().to_cbor_map()
    evil["files"] = [["ue/../main.py", 3, bytes(32)], ["ue/app.py", 1, bytes(32)]]
    assert _reason(sign_raw(evil, key), key) == "files"
    evil["files"] = [["ue/app.py", 1, bytes(32)]]
    evil["base"] = "../../etc/"
    assert _reason(sign_raw(evil, key), key) == "files"
    assert _reason(sign_raw(_manifest().to_cbor_map(), key, protected={1: -35}), key) == "format"
    assert _reason(b"\xff\x00", key) == "format"
    no_counter = _manifest().to_cbor_map()
    del no_counter["counter"]
    assert _reason(sign_raw(no_counter, key), key) == "format"


@given(st.text(min_size=1, max_size=30))
def test_only_plain_module_paths_under_ue_pass(name: str) -> None:
    path = "ue/" + name
    stem = name.rsplit(".", 1)[0]
    ok = name.isascii() and name.endswith((".py", ".mpy")) and len(stem) >= 1 \
        and all(c.isalnum() or c == "_" for c in stem)
    files = [("ue/app.py", 1, bytes(32))] + ([] if path == "ue/app.py" else [(path, 1, bytes(32))])
    if ok:
        check_files(files)
    else:
        with pytest.raises(ManifestRejected):
            check_files(files)


def test_file_list_bounds() -> None:
    with pytest.raises(ManifestRejected, match="missing"):
        check_files([("ue/node.py", 1, bytes(32))])
    with pytest.raises(ManifestRejected, match="twice"):
        check_files([("ue/app.py", 1, bytes(32)), ("ue/app.py", 1, bytes(32))])
    with pytest.raises(ManifestRejected, match="at most"):
        check_files([("ue/app.py", 1, bytes(32))] + [(f"ue/m{i}.py", 1, bytes(32)) for i in range(MAX_FILES)])
    with pytest.raises(ManifestRejected, match="length"):
        check_files([("ue/app.py", 10**7, bytes(32))])
    with pytest.raises(ManifestError):
        sign_manifest(_manifest(files=(("ue/x/../y.py", 1, bytes(32)),)), _key())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", "ota", *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def test_cli_bundle_manifest_and_key_hex(tmp_path: Path) -> None:
    key = _key()
    pem = tmp_path / "node-release.key.pem"
    _write_key(pem, key)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    repo = tmp_path / "repo"
    res = _cli("add-node-bundle", "--repo", str(repo), "--dir", str(ROOT / "firmware"), "--version", "1.2.0",
               "--hw", "esp32")
    assert res.returncode == 0, res.stdout + res.stderr
    bundle = repo / "node" / "esp32" / "1.2.0" / "ue"
    shipped = sorted(p.name for p in (ROOT / "firmware" / "ue").glob("*.py"))
    assert sorted(p.name for p in bundle.iterdir()) == shipped
    assert not (repo / "node" / "esp32" / "1.2.0" / "main.py").exists()  # the loader is not part of the app
    res = _cli("node-manifest", "--repo", str(repo), "--key", str(pem), "--node", "n1", "--hw", "esp32",
               "--version", "1.2.0", "--counter", "4", "--expires-hours", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    data = (repo / "nodes" / "n1.manifest").read_bytes()
    import time

    m = verify_manifest(data, [public_sec1(key.public_key())], node="n1", hw="esp32", now=int(time.time()),
                        committed_counter=0)
    assert m.counter == 4 and m.base == "node/esp32/1.2.0/"
    assert {p: (n, h) for p, n, h in m.files} == {
        f"ue/{name}": (len(b := (bundle / name).read_bytes()), hashlib.sha256(b).digest()) for name in shipped}
    assert 0 < m.expires - m.issued <= 2 * 3600
    res = _cli("node-key-hex", "--key", str(pem))
    assert res.returncode == 0 and res.stdout.strip() == public_key_hex(key)
    assert len(bytes.fromhex(res.stdout.strip())) == 65


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    res = _cli("node-manifest", "--repo", str(repo), "--key", str(tmp_path / "missing.pem"), "--node", "n1",
               "--version", "1.0.0", "--counter", "1")
    assert res.returncode == 2 and "missing.pem" in res.stdout
    bad = tmp_path / "rsa.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert _cli("node-key-hex", "--key", str(bad)).returncode == 2
    ed = tmp_path / "ed.pem"
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    res = _cli("node-key-hex", "--key", str(ed))
    assert res.returncode == 2 and "P-256" in res.stdout
    with pytest.raises(ManifestError, match="P-256"):
        load_private_key(ed.read_bytes(), str(ed))
    key = tmp_path / "k.pem"
    _write_key(key, _key())
    res = _cli("node-manifest", "--repo", str(repo), "--key", str(key), "--node", "n1", "--version", "9.9.9",
               "--counter", "1")
    assert res.returncode == 2 and "add-node-bundle" in res.stdout  # no such bundle yet
    res = _cli("add-node-bundle", "--repo", str(repo), "--dir", str(tmp_path), "--version", "1.0.0")
    assert res.returncode == 2 and "ue" in res.stdout
    res = _cli("add-node-bundle", "--repo", str(repo), "--dir", str(ROOT / "firmware"), "--version", "../x")
    assert res.returncode == 2
    assert node_cli.bundle_dir(repo, "esp32", "1.0.0") == repo / "node" / "esp32" / "1.0.0"
