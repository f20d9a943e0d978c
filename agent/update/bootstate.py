"""[pure] Which application slot the gateway runs, and what a trial boot may do.

The gateway keeps two application slots (``a`` and ``b``) beside the factory installation
(the package pip installed, never overwritten by an update). ``slots/state.json`` says which
one runs and whether a new release is on trial. The launcher reads it before every start; the
agent writes it when it installs, commits or gives up on a release. Every transition here is
a pure function of the old state, so each can be tested without a file system, and the file is
always replaced as a whole (see ``agent/update/slotstore.py``), so a power cut leaves either
the old state or the new one.

A trial counts its boots *before* the new code runs: a release that crashes, hangs until the
watchdog kills it, or dies to a power cut uses up a try without writing anything itself. After
``max_tries`` boots without a commit the launcher falls back to the committed slot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Slot = Literal["factory", "a", "b"]
SLOTS: tuple[Slot, ...] = ("factory", "a", "b")
MAX_TRIES = 3


class BadBootState(ValueError):
    """``state.json`` does not describe a valid boot state (the launcher then runs factory)."""


@dataclass(frozen=True, slots=True)
class Trial:
    slot: Slot
    version: str
    counter: int
    tries: int = 0
    target: str = ""


@dataclass(frozen=True, slots=True)
class BootState:
    committed: Slot = "factory"
    version: str = ""  # of the committed release; "" = factory
    counter: int = 0  # highest release counter ever committed: the anti-rollback floor
    trial: Trial | None = None
    # Status reports made while nobody could send them (the launcher's fall-back): the agent
    # puts them into its outbox at start and then clears them.
    pending: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # Targets that failed their trial: never installed again (a rollout still pointing at a
    # broken release must not make the fleet install, fail and roll back in a loop).
    failed: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["pending"] = list(self.pending)
        d["failed"] = list(self.failed)
        d["v"] = 1
        return d

    @classmethod
    def from_json(cls, d: Any) -> BootState:
        if not isinstance(d, dict) or d.get("v") != 1:
            raise BadBootState("not a version-1 boot state")
        try:
            committed = _slot(d["committed"])
            version = _str(d.get("version", ""), "version")
            counter = _int(d.get("counter", 0), "counter")
            t = d.get("trial")
            trial = None
            if t is not None:
                if not isinstance(t, dict):
                    raise BadBootState("trial: not an object")
                trial = Trial(slot=_slot(t["slot"]), version=_str(t["version"], "trial.version"),
                              counter=_int(t["counter"], "trial.counter"),
                              tries=_int(t.get("tries", 0), "trial.tries"),
                              target=_str(t.get("target", ""), "trial.target"))
                if trial.slot in ("factory", committed):
                    raise BadBootState(f"trial slot {trial.slot!r} is not the inactive slot")
            pending = d.get("pending", [])
            if not isinstance(pending, list) or not all(isinstance(p, dict) for p in pending):
                raise BadBootState("pending: not a list of objects")
            failed = d.get("failed", [])
            if not isinstance(failed, list) or not all(isinstance(f, str) for f in failed):
                raise BadBootState("failed: not a list of strings")
        except KeyError as exc:
            raise BadBootState(f"missing field {exc}") from exc
        return cls(committed, version, counter, trial, tuple(pending), tuple(failed))


def _slot(v: Any) -> Slot:
    if v not in SLOTS:
        raise BadBootState(f"unknown slot {v!r}")
    return v  # type: ignore[no-any-return]


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str):
        raise BadBootState(f"{what}: not a string")
    return v


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise BadBootState(f"{what}: not a non-negative integer")
    return v


def inactive(state: BootState) -> Slot:
    """The slot an update may overwrite: never the committed one (nor factory)."""
    return "b" if state.committed == "a" else "a"


@dataclass(frozen=True, slots=True)
class BootDecision:
    run: Slot
    state: BootState  # to persist before the chosen slot starts
    trial: bool  # True: the agent must pass its health check, then commit
    fell_back: bool = False


def decide_boot(state: BootState, max_tries: int = MAX_TRIES) -> BootDecision:
    """What the launcher does at one start."""
    t = state.trial
    if t is None:
        return BootDecision(state.committed, state, trial=False)
    if t.tries >= max_tries:
        report = status("rolled-back", t.version, t.counter,
                        f"release did not pass its health check in {t.tries} boots")
        new = replace(state, trial=None, pending=(*state.pending, report), failed=_failed(state, t))
        return BootDecision(state.committed, new, trial=False, fell_back=True)
    return BootDecision(t.slot, replace(state, trial=replace(t, tries=t.tries + 1)), trial=True)


def begin_trial(state: BootState, slot: Slot, version: str, counter: int, target: str = "") -> BootState:
    """After a release is installed into ``slot``: boot it next, on trial."""
    if slot in ("factory", state.committed):
        raise ValueError(f"cannot put a release on trial in slot {slot!r}")
    return replace(state, trial=Trial(slot, version, counter, 0, target))


def commit(state: BootState) -> BootState:
    """The trial passed its health check: it becomes the committed release."""
    t = state.trial
    if t is None:
        raise ValueError("no trial to commit")
    return replace(state, committed=t.slot, version=t.version, counter=max(state.counter, t.counter), trial=None)


def abandon(state: BootState, reason: str) -> BootState:
    """The trial failed its health check: boot the committed slot next, and say why."""
    t = state.trial
    if t is None:
        raise ValueError("no trial to abandon")
    report = status("rolled-back", t.version, t.counter, reason)
    return replace(state, trial=None, pending=(*state.pending, report), failed=_failed(state, t))


MAX_FAILED = 16


def _failed(state: BootState, t: Trial) -> tuple[str, ...]:
    if not t.target or t.target in state.failed:
        return state.failed
    return (*state.failed, t.target)[-MAX_FAILED:]


def without_pending(state: BootState, sent: int) -> BootState:
    """The first ``sent`` pending reports are in the outbox now."""
    return replace(state, pending=state.pending[sent:])


def status(state: str, release: str, counter: int, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """The body of an ``ota_status`` event (docs/ota.md)."""
    body: dict[str, Any] = {"state": state, "release": release, "counter": counter}
    if reason:
        body["reason"] = reason
    body.update(extra)
    return body
