"""Release metadata a device judges before it installs anything (sans-IO).

A release is a TUF target whose ``custom["urbanedge"]`` carries what TUF itself does not check:
the release counter (anti-rollback across versions TUF would happily serve, Uptane style), the
hardware classes it is built for and the oldest agent able to install it. TUF has already
verified signatures, freshness and hashes by the time these functions run; they decide whether a
*validly signed* release is one this device should take.

Rollout pointers (``rollouts/<kind>.json``) choose which devices take a release: a device is in
the cohort when the sites match and a hash of the rollout id and the device id falls below the
percentage, so raising the percentage only ever adds devices.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ROLLOUT_STATES = ("active", "halted")
_VERSION_RE = re.compile(r"^(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?$")
_PRE_ORDER = {"a": 0, "b": 1, "rc": 2}


class BadReleaseMetadata(ValueError):
    """A target's custom metadata or a rollout pointer is malformed; ``field`` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class ReleaseRejected(Exception):
    """A validly signed release this device must not install; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Verdict(StrEnum):
    INSTALL = "install"
    ALREADY_INSTALLED = "already-installed"


@dataclass(frozen=True)
class ReleaseInfo:
    path: str
    kind: str
    version: str
    release_counter: int
    hw: tuple[str, ...]
    min_agent_version: str | None
    sbom: str | None
    length: int
    hashes: Mapping[str, str]


@dataclass(frozen=True)
class Rollout:
    id: str
    release: str
    sites: tuple[str, ...] | None
    percent: int
    state: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "release": self.release,
                "sites": list(self.sites) if self.sites is not None else None,
                "percent": self.percent, "state": self.state}


def version_key(version: str) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Sort key for the PEP 440 subset we publish: ``N(.N)*`` with an optional aN/bN/rcN.

    ``packaging`` is not a runtime dependency of the gateway, so the subset is compared here;
    trailing zeros do not count (1.0 == 1.0.0) and a final release sorts after its pre-releases.
    """
    m = _VERSION_RE.match(version)
    if m is None:
        raise ValueError(f"not a version of the form 1.2.3 or 1.2.3rc1: {version!r}")
    release = tuple(int(p) for p in m.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    pre = (_PRE_ORDER[m.group(2)], int(m.group(3))) if m.group(2) else (3, 0)
    return release, pre


def _req(custom: Mapping[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in custom:
        raise BadReleaseMetadata(f"custom.urbanedge.{key}", "missing")
    value = custom[key]
    if isinstance(value, bool) or not isinstance(value, typ):
        raise BadReleaseMetadata(f"custom.urbanedge.{key}", f"wrong type {type(value).__name__}")
    return value


def parse_custom(path: str, custom: Any, length: int, hashes: Mapping[str, str]) -> ReleaseInfo:
    """The ``ReleaseInfo`` of target ``path`` from its TUF custom metadata.

    Raises ``BadReleaseMetadata`` naming the field that is missing or malformed.
    """
    if not isinstance(custom, Mapping) or not isinstance(custom.get("urbanedge"), Mapping):
        raise BadReleaseMetadata("custom.urbanedge", f"missing in target {path}")
    ue: Mapping[str, Any] = custom["urbanedge"]
    kind = _req(ue, "kind", str)
    version = _req(ue, "version", str)
    try:
        version_key(version)
    except ValueError as e:
        raise BadReleaseMetadata("custom.urbanedge.version", str(e)) from None
    counter = _req(ue, "release_counter", int)
    if counter < 0:
        raise BadReleaseMetadata("custom.urbanedge.release_counter", "negative")
    hw = _req(ue, "hw", list)
    if not hw or not all(isinstance(h, str) and h for h in hw):
        raise BadReleaseMetadata("custom.urbanedge.hw", "must be a non-empty list of hardware class names")
    min_agent = ue.get("min_agent_version")
    if min_agent is not None:
        if not isinstance(min_agent, str):
            raise BadReleaseMetadata("custom.urbanedge.min_agent_version", "must be a string")
        try:
            version_key(min_agent)
        except ValueError as e:
            raise BadReleaseMetadata("custom.urbanedge.min_agent_version", str(e)) from None
    sbom = ue.get("sbom")
    if sbom is not None and (not isinstance(sbom, str) or not sbom):
        raise BadReleaseMetadata("custom.urbanedge.sbom", "must be a target path")
    return ReleaseInfo(path=path, kind=kind, version=version, release_counter=counter, hw=tuple(hw),
                       min_agent_version=min_agent, sbom=sbom, length=length, hashes=dict(hashes))


def check_release(info: ReleaseInfo, *, committed_counter: int, hw: str, agent_version: str) -> Verdict:
    """Whether this device (hardware class ``hw``, running ``agent_version``, having committed
    ``committed_counter``) installs ``info``; raises ``ReleaseRejected`` when it must not."""
    if hw not in info.hw:
        raise ReleaseRejected("wrong-hardware", f"{info.path} is for {', '.join(info.hw)}, this device is {hw}")
    if info.release_counter < committed_counter:
        raise ReleaseRejected("rollback", f"{info.path} has release counter {info.release_counter}, "
                                          f"this device committed {committed_counter}")
    if info.release_counter == committed_counter:
        return Verdict.ALREADY_INSTALLED
    if info.min_agent_version is not None and version_key(agent_version) < version_key(info.min_agent_version):
        raise ReleaseRejected("agent-too-old", f"{info.path} needs agent >= {info.min_agent_version}, "
                                               f"this one is {agent_version}")
    return Verdict.INSTALL


def parse_rollout(data: bytes) -> Rollout:
    """A rollout pointer from its JSON bytes; ``BadReleaseMetadata`` names the bad field."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadReleaseMetadata("rollout", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadReleaseMetadata("rollout", "not a JSON object")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise BadReleaseMetadata("rollout.id", "must be a non-empty string")
    release = obj.get("release")
    if not isinstance(release, str) or not release:
        raise BadReleaseMetadata("rollout.release", "must be a target path")
    sites = obj.get("sites")
    if sites is not None and (not isinstance(sites, list) or not all(isinstance(s, str) for s in sites)):
        raise BadReleaseMetadata("rollout.sites", "must be null or a list of site names")
    percent = obj.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise BadReleaseMetadata("rollout.percent", "must be an integer 0..100")
    state = obj.get("state")
    if state not in ROLLOUT_STATES:
        raise BadReleaseMetadata("rollout.state", f"must be one of {', '.join(ROLLOUT_STATES)}")
    return Rollout(id=rid, release=release, sites=tuple(sites) if sites is not None else None,
                   percent=percent, state=state)


def cohort_bucket(rollout_id: str, device_id: str) -> int:
    """The device's bucket 0..99 for this rollout (stable, independent across rollouts)."""
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def in_cohort(rollout: Rollout, device_id: str, site: str | None) -> bool:
    """Whether ``device_id`` at ``site`` takes this rollout now (a halted rollout takes nobody)."""
    if rollout.state != "active":
        return False
    if rollout.sites is not None and site not in rollout.sites:
        return False
    return cohort_bucket(rollout.id, device_id) < rollout.percent
