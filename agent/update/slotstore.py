"""The application slots on disk: ``SLOTS/state.json``, ``SLOTS/a/``, ``SLOTS/b/``.

Each slot holds one release's Python packages (``agent/``, ``drivers/``, …) and its
``RELEASE.json``; the launcher puts the chosen slot first on ``PYTHONPATH``. Installing
unpacks into ``<slot>.new`` and renames it into place only when complete, so a power cut
during the unpack leaves a leftover directory (removed at the next install), never a
half-written slot that could be booted. The state file is written to a temporary file,
fsynced, renamed over the old one and the directory fsynced: after a power cut it is either
the old state or the new one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from agent.update.bootstate import BadBootState, BootState, Slot
from urbanedge.atomic import fsync_dir, write_atomically

log = logging.getLogger("urbanedge.update")

STATE_FILE = "state.json"
RELEASE_FILE = "RELEASE.json"
PACKAGES = ("agent", "drivers", "pki", "ioc", "ota", "provisioning", "urbanedge", "urbanedge_config")


class InstallError(Exception):
    """A downloaded release cannot be installed (its reason goes into the ``failed`` status)."""


@dataclass(frozen=True, slots=True)
class SlotRelease:
    version: str
    counter: int
    requires: tuple[str, ...]


class SlotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def slot_dir(self, slot: Slot) -> Path | None:
        """Where the slot's packages are, or None for factory (the installed package)."""
        return None if slot == "factory" else self.root / slot

    def load(self) -> BootState:
        """The boot state; a missing file is a factory gateway. Raises BadBootState if corrupt."""
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return BootState()
        try:
            return BootState.from_json(json.loads(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadBootState(f"{self.state_path}: {exc}") from exc

    def save(self, state: BootState) -> None:
        write_atomically(self.state_path, json.dumps(state.to_json(), indent=1, sort_keys=True).encode())

    def install(self, slot: Slot, tarball: Path, *, version: str, counter: int) -> SlotRelease:
        """Unpack a release tarball into ``slot``; check it is the release TUF described."""
        target = self.slot_dir(slot)
        if target is None:
            raise InstallError("the factory slot is never written")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{slot}.new"
        if staging.exists():
            shutil.rmtree(staging)  # a previous install cut short
        staging.mkdir()
        try:
            with tarfile.open(tarball, "r:gz") as tar:
                # "data" refuses absolute paths, "..", links out of the tree and device files.
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallError(f"cannot unpack {tarball.name}: {exc}") from exc
        try:
            rel = read_release(staging)
            if rel.version != version or rel.counter != counter:
                raise InstallError(f"{RELEASE_FILE} says {rel.version}/{rel.counter}, "
                                   f"the signed metadata {version}/{counter}")
            missing = [p for p in ("agent", "urbanedge") if not (staging / p / "__init__.py").is_file()]
            if missing:
                raise InstallError(f"release lacks the packages {', '.join(missing)}")
            unmet = unmet_requirements(rel.requires)
            if unmet:
                raise InstallError("needs Python packages this gateway lacks: " + ", ".join(unmet))
            _sync_tree(staging)
        except InstallError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if target.exists():
            old = self.root / f"{slot}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            shutil.rmtree(old)
        os.replace(staging, target)
        fsync_dir(self.root)
        return rel

    def cleanup(self) -> None:
        """Remove what an interrupted install left behind."""
        for leftover in ("a.new", "b.new", "a.old", "b.old"):
            p = self.root / leftover
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)


def read_release(slot_dir: Path) -> SlotRelease:
    path = slot_dir / RELEASE_FILE
    try:
        d: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InstallError(f"release has no {RELEASE_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise InstallError(f"{RELEASE_FILE}: {exc}") from exc
    if not isinstance(d, dict):
        raise InstallError(f"{RELEASE_FILE}: not an object")
    version, counter, requires = d.get("version"), d.get("release_counter"), d.get("requires", [])
    if not isinstance(version, str) or not version:
        raise InstallError(f"{RELEASE_FILE}: version: not a string")
    if not isinstance(counter, int) or isinstance(counter, bool) or counter < 0:
        raise InstallError(f"{RELEASE_FILE}: release_counter: not a non-negative integer")
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise InstallError(f"{RELEASE_FILE}: requires: not a list of strings")
    return SlotRelease(version, counter, tuple(requires))


def unmet_requirements(requires: tuple[str, ...]) -> list[str]:
    """Requirements (PEP 508) the gateway's Python environment does not satisfy.

    A release is code only: its dependencies come from the gateway image. One that needs a
    package the image lacks is refused before it is installed, not discovered by a crash.
    """
    from packaging.requirements import InvalidRequirement, Requirement

    unmet = []
    for spec in requires:
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            unmet.append(f"{spec} (not a valid requirement)")
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(spec)
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            unmet.append(f"{spec} (have {have})")
    return unmet


def _sync_tree(root: Path) -> None:
    # The rename that publishes the slot must not reach the disk before the files do.
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
