"""The gateway SBOM: real distributions of this venv, the documented tree digest, the cache,
release tarballs, and the strict CycloneDX 1.6 validator."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import io
import json
import os
import re
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

import urbanedge
from ota.sbom import (
    DigestCache,
    ReleaseSourceError,
    SbomError,
    SbomInvalid,
    dist_digest,
    gateway_bom,
    gateway_bom_json,
    release_digest,
    validate_bom,
)


def documented_digest(files: dict[str, bytes], alg: str) -> str:
    """The digest as the module documents it, computed independently of the module."""
    lines = sorted((p.encode("utf-8"), hashlib.new(alg, data).hexdigest().encode()) for p, data in files.items())
    return hashlib.new(alg, b"".join(p + b"\0" + h + b"\n" for p, h in lines)).hexdigest()


def hashes_of(component: dict[str, Any]) -> dict[str, str]:
    return {h["alg"]: h["content"] for h in component.get("hashes", [])}


@pytest.fixture(scope="module")
def bom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("cache") / "digests.json"
    return gateway_bom(release="0.2.0", serial="urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79", cache_file=cache)


def test_gateway_bom_validates_strictly(bom: dict[str, Any]) -> None:
    validate_bom(json.dumps(bom))
    assert bom["specVersion"] == "1.6"
    assert bom["serialNumber"] == "urn:uuid:3e671687-395b-41f5-a30f-a58921a69b79"
    assert bom["metadata"]["timestamp"]
    app = bom["metadata"]["component"]
    assert (app["name"], app["type"], app["version"]) == ("urbanedge", "application", "0.2.0")
    assert set(hashes_of(app)) == {"SHA-256", "SHA-512"}
    assert {"name": "urbanedge", "type": "application", "version": urbanedge.__version__} in \
        bom["metadata"]["tools"]["components"]


def test_every_distribution_is_listed_with_both_hashes(bom: dict[str, Any]) -> None:
    by_purl = {c["purl"]: c for c in bom["components"]}
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                 for d in importlib.metadata.distributions()}
    installed.pop("urbanedge")  # the application is metadata.component, not a library of itself
    for name, version in installed.items():
        component = by_purl.get(f"pkg:pypi/{name}@{version}")
        assert component is not None, f"{name} {version} missing"
        assert component["type"] == "library"
        assert set(hashes_of(component)) == {"SHA-256", "SHA-512"}, name
    crypto = by_purl[f"pkg:pypi/cryptography@{importlib.metadata.version('cryptography')}"]
    assert crypto["version"] == importlib.metadata.version("cryptography")
    python = [c for c in bom["components"] if c["name"] == "cpython"]
    assert len(python) == 1 and python[0]["purl"].startswith("pkg:generic/cpython@3.11.")
    # The application depends on every component.
    app_ref = bom["metadata"]["component"]["bom-ref"]
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    assert deps[app_ref] == {c["bom-ref"] for c in bom["components"]}


def test_distribution_hash_is_the_documented_digest_of_its_record(bom: dict[str, Any]) -> None:
    dist = importlib.metadata.distribution("cryptography")
    record = next(f for f in dist.files or [] if f.name == "RECORD")
    base = Path(str(dist.locate_file(""))).resolve()
    files: dict[str, bytes] = {}
    with open(Path(str(dist.locate_file(record))), newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            path = row[0]
            parts = path.split("/")
            if "__pycache__" in parts or path.endswith(".pyc"):
                continue
            if parts[0].endswith(".dist-info") and parts[-1] in {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}:
                continue
            full = base / path
            if full.is_file():
                files[path] = full.read_bytes()
    crypto = next(c for c in bom["components"] if c["name"] == "cryptography")
    assert hashes_of(crypto) == {"SHA-256": documented_digest(files, "sha256"),
                                 "SHA-512": documented_digest(files, "sha512")}


def make_dist(root: Path, files: dict[str, bytes]) -> importlib.metadata.Distribution:
    info = root / "demo_pkg-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\nLicense: MIT\n")
    (info / "INSTALLER").write_text("pip\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    listed = [*files, "demo_pkg/gone.py", "demo_pkg/__pycache__/x.cpython-311.pyc",
              f"{info.name}/METADATA", f"{info.name}/INSTALLER", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{p},,\n" for p in listed))
    return importlib.metadata.PathDistribution(info)


def test_dist_digest_rules_and_cache(tmp_path: Path) -> None:
    site = tmp_path / "site"
    files = {"demo_pkg/__init__.py": b"x = 1\n", "demo_pkg/data/table.bin": bytes(range(256))}
    dist = make_dist(site, files)
    (site / "demo_pkg/__pycache__").mkdir()
    (site / "demo_pkg/__pycache__/x.cpython-311.pyc").write_bytes(b"compiled")
    meta = (site / "demo_pkg-1.0.dist-info/METADATA").read_bytes()
    expected = {**files, "demo_pkg-1.0.dist-info/METADATA": meta}

    cache_file = tmp_path / "cache.json"
    cold = DigestCache(cache_file)
    digest = dist_digest(dist, cold)
    assert digest is not None
    assert (digest.sha256, digest.sha512) == (documented_digest(expected, "sha256"),
                                              documented_digest(expected, "sha512"))
    assert (digest.files, digest.skipped) == (3, 1)  # gone.py is listed but missing
    assert (cold.hits, cold.misses) == (0, 1)
    cold.save()

    warm = DigestCache(cache_file)
    assert dist_digest(dist, warm) == digest
    assert (warm.hits, warm.misses) == (1, 0)

    # A reinstall rewrites RECORD: the cache key changes and the new content is hashed.
    (site / "demo_pkg/__init__.py").write_bytes(b"x = 2\n")
    record = site / "demo_pkg-1.0.dist-info/RECORD"
    record.write_text(record.read_text() + "demo_pkg/extra.py,,\n")
    again = DigestCache(cache_file)
    changed = dist_digest(dist, again)
    assert again.misses == 1 and changed is not None
    assert changed.sha256 == documented_digest({**expected, "demo_pkg/__init__.py": b"x = 2\n"}, "sha256")
    assert changed.skipped == 2


def test_damaged_cache_is_ignored(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = make_dist(site, {"demo_pkg/__init__.py": b""})
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    cache = DigestCache(cache_file)
    assert dist_digest(dist, cache) is not None
    cache.save()
    assert json.loads(cache_file.read_text())["version"] == 1


def make_slot(root: Path) -> dict[str, bytes]:
    files = {
        "agent/__init__.py": b"",
        "agent/app.py": b"print('agent')\n",
        "urbanedge/__init__.py": b"__version__ = '0.2.0'\n",
        "urbanedge_config/profiles/flood-sensor.toml": b"[device]\n",
    }
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    # Not part of the digest: compiled files, release notes outside the packages, symlinks.
    (root / "agent/__pycache__").mkdir()
    (root / "agent/__pycache__/app.cpython-311.pyc").write_bytes(b"pyc")
    (root / "agent/stale.pyc").write_bytes(b"pyc")
    (root / "RELEASE.json").write_text('{"version": "0.2.0"}')
    os.symlink(root / "agent/app.py", root / "agent/link.py")
    return files


def test_release_digest_same_for_slot_tarball_and_bom(tmp_path: Path) -> None:
    slot = tmp_path / "slot"
    files = make_slot(slot)
    tarball = tmp_path / "urbanedge-0.2.0.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in sorted(os.listdir(slot)):
            tar.add(slot / name, arcname=name)
    from_dir, from_tar = release_digest(slot), release_digest(tarball)
    assert from_dir == from_tar
    assert (from_dir.sha256, from_dir.sha512, from_dir.files) == (
        documented_digest(files, "sha256"), documented_digest(files, "sha512"), len(files))
    doc = gateway_bom(app_dir=slot, release="0.2.0")
    assert hashes_of(doc["metadata"]["component"]) == {"SHA-256": from_dir.sha256, "SHA-512": from_dir.sha512}

    (slot / "agent/app.py").write_bytes(b"print('tampered')\n")
    assert release_digest(slot).sha256 != from_tar.sha256


def test_release_digest_refuses_what_is_not_a_release(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseSourceError, match="holds none of the packages"):
        release_digest(tmp_path / "empty")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball")
    with pytest.raises(ReleaseSourceError, match=r"junk\.tar\.gz"):
        release_digest(junk)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("agent/../../etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ReleaseSourceError):
        release_digest(evil)


def test_validate_bom_rejects_a_bad_component_type(tmp_path: Path) -> None:
    doc = gateway_bom(app_dir=_slot(tmp_path), serial=str(uuid.uuid4()))
    validate_bom(json.dumps(doc))
    doc["components"][0]["type"] = "wheel"
    with pytest.raises(SbomInvalid) as caught:
        validate_bom(json.dumps(doc), where="bad.cdx.json")
    assert any("$.components[0].type" in e and "'wheel'" in e for e in caught.value.errors)
    assert str(caught.value).startswith("bad.cdx.json: ")
    with pytest.raises(SbomInvalid, match="not JSON"):
        validate_bom("{")
    with pytest.raises(SbomInvalid):
        validate_bom(json.dumps({"bomFormat": "CycloneDX", "specVersion": "1.6", "serialNumber": "nope"}))


def _slot(tmp_path: Path) -> Path:
    slot = tmp_path / "slot"
    make_slot(slot)
    return slot


def test_bad_serial_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SbomError, match="not a UUID"):
        gateway_bom_json(app_dir=_slot(tmp_path), serial="12")


def test_cache_forgets_uninstalled_distributions(tmp_path: Path) -> None:
    dist = make_dist(tmp_path / "site", {"demo_pkg/__init__.py": b""})
    cache_file = tmp_path / "cache.json"
    stale = {"stamp": [1, 2], "sha256": "0" * 64, "sha512": "0" * 128, "files": 1, "skipped": 0}
    cache_file.write_text(json.dumps({"version": 1, "dists": {"/gone/old-1.0.dist-info/RECORD": stale}}))
    cache = DigestCache(cache_file)
    dist_digest(dist, cache)
    cache.save()
    kept = json.loads(cache_file.read_text())["dists"]
    assert list(kept) == [str(tmp_path / "site/demo_pkg-1.0.dist-info/RECORD")]
