"""[pure] How a rollout is going, from the devices' own signed status reports.

The IOC keeps every verified ``ota_status`` event (docs/ota.md). For one release, each
device's latest report says where it is; a rollout stops (its pointer set to ``halted``, so
no device starts installing it) when the share of devices that ended badly passes a threshold,
as soon as enough devices have answered for the share to mean something.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ota.release_meta import Rollout, in_cohort

GOOD = frozenset({"success"})
BAD = frozenset({"failed", "rolled-back", "rejected"})
STATES = frozenset({"queued", "downloading", "installing", "restarting", "verifying"}) | GOOD | BAD


@dataclass
class Tally:
    release: str
    latest: dict[str, str] = field(default_factory=dict)  # device -> latest state
    reasons: dict[str, str] = field(default_factory=dict)  # device -> reason of a bad end

    @property
    def succeeded(self) -> list[str]:
        return sorted(d for d, s in self.latest.items() if s in GOOD)

    @property
    def failed(self) -> list[str]:
        return sorted(d for d, s in self.latest.items() if s in BAD)

    @property
    def in_progress(self) -> list[str]:
        return sorted(d for d, s in self.latest.items() if s not in GOOD | BAD)

    @property
    def finished(self) -> int:
        return len(self.succeeded) + len(self.failed)

    def failure_ratio(self) -> float:
        return len(self.failed) / self.finished if self.finished else 0.0


def tally(records: Iterable[Mapping[str, Any]], release: str) -> Tally:
    """Records in arrival order (per source seq order); later reports supersede earlier ones.

    ``failed`` followed by ``rolled-back`` stays bad; a later ``success`` (a retry that
    worked) makes the device good again."""
    t = Tally(release)
    for r in records:
        if r.get("event") != "ota_status" or r.get("release") != release:
            continue
        state, device = r.get("state"), r.get("device_id")
        if not isinstance(state, str) or state not in STATES or not isinstance(device, str):
            continue
        t.latest[device] = state
        if state in BAD:
            t.reasons[device] = str(r.get("reason", ""))
    return t


def should_halt(t: Tally, *, max_failure_ratio: float, min_finished: int = 1) -> tuple[bool, str]:
    if t.finished < min_finished or t.failure_ratio() <= max_failure_ratio:
        return False, ""
    return True, (f"{len(t.failed)} of {t.finished} devices failed release {t.release} "
                  f"({t.failure_ratio():.0%} > {max_failure_ratio:.0%})")


def node_cohort(nodes: Iterable[tuple[str, str]], rollout: Rollout) -> list[str]:
    """The nodes (id, site) a rollout takes: the gateways' own rule, applied for them."""
    return sorted({node for node, site in nodes if in_cohort(rollout, node, site)})
