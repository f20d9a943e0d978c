"""Alarm rules → alarm transitions. [pure]

Each rule of a device keeps a raised/cleared state; a transition (and only a transition)
produces an alarm record, so a flood level sitting above the danger line raises one alarm,
not one per poll. Hysteresis keeps a level hovering at the threshold from flapping.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.profiles import AlarmRule, Value


@dataclass(frozen=True, slots=True)
class Transition:
    rule: AlarmRule
    state: str  # "raised" | "cleared"
    value: Value
    threshold: float | bool


class AlarmEvaluator:
    """The alarm state of one device, fed with each poll's values."""

    def __init__(self, rules: tuple[AlarmRule, ...], overrides: dict[str, float] | None = None) -> None:
        overrides = overrides or {}
        self._rules = tuple(_override(r, overrides[r.name]) if r.name in overrides else r
                            for r in rules)
        self._configured = {r.name: r for r in self._rules}  # what ``set_threshold(name, None)`` restores
        self._raised: dict[str, bool] = {}

    @property
    def rules(self) -> tuple[AlarmRule, ...]:
        return self._rules

    @property
    def configured(self) -> tuple[AlarmRule, ...]:
        """The rules as configured (profile and config file), without run-time changes."""
        return tuple(self._configured.values())

    def threshold(self, name: str) -> float | bool | None:
        """The threshold rule ``name`` uses now; None if there is no such rule."""
        rule = next((r for r in self._rules if r.name == name), None)
        return None if rule is None else _threshold(rule)

    def set_threshold(self, name: str, value: float | None) -> None:
        """Change the threshold of an above/below rule from the next evaluation on (``None``:
        back to the configured one). The raised state is kept: a raised alarm whose new
        threshold the value no longer passes clears on the next poll, with its hysteresis."""
        base = self._configured[name]
        if base.when is not None:
            raise ValueError(f"alarm {name!r} is a flag alarm: it has no threshold")
        rule = base if value is None else _override(base, value)
        self._rules = tuple(rule if r.name == name else r for r in self._rules)

    def active(self) -> list[str]:
        """Names of the rules currently raised."""
        return [name for name, up in self._raised.items() if up]

    def evaluate(self, values: dict[str, Value]) -> list[Transition]:
        """Transitions caused by these values; points missing from ``values`` keep their state."""
        out: list[Transition] = []
        for rule in self._rules:
            if rule.point not in values:
                continue
            value = values[rule.point]
            was = self._raised.get(rule.name, False)
            now = _condition(rule, value, was)
            if now != was:
                self._raised[rule.name] = now
                out.append(Transition(rule, "raised" if now else "cleared", value, _threshold(rule)))
            elif rule.name not in self._raised:
                self._raised[rule.name] = now
        return out


def _threshold(rule: AlarmRule) -> float | bool:
    if rule.above is not None:
        return rule.above
    if rule.below is not None:
        return rule.below
    return bool(rule.when)


def _condition(rule: AlarmRule, value: Value, was_raised: bool) -> bool:
    if rule.when is not None:
        return bool(value) == rule.when
    x = float(value)
    # Once raised, the value must come back past the threshold by the hysteresis to clear.
    if rule.above is not None:
        return x > rule.above - rule.hysteresis if was_raised else x > rule.above
    assert rule.below is not None
    return x < rule.below + rule.hysteresis if was_raised else x < rule.below


def _override(rule: AlarmRule, threshold: float) -> AlarmRule:
    if rule.above is not None:
        return rule.model_copy(update={"above": threshold})
    if rule.below is not None:
        return rule.model_copy(update={"below": threshold})
    return rule.model_copy(update={"when": bool(threshold)})
