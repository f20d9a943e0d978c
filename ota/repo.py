"""The provincial release repository: TUF metadata and target files, signed on the release machine.

Layout (publish ``REPO`` with any static HTTP server; ``urbanedge ota serve`` is one)::

    REPO/metadata/1.root.json, N.root.json, root.json     root (2 keys, threshold 2, 365 d)
    REPO/metadata/N.targets.json                         targets (1 key, 90 d)
    REPO/metadata/N.snapshot.json                        snapshot (1 key, 7 d)
    REPO/metadata/timestamp.json                         timestamp (1 key, hours; re-signed by cron)
    REPO/targets/<dir>/<sha256>.<name>                   content-addressed target files
    REPO/node-release.pub.pem                            verifies per-node manifests
    KEYS/root-1.key.pem, root-2.key.pem, targets.key.pem, snapshot.key.pem, timestamp.key.pem,
    KEYS/node-release.key.pem, KEYS/repo-settings.json   (files 0600, directory 0700)

Consistent snapshots mean a client that fetched ``timestamp.json`` reads exactly the snapshot,
targets and files it names even while a publish is under way: new files are written first and
``timestamp.json`` is replaced last, each write atomic (temp file + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import secrets
import tarfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

# Both packages re-export these without __all__, which mypy --strict reads as private.
from securesystemslib.signer import CryptoSigner, Signer  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from ota.release_meta import ROLLOUT_STATES, Rollout, version_key
from urbanedge.atomic import write_atomically

log = logging.getLogger(__name__)

ROOT_EXPIRY = timedelta(days=365)
TARGETS_EXPIRY = timedelta(days=90)
SNAPSHOT_EXPIRY = timedelta(days=7)
DEFAULT_TIMESTAMP_EXPIRY = timedelta(hours=24)
TARGETS_RENEW_BEFORE = timedelta(days=30)
SNAPSHOT_RENEW_BEFORE = timedelta(days=3)
ROOT_WARN_BEFORE = timedelta(days=60)

ROOT_KEY_FILES = ("root-1.key.pem", "root-2.key.pem")
ROLE_KEY_FILES = {"targets": "targets.key.pem", "snapshot": "snapshot.key.pem", "timestamp": "timestamp.key.pem"}
NODE_RELEASE_KEY = "node-release.key.pem"
NODE_RELEASE_PUB = "node-release.pub.pem"
SETTINGS_FILE = "repo-settings.json"
GATEWAY_HW = "gateway-linux"
GATEWAY_PACKAGES = ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "urbanedge_config")
# In the source tree the configuration package is config/ (installed as urbanedge_config).
_SOURCE_ALIASES = {"urbanedge_config": "config"}
_TARGET_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_KIND = re.compile(r"^(gateway|node-[a-z0-9][a-z0-9-]*)$")

_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)
_SERIALIZER = JSONSerializer(compact=False)


class RepoError(Exception):
    """Bad input for a repository operation; the message names the file or field and the problem."""


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one."""
    write_atomically(path, data, mode=mode)


