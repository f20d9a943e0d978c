"""[pure] The trial of a remotely applied configuration: what to do at start, when to decide.

One record, persisted next to the config (``<config>.trial.json``) BEFORE every switch of
the live file, drives everything (docs/remote-config.md)::

    (none) --config command--> trial --healthy before the deadline--> applied ----+
                                 |                                                |
                                 +--deadline passed / agent cannot start-->       |
                                 |    rolled-back (previous file restored) -------+--> reported
                                 +--live file edited by hand--> abandoned --------+    (record deleted)

"Healthy" is the OTA health check (:mod:`agent.update.health`): the uplink came online, every
bus polled a device, the broker acknowledged records. The deadline is wall-clock (unix s) so
it survives restarts; an agent killed on trial and started after the deadline rolls back.

The record names the files by SHA-256, so a start tells from the live file alone how far
the switch got: the new file (on trial), the previous one (switch or restore completed), or
neither (an operator edited it: left alone, the trial is abandoned).

No I/O and no clock: hashes and ``now`` are passed in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.config import AgentConfig
from agent.update.health import HealthVerdict

Phase = Literal["trial", "applied", "rolled-back", "abandoned"]
PHASES: tuple[Phase, ...] = ("trial", "applied", "rolled-back", "abandoned")
DEFAULT_DEADLINE = 120.0
MIN_DEADLINE, MAX_DEADLINE = 2.0, 3600.0

# Fields a remote configuration may not change (docs/remote-config.md, "What may not change"):
# they would make the gateway another device on the topic tree, move the outbox (and with it
# the unsent records and the trial's own report), or take the IOC's control away.
FIXED_FIELDS = (
    "identity.gateway_id", "identity.site", "broker.topic_prefix", "buffer.path",
    "commands.enabled", "commands.root", "commands.ioc_id", "commands.state",
    "update.slots", "update.state_dir", "update.root",
)


class TrialRecordError(ValueError):
    """A trial record that is not what this module writes."""


@dataclass(frozen=True)
class TrialRecord:
    id: str  # the config command's id (hex), so the IOC matches outcome to command
    phase: Phase
    started: float  # unix s
    deadline: float  # unix s
    new_sha256: str  # of the config on trial
    prev_sha256: str  # of the config it replaced (kept as <config>.prev)
    reason: str = ""  # rolled-back: uplink | buses | start | deadline | interrupted; abandoned: edited
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> TrialRecord:
        if not isinstance(d, dict):
            raise TrialRecordError("not a JSON object")
        try:
            rec = cls(**d)
        except TypeError as exc:
            raise TrialRecordError(f"fields: {exc}") from None
        if rec.phase not in PHASES:
            raise TrialRecordError(f"phase {rec.phase!r}")
        if not all(isinstance(v, str) for v in (rec.id, rec.new_sha256, rec.prev_sha256, rec.reason, rec.detail)):
            raise TrialRecordError("id, hashes, reason and detail must be strings")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (rec.started, rec.deadline)):
            raise TrialRecordError("started and deadline must be numbers")
        return rec

    def outcome(self) -> dict[str, Any]:
        """The body of the ``config_status`` event that reports this record."""
        return {"id": self.id, "state": self.phase, "reason": self.reason or None, "detail": self.detail[:300],
                "sha256": self.new_sha256, "started": self.started, "deadline": self.deadline}


def begin(command_id: str, new_sha256: str, prev_sha256: str, *, now: float, deadline: float) -> TrialRecord:
    if not MIN_DEADLINE <= deadline <= MAX_DEADLINE:
        raise ValueError(f"deadline {deadline:g} s is outside {MIN_DEADLINE:g}..{MAX_DEADLINE:g}")
    return TrialRecord(command_id, "trial", now, now + deadline, new_sha256, prev_sha256)


def rolled_back(rec: TrialRecord, reason: str, detail: str) -> TrialRecord:
    return dataclasses.replace(rec, phase="rolled-back", reason=reason, detail=detail)


StartKind = Literal["run", "trial", "rollback", "report"]


@dataclass(frozen=True)
class StartDecision:
    """``run``: no trial. ``trial``: run the live (new) config and judge it. ``rollback``: persist
    ``record`` (rolled-back), restore the previous file, then report. ``report``: persist
    ``record`` if it changed, send its outcome, drop it."""

    kind: StartKind
    record: TrialRecord | None = None


def decide_start(rec: TrialRecord | None, live_sha256: str | None, now: float) -> StartDecision:
    """What a starting agent does, from the persisted record and the live file's hash."""
    if rec is None:
        return StartDecision("run")
    if rec.phase == "rolled-back":
        # Decided, but the restore may not have happened (crash between the two writes).
        return StartDecision("rollback" if live_sha256 == rec.new_sha256 else "report", rec)
    if rec.phase != "trial":
        return StartDecision("report", rec)
    if live_sha256 == rec.new_sha256:
        if now < rec.deadline:
            return StartDecision("trial", rec)
        return StartDecision("rollback", rolled_back(
            rec, "deadline", f"the agent was not back and healthy before the deadline ({rec.deadline:.0f})"))
    if live_sha256 == rec.prev_sha256:
        return StartDecision("rollback", rolled_back(rec, "interrupted", "stopped before the new file was in place"))
    return StartDecision("report", dataclasses.replace(
        rec, phase="abandoned", reason="edited", detail="the live config was changed by hand during the trial"))


JudgeKind = Literal["wait", "commit", "rollback"]


@dataclass(frozen=True)
class Judgement:
    kind: JudgeKind
    record: TrialRecord


def judge(rec: TrialRecord, verdict: HealthVerdict, now: float) -> Judgement:
    """One look at the running agent on trial: healthy -> commit; past the deadline -> roll back."""
    if verdict.ok:
        return Judgement("commit", dataclasses.replace(rec, phase="applied", reason="", detail=""))
    if now < rec.deadline:
        return Judgement("wait", rec)
    # The uplink first: without it the IOC sees nothing else anyway (and an outbox that does not
    # drain is an uplink that does not work end to end).
    reason = "uplink" if {"uplink", "outbox"} & set(verdict.failed) else "buses"
    return Judgement("rollback", rolled_back(rec, reason, verdict.reason))


def _get(cfg: AgentConfig, dotted: str) -> object:
    obj: object = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def forbidden_changes(live: AgentConfig, new: AgentConfig) -> list[str]:
    """``field: old -> new`` for each :data:`FIXED_FIELDS` entry that differs (resolved paths)."""
    return [f"{f}: may not change remotely ({_get(live, f)!s} -> {_get(new, f)!s})"
            for f in FIXED_FIELDS if _get(live, f) != _get(new, f)]


def parse_args(args: Mapping[str, Any]) -> tuple[str, float]:
    """(TOML text, deadline seconds) of a decrypted ``config`` command; ValueError if unusable."""
    toml, deadline = args.get("toml"), args.get("deadline", DEFAULT_DEADLINE)
    if not isinstance(toml, str) or not toml.strip():
        raise ValueError("config needs args.toml: the full agent configuration (TOML text)")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
        raise ValueError(f"args.deadline must be a number of seconds, got {deadline!r}")
    if not MIN_DEADLINE <= deadline <= MAX_DEADLINE:
        raise ValueError(f"args.deadline {deadline:g} s is outside {MIN_DEADLINE:g}..{MAX_DEADLINE:g}")
    unknown = sorted(set(args) - {"toml", "deadline"})
    if unknown:
        raise ValueError(f"unknown args: {', '.join(unknown)}")
    return toml, float(deadline)
