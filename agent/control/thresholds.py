"""[pure] Alarm thresholds changed at run time: the ``threshold`` command.

Before the rainy season the IOC lowers a district's flood alert level; that is a signed
``threshold`` command with args ``{"alarm": NAME, "value": NUMBER}`` (``value`` null: back to
the configured threshold). Here, without I/O: checking the args against the target devices'
alarm rules (:func:`plan`), the overrides that result (:func:`apply`), and the file they are
kept in (:func:`encode` / :func:`decode`), so a restart keeps them.

Precedence: an override set by command wins over the profile's threshold and over the
device's ``alarms`` in the config file (it is newer); ``value`` null removes it.

The file (``thresholds.json`` next to the command replay store)::

    {"v": 1, "overrides": {"<device id>": {"<alarm>": <threshold>, ...}, ...}}
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from drivers.profiles import AlarmRule
from pki.command import CommandError

FORMAT_VERSION = 1
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

# device id -> alarm name -> threshold set by command
Overrides = dict[str, dict[str, float]]


@dataclass(frozen=True, slots=True)
class Change:
    """One device's alarm threshold, before and after the command."""

    device: str
    alarm: str
    old: float
    new: float
    reset: bool  # True: back to the configured threshold (the override is removed)


def parse(args: Mapping[str, object]) -> tuple[str, float | None]:
    """(alarm, new threshold or None for "back to configured"), or ``bad_args``."""
    alarm, value = args.get("alarm"), args.get("value")
    if not isinstance(alarm, str) or not _NAME.match(alarm):
        raise CommandError("bad_args", f"threshold needs an alarm name, got {alarm!r}")
    if value is None:
        return alarm, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError("bad_args", f"threshold value must be a number (or null to reset), got {value!r}")
    if not math.isfinite(value):
        raise CommandError("bad_args", f"threshold value must be finite, got {value!r}")
    return alarm, float(value)


def _limit(rule: AlarmRule) -> float:
    assert rule.when is None
    return float(rule.above if rule.above is not None else rule.below)  # type: ignore[arg-type]


def plan(alarm: str, value: float | None, targets: Sequence[str],
         rules: Mapping[str, Sequence[AlarmRule]], overrides: Mapping[str, Mapping[str, float]]) -> list[Change]:
    """The changes for ``targets`` (none: every device that has ``alarm``).

    ``rules`` are each device's configured rules (profile + config file), ``overrides`` the
    thresholds earlier commands set. Raises ``unknown_device`` for a device not on this
    gateway and ``bad_args`` for an alarm a device does not have or that has no threshold
    (a flag alarm such as ``leak``: it fires on a bit, not a level)."""
    if targets:
        unknown = [d for d in targets if d not in rules]
        if unknown:
            raise CommandError("unknown_device", f"no device {', '.join(unknown)} on this gateway")
        chosen = list(dict.fromkeys(targets))
    else:
        chosen = [d for d, rs in rules.items() if any(r.name == alarm for r in rs)]
        if not chosen:
            raise CommandError("bad_args", f"no device on this gateway has an alarm {alarm!r}")
    out: list[Change] = []
    for dev in chosen:
        rule = next((r for r in rules[dev] if r.name == alarm), None)
        if rule is None:
            known = ", ".join(r.name for r in rules[dev]) or "none"
            raise CommandError("bad_args", f"{dev} has no alarm {alarm!r} (has: {known})")
        if rule.when is not None:
            raise CommandError("bad_args", f"{dev}.{alarm} is a flag alarm (when = {str(rule.when).lower()}): "
                               "it has no threshold")
        configured = _limit(rule)
        old = overrides.get(dev, {}).get(alarm, configured)
        out.append(Change(dev, alarm, old, configured if value is None else value, reset=value is None))
    return out


def apply(overrides: Mapping[str, Mapping[str, float]], changes: Sequence[Change]) -> Overrides:
    """``overrides`` with ``changes`` made (a new mapping; devices left with none are dropped)."""
    out: Overrides = {dev: dict(alarms) for dev, alarms in overrides.items()}
    for c in changes:
        per = out.setdefault(c.device, {})
        if c.reset:
            per.pop(c.alarm, None)
        else:
            per[c.alarm] = c.new
    return {dev: alarms for dev, alarms in out.items() if alarms}


def usable(overrides: Mapping[str, Mapping[str, float]],
           rules: Mapping[str, Sequence[AlarmRule]]) -> tuple[Overrides, list[str]]:
    """(the overrides that still fit the devices and their rules, descriptions of the rest).

    A device removed from the config, or a profile whose alarm was renamed or became a flag,
    leaves entries that must not stop the agent: they are set aside and reported."""
    kept: Overrides = {}
    dropped: list[str] = []
    for dev, alarms in overrides.items():
        for name, value in alarms.items():
            rule = next((r for r in rules.get(dev, ()) if r.name == name), None)
            if rule is None or rule.when is not None:
                dropped.append(f"{dev}.{name}")
            else:
                kept.setdefault(dev, {})[name] = value
    return kept, dropped


def encode(overrides: Mapping[str, Mapping[str, float]]) -> bytes:
    body = {"v": FORMAT_VERSION, "overrides": {d: dict(sorted(a.items())) for d, a in sorted(overrides.items())}}
    return json.dumps(body, indent=1).encode() + b"\n"


def decode(data: bytes) -> Overrides:
    """The overrides in a file made by :func:`encode`; ``ValueError`` if it is not one."""
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("v") != FORMAT_VERSION or not isinstance(body.get("overrides"), dict):
        raise ValueError(f"not a version {FORMAT_VERSION} thresholds file")
    out: Overrides = {}
    for dev, alarms in body["overrides"].items():
        if not isinstance(alarms, dict):
            raise ValueError(f"overrides of {dev!r} are not a table")
        for name, value in alarms.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{dev}.{name}: threshold {value!r} is not a finite number")
            out.setdefault(dev, {})[name] = float(value)
    return out