def _write_private(path: Path, data: bytes) -> None:
    # O_EXCL: a key file is never overwritten; 0600 from creation, not chmod-ed afterwards.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_signer(path: Path) -> CryptoSigner:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise RepoError(f"{path}: key file missing") from None
    try:
        key = serialization.load_pem_private_key(pem, None)
    except (ValueError, TypeError) as e:
        raise RepoError(f"{path}: not an unencrypted PKCS#8 PEM private key ({e})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RepoError(f"{path}: not an ed25519 key")
    return CryptoSigner(key)


def check_target_path(path: str) -> str:
    """A target path is ``seg/seg/name`` of [A-Za-z0-9._-], no ``..``: it becomes a URL and a file."""
    if not _TARGET_PATH.match(path) or any(seg in (".", "..") for seg in path.split("/")):
        raise RepoError(f"target path {path!r}: use segments of letters, digits, '.', '_', '-' separated by '/'")
    return path


def gateway_target(version: str) -> str:
    return f"gateway/urbanedge-{version}.tar.gz"


def gateway_sbom_target(version: str) -> str:
    return f"gateway/urbanedge-{version}.cdx.json"


def rollout_target(kind: str) -> str:
    return f"rollouts/{kind}.json"


class Repo:
    """A release repository opened with its keys (the release machine's view)."""

    def __init__(self, repo_dir: Path, keys_dir: Path, *, root: Metadata[Root], targets: Metadata[Targets],
                 snapshot: Metadata[Snapshot], timestamp: Metadata[Timestamp],
                 signers: Mapping[str, Sequence[Signer]], timestamp_expiry: timedelta) -> None:
        self.repo_dir = Path(repo_dir)
        self.keys_dir = Path(keys_dir)
        self.root = root
        self.targets = targets
        self.snapshot = snapshot
        self.timestamp = timestamp
        self.signers = {role: list(s) for role, s in signers.items()}
        self.timestamp_expiry = timestamp_expiry
        self._dirty = False

    @property
    def metadata_dir(self) -> Path:
        return self.repo_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.repo_dir / "targets"

    @property
    def bootstrap_root_path(self) -> Path:
        """What a gateway is provisioned with as its trust anchor."""
        return self.metadata_dir / "1.root.json"

    # --- creating and opening -------------------------------------------------------------

    @classmethod
    def create(cls, repo_dir: Path, keys_dir: Path, *,
               timestamp_expiry: timedelta = DEFAULT_TIMESTAMP_EXPIRY) -> Repo:
        repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
        if timestamp_expiry <= timedelta(0):
            raise RepoError(f"timestamp expiry must be positive, got {timestamp_expiry}")
        existing = [p for p in (repo_dir / "metadata" / "1.root.json", repo_dir / "metadata" / "root.json",
                                *(keys_dir / n for n in (*ROOT_KEY_FILES, *ROLE_KEY_FILES.values(),
                                                         NODE_RELEASE_KEY)))
                    if p.exists()]
        if existing:
            raise RepoError(f"{existing[0]}: a repository already exists here; refusing to overwrite it")
        (repo_dir / "metadata").mkdir(parents=True, exist_ok=True)
        (repo_dir / "targets").mkdir(parents=True, exist_ok=True)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(keys_dir, 0o700)

        signers: dict[str, list[Signer]] = {"root": [CryptoSigner.generate_ed25519() for _ in ROOT_KEY_FILES]}
        for role in ROLE_KEY_FILES:
            signers[role] = [CryptoSigner.generate_ed25519()]
        now = _now()
        root = Metadata(Root(expires=now + ROOT_EXPIRY, consistent_snapshot=True))
        for role, role_signers in signers.items():
            for s in role_signers:
                root.signed.add_key(s.public_key, role)
        root.signed.roles["root"].threshold = len(ROOT_KEY_FILES)

        for name, s in zip(ROOT_KEY_FILES, signers["root"], strict=True):
            _write_private(keys_dir / name, cast(CryptoSigner, s).private_bytes)
        for role, name in ROLE_KEY_FILES.items():
            _write_private(keys_dir / name, cast(CryptoSigner, signers[role][0]).private_bytes)
        node_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(keys_dir / NODE_RELEASE_KEY, node_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        atomic_write(repo_dir / NODE_RELEASE_PUB, node_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        atomic_write(keys_dir / SETTINGS_FILE, json.dumps(
            {"timestamp_expiry_seconds": int(timestamp_expiry.total_seconds())}).encode(), 0o600)

        repo = cls(repo_dir, keys_dir, root=root,
                   targets=Metadata(Targets(version=1, expires=now + TARGETS_EXPIRY)),
                   snapshot=Metadata(Snapshot(version=1, expires=now + SNAPSHOT_EXPIRY)),
                   timestamp=Metadata(Timestamp(version=1, expires=now + timestamp_expiry)),
                   signers=signers, timestamp_expiry=timestamp_expiry)
        repo._sign_and_write_root(signers["root"])
        repo._write_top_level(bump=False)
        log.info("event=ota_repo_created repo=%s", repo_dir)
        return repo

    @staticmethod
    def _load(repo_dir: Path) -> tuple[Metadata[Root], Metadata[Targets], Metadata[Snapshot], Metadata[Timestamp]]:
        meta = repo_dir / "metadata"
        root = _read(meta / "root.json", Root)
        timestamp = _read(meta / "timestamp.json", Timestamp)
        snapshot = _read(meta / f"{timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot)
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise RepoError(f"{meta}: snapshot names no targets.json")
        targets = _read(meta / f"{targets_meta.version}.targets.json", Targets)
        return root, targets, snapshot, timestamp

    @classmethod
    def open_unsigned(cls, repo_dir: Path) -> Repo:
        """The repository without its keys: for reading (``list``); signing raises RepoError."""
        root, targets, snapshot, timestamp = cls._load(Path(repo_dir))
        return cls(Path(repo_dir), Path(repo_dir), root=root, targets=targets, snapshot=snapshot,
                   timestamp=timestamp, signers={}, timestamp_expiry=DEFAULT_TIMESTAMP_EXPIRY)

    @classmethod
    def open(cls, repo_dir: Path, keys_dir: Path) -> Repo:
        repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
        root, targets, snapshot, timestamp = cls._load(repo_dir)
        signers: dict[str, list[Signer]] = {"root": [_load_signer(keys_dir / n) for n in ROOT_KEY_FILES]}
        for role, name in ROLE_KEY_FILES.items():
            signers[role] = [_load_signer(keys_dir / name)]
        for role, role_signers in signers.items():
            keyids = set(root.signed.roles[role].keyids)
            for name, s in zip(ROOT_KEY_FILES if role == "root" else (ROLE_KEY_FILES[role],), role_signers,
                               strict=True):
                if s.public_key.keyid not in keyids:
                    raise RepoError(f"{keys_dir / name}: not a {role} key of the repository in {repo_dir}")
        expiry = DEFAULT_TIMESTAMP_EXPIRY
        with contextlib.suppress(FileNotFoundError):
            try:
                settings = json.loads((keys_dir / SETTINGS_FILE).read_text())
                expiry = timedelta(seconds=int(settings["timestamp_expiry_seconds"]))
            except (ValueError, KeyError, TypeError) as e:
                raise RepoError(f"{keys_dir / SETTINGS_FILE}: malformed ({e})") from None
        return cls(repo_dir, keys_dir, root=root, targets=targets, snapshot=snapshot, timestamp=timestamp,
                   signers=signers, timestamp_expiry=expiry)

    # --- targets ----------------------------------------------------------------------------

    def target_files(self) -> dict[str, TargetFile]:
        return dict(self.targets.signed.targets)

    def add_target(self, path: str, data: bytes, custom: Mapping[str, Any] | None = None) -> TargetFile:
        """Stage a target (its file is written now, content-addressed); ``publish()`` signs it."""
        check_target_path(path)
        target = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            target.unrecognized_fields["custom"] = json.loads(json.dumps(custom))
        dirname, sep, basename = path.rpartition("/")
        atomic_write(self.targets_dir / f"{dirname}{sep}{target.hashes['sha256']}.{basename}", data)
        self.targets.signed.targets[path] = target
        self._dirty = True
        log.info("event=ota_target_staged path=%s length=%d", path, target.length)
        return target

    def set_rollout(self, kind: str, release: str, percent: int, *, sites: Sequence[str] | None = None,
                    state: str = "active", rollout_id: str | None = None) -> Rollout:
        """Stage the rollout pointer ``rollouts/<kind>.json``; ``publish()`` signs it."""
        if not _KIND.match(kind):
            raise RepoError(f"--kind {kind!r}: must be 'gateway' or 'node-<hw>'")
        if release not in self.targets.signed.targets:
            raise RepoError(f"--release {release!r}: no such target in the repository")
        if isinstance(percent, bool) or not 0 <= percent <= 100:
            raise RepoError(f"--percent {percent}: must be 0..100")
        if state not in ROLLOUT_STATES:
            raise RepoError(f"--state {state!r}: must be one of {', '.join(ROLLOUT_STATES)}")
        if sites is not None and not all(isinstance(s, str) and s for s in sites):
            raise RepoError("--site: site names must be non-empty")
        rollout = Rollout(id=rollout_id or f"r-{secrets.token_hex(4)}", release=release,
                          sites=tuple(sites) if sites is not None else None, percent=percent, state=state)
        self.add_target(rollout_target(kind), json.dumps(rollout.to_dict(), sort_keys=True).encode(),
                        {"urbanedge": {"kind": "rollout"}})
        return rollout

    # --- signing and writing ------------------------------------------------------------------

    def publish(self, *, targets_signers: Sequence[Signer] | None = None) -> None:
        """Sign and write new targets, snapshot and timestamp versions.

        ``targets_signers`` replaces the targets key (tests use it to publish metadata signed by
        a key the root does not know).
        """
        now = _now()
        self.targets.signed.version += 1
        self.targets.signed.expires = now + TARGETS_EXPIRY
        self._sign(self.targets, targets_signers or self.signers.get("targets", []))
        self._write_top_level(bump=True)
        self._dirty = False
        log.info("event=ota_repo_published targets_version=%d snapshot_version=%d timestamp_version=%d",
                 self.targets.signed.version, self.snapshot.signed.version, self.timestamp.signed.version)

    def refresh_timestamp(self, expiry: timedelta | None = None) -> None:
        """Re-sign ``timestamp.json`` with a new version (cron does this before it expires).

        A negative ``expiry`` writes an already expired timestamp (tests: the freeze attack).
        """
        self.timestamp.signed.version += 1
        self.timestamp.signed.expires = _now() + (self.timestamp_expiry if expiry is None else expiry)
        self._sign(self.timestamp, self.signers.get("timestamp", []))
        atomic_write(self.metadata_dir / "timestamp.json", self.timestamp.to_bytes(_SERIALIZER))
        log.info("event=ota_timestamp_signed version=%d expires=%s", self.timestamp.signed.version,
                 self.timestamp.signed.expires.isoformat())

    def renew(self, now: datetime | None = None) -> list[str]:
        """Re-sign targets and snapshot when they near expiry (``ota timestamp`` calls this).

        Cron re-signs only the timestamp every few hours; without this the 7-day snapshot would
        expire a week after the last release and every device would refuse the repository.
        Returns the roles renewed (none, or targets+snapshot+timestamp: one publish).
        """
        now = now or _now()
        due = [role for role, md, margin in (("targets", self.targets, TARGETS_RENEW_BEFORE),
                                             ("snapshot", self.snapshot, SNAPSHOT_RENEW_BEFORE))
               if md.signed.expires - now < margin]
        if due:
            log.info("event=ota_renew due=%s", ",".join(due))
            self.publish()
        if self.root.signed.expires - now < ROOT_WARN_BEFORE:
            # Root is signed with the offline keys: only a warning, a person has to do it.
            log.warning("event=ota_root_expires_soon expires=%s", self.root.signed.expires.isoformat())
        return due

    def publish_root(self, signers: Sequence[Signer] | None = None) -> None:
        """Write the next root version, signed by ``signers`` (default: all root keys).

        Key rotation itself is not offered; tests use this to publish a root signed below the
        threshold.
        """
        self.root.signed.version += 1
        self.root.signed.expires = _now() + ROOT_EXPIRY
        self._sign_and_write_root(signers if signers is not None else self.signers.get("root", []))

    def _sign_and_write_root(self, signers: Sequence[Signer]) -> None:
        self._sign(self.root, signers)
        data = self.root.to_bytes(_SERIALIZER)
        atomic_write(self.metadata_dir / f"{self.root.signed.version}.root.json", data)
        atomic_write(self.metadata_dir / "root.json", data)

    @staticmethod
    def _sign(md: Metadata[Any], signers: Iterable[Signer]) -> None:
        signers = list(signers)
        if not signers:
            raise RepoError(f"no key to sign {md.signed.type} with (opened without --keys?)")
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)

    def _write_top_level(self, *, bump: bool) -> None:
        now = _now()
        if not bump:
            self._sign(self.targets, self.signers.get("targets", []))
        targets_bytes = self.targets.to_bytes(_SERIALIZER)
        atomic_write(self.metadata_dir / f"{self.targets.signed.version}.targets.json", targets_bytes)

        snap = self.snapshot.signed
        if bump:
            snap.version += 1
        snap.expires = now + SNAPSHOT_EXPIRY
        snap.meta["targets.json"] = MetaFile(version=self.targets.signed.version, length=len(targets_bytes),
                                             hashes={"sha256": hashlib.sha256(targets_bytes).hexdigest()})
        self._sign(self.snapshot, self.signers.get("snapshot", []))
        snapshot_bytes = self.snapshot.to_bytes(_SERIALIZER)
        atomic_write(self.metadata_dir / f"{snap.version}.snapshot.json", snapshot_bytes)

        ts = self.timestamp.signed
        if bump:
            ts.version += 1
        ts.expires = now + self.timestamp_expiry
        ts.snapshot_meta = MetaFile(version=snap.version, length=len(snapshot_bytes),
                                    hashes={"sha256": hashlib.sha256(snapshot_bytes).hexdigest()})
        self._sign(self.timestamp, self.signers.get("timestamp", []))
        # Last: until this replace, clients keep seeing the previous consistent state.
        atomic_write(self.metadata_dir / "timestamp.json", self.timestamp.to_bytes(_SERIALIZER))


def _read(path: Path, typ: type[_S]) -> Metadata[_S]:
    if not path.is_file():
        raise RepoError(f"{path}: missing (not a repository made by `urbanedge ota init`?)")
    try:
        md: Metadata[Any] = Metadata.from_file(str(path))
    except Exception as e:  # python-tuf raises DeserializationError or ValueError subclasses
        raise RepoError(f"{path}: not valid TUF metadata ({e})") from None
    if not isinstance(md.signed, typ):
        raise RepoError(f"{path}: expected {typ.type} metadata, found {md.signed.type}")
    return md


# --- release helpers (used by the CLI and by other parts) ------------------------------------


def add_target(repo_dir: Path, keys_dir: Path, target_path: str, data_or_file: bytes | Path,
               custom: Mapping[str, Any] | None = None) -> TargetFile:
    """Add one target and publish (new targets, snapshot, timestamp versions)."""
    data = _read_input(data_or_file) if isinstance(data_or_file, Path) else data_or_file
    repo = Repo.open(repo_dir, keys_dir)
    target = repo.add_target(target_path, data, custom)
    repo.publish()
    return target


def _read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepoError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RepoError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise RepoError(f"{path}: permission denied") from None


def check_version(version: str, what: str = "--version") -> str:
    try:
        version_key(version)
    except ValueError as e:
        raise RepoError(f"{what}: {e}") from None
    return version


def add_gateway(repo: Repo, tarball: Path, *, version: str, counter: int, hw: Sequence[str] = (GATEWAY_HW,),
                min_agent_version: str | None = None, sbom: Path | None = None) -> TargetFile:
    """Stage a gateway release (and its SBOM as a target of its own); the caller publishes."""
    check_version(version)
    if min_agent_version is not None:
        check_version(min_agent_version, "--min-agent-version")
    if counter < 0:
        raise RepoError(f"--counter {counter}: must be >= 0")
    if not hw or not all(hw):
        raise RepoError("--hw: at least one hardware class")
    data = _read_input(tarball)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile("RELEASE.json") if "RELEASE.json" in tar.getnames() else None
            if member is None:
                raise RepoError(f"{tarball}: no RELEASE.json at the top level (build it with `ota build-gateway`)")
            release_json = member.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise RepoError(f"{tarball}: not a gzip tarball ({e})") from None
    try:
        built = json.loads(release_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RepoError(f"{tarball}: RELEASE.json: not JSON ({e})") from None
    # The installer compares RELEASE.json with the signed metadata; catch a mismatch here, not in the field.
    for key, value in (("version", version), ("release_counter", counter)):
        if isinstance(built, dict) and key in built and built[key] != value:
            raise RepoError(f"{tarball}: RELEASE.json {key} is {built[key]!r}, not {value!r} as given")
    highest = max((t.custom["urbanedge"]["release_counter"] for t in repo.target_files().values()
                   if isinstance(t.custom, dict) and isinstance(t.custom.get("urbanedge"), dict)
                   and t.custom["urbanedge"].get("kind") == "gateway"
                   and isinstance(t.custom["urbanedge"].get("release_counter"), int)), default=None)
    if highest is not None and counter <= highest:
        # Allowed (re-publishing an old build for a lab, say), but devices will refuse it.
        log.warning("event=ota_counter_not_increasing counter=%d highest=%d", counter, highest)
    meta: dict[str, Any] = {"kind": "gateway", "version": version, "release_counter": counter, "hw": list(hw)}
    if min_agent_version is not None:
        meta["min_agent_version"] = min_agent_version
    if sbom is not None:
        sbom_data = _read_input(sbom)
        try:
            doc = json.loads(sbom_data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RepoError(f"{sbom}: not JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
            raise RepoError(f"{sbom}: not a CycloneDX JSON document (bomFormat)")
        repo.add_target(gateway_sbom_target(version), sbom_data,
                        {"urbanedge": {"kind": "sbom", "version": version, "release": gateway_target(version)}})
        meta["sbom"] = gateway_sbom_target(version)
    return repo.add_target(gateway_target(version), data, {"urbanedge": meta})


def build_gateway(source: Path, version: str, out: Path, *, counter: int) -> dict[str, Any]:
    """Build the gateway release tarball from a source tree; returns its RELEASE.json.

    RELEASE.json holds ``version``, ``release_counter`` (the installer checks both against the
    signed metadata), ``requires`` (the source's ``pyproject.toml`` dependencies: a release is
    code only, the gateway image provides the packages, and the installer refuses a release the
    image cannot satisfy), the package list and a SHA-256 per file.

    Deterministic (same tree, same bytes): sorted entries, mtime 0, uid/gid 0, fixed modes,
    gzip header without name or time; ``__pycache__`` and ``*.pyc`` are left out.
    """
    check_version(version)
    if isinstance(counter, bool) or counter < 0:
        raise RepoError(f"--counter {counter}: must be >= 0")
    source = Path(source)
    requires: list[str] = []
    pyproject = source / "pyproject.toml"
    if pyproject.is_file():
        try:
            deps = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("dependencies", [])
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise RepoError(f"{pyproject}: not TOML ({e})") from None
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise RepoError(f"{pyproject}: project.dependencies: not a list of strings")
        requires = list(deps)
    files: dict[str, Path] = {}
    for package in GATEWAY_PACKAGES:
        src = source / package
        if not src.is_dir() and package in _SOURCE_ALIASES:
            src = source / _SOURCE_ALIASES[package]
        if not src.is_dir():
            raise RepoError(f"{source / package}: package directory missing in the source tree")
        for p in src.rglob("*"):
            rel = p.relative_to(src)
            if p.is_dir() or "__pycache__" in rel.parts or p.suffix == ".pyc" or p.is_symlink():
                continue
            files[f"{package}/{rel.as_posix()}"] = p
    release = {"name": "urbanedge", "version": version, "release_counter": counter, "requires": requires,
               "packages": list(GATEWAY_PACKAGES),
               "files": {name: hashlib.sha256(files[name].read_bytes()).hexdigest() for name in sorted(files)}}
    release_bytes = json.dumps(release, indent=1, sort_keys=True).encode() + b"\n"

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add("RELEASE.json", release_bytes)
        for name in sorted(files):
            add(name, files[name].read_bytes())
    atomic_write(Path(out), buf.getvalue())
    log.info("event=ota_gateway_built version=%s files=%d out=%s", version, len(files), out)
    return release
