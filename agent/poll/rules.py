"""Edge rules: alarms that need more than one poll to decide. [pure]

Thresholds (:mod:`agent.poll.alarms`) look at one value; these rules look at a series:

* ``rate_above`` — a flood level rising faster than X per minute over a window;
* ``night_flow`` — a water meter whose flow never stops during the night (a leak);
* ``power_while_off`` — a streetlight drawing power while it reports its lamp off.

Each evaluator is fed every good poll's values with the poll's timestamp (UNIX seconds)
and returns transitions only; nothing here reads the clock, so a day of polls can be
replayed in microseconds in a test.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from drivers.profiles import EdgeRule, NightFlowRule, PowerWhileOffRule, RateAboveRule, Value

# Bounds the work per poll of a fast-polled device with a long window.
MAX_SAMPLES = 2048


@dataclass(frozen=True, slots=True)
class RuleTransition:
    name: str
    state: str  # "raised" | "cleared"
    severity: str
    point: str
    value: Value
    threshold: float


def _number(value: Value | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _median3(a: float, b: float, c: float) -> float:
    return max(min(a, b), min(max(a, b), c))


def _slope(ts: list[float], xs: list[float]) -> float | None:
    """Least-squares slope of xs over ts (per second); None when ts are all equal."""
    n = len(ts)
    mt, mx = sum(ts) / n, sum(xs) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (x - mx) for t, x in zip(ts, xs, strict=True)) / var


class RateAbove:
    """Least-squares slope over the window, after a running median of three: one wild
    sample anywhere in the window cannot raise (or clear) the alarm. The newest sample
    therefore counts from the next poll on — one poll of latency for that robustness."""

    def __init__(self, rule: RateAboveRule) -> None:
        self.rule = rule
        self.raised = False
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)

    def rate(self) -> float | None:
        """Current rate of rise per minute, or None while the window is too thin."""
        s = self._samples
        if len(s) < self.rule.min_samples or s[-1][0] - s[0][0] < self.rule.window / 2:
            return None
        ts = [s[i][0] for i in range(1, len(s) - 1)]
        xs = [_median3(s[i - 1][1], s[i][1], s[i + 1][1]) for i in range(1, len(s) - 1)]
        per_second = _slope(ts, xs)
        return None if per_second is None else per_second * 60.0

    def feed(self, values: dict[str, Value], t: float) -> RuleTransition | None:
        x = _number(values.get(self.rule.point))
        if x is None:
            return None
        s = self._samples
        if s and t <= s[-1][0]:
            # Time went backwards (clock step) or a repeated poll: the old series no longer
            # lines up with the new one; start again rather than compute a nonsense slope.
            s.clear()
        s.append((t, x))
        while s[0][0] < t - self.rule.window:
            s.popleft()
        rate = self.rate()
        if rate is None:
            return None
        limit = self.rule.rate - self.rule.hysteresis if self.raised else self.rule.rate
        now = rate > limit
        if now == self.raised:
            return None
        self.raised = now
        return RuleTransition(self.rule.name, "raised" if now else "cleared", self.rule.severity,
                              self.rule.point, round(rate, 4), self.rule.rate)


class NightFlow:
    """Raised once a night when flow was seen for ``min_duration`` inside the window
    without a single zero; cleared by the first zero, whenever it comes."""

    def __init__(self, rule: NightFlowRule) -> None:
        self.rule = rule
        self.raised = False
        self._run_start: float | None = None  # first in-window poll of the current flowing run
        self._run_night: int | None = None
        self._last_t: float | None = None
        self._quiet_night: int | None = None  # a night on which a zero was seen
        self._fired_night: int | None = None
        self._ref: float | None = None  # counter mode: value at the last increase
        self._ref_t = 0.0

    def night(self, t: float) -> int | None:
        """Index of the night whose window contains ``t`` (local days since the epoch,
        counted from the window start), or None outside the window."""
        since = t + self.rule.offset_seconds - self.rule.start_seconds
        if since % 86400 >= self.rule.window_seconds:
            return None
        return int(since // 86400)

    def _zero(self, x: float, t: float) -> bool:
        rule = self.rule
        if not rule.counter:
            return abs(x) <= rule.zero_below
        if self._ref is None or x < self._ref or x > self._ref + rule.zero_below:
            # First reading, a counter reset/rollover, or real consumption: restart the clock.
            self._ref, self._ref_t = x, t
            return False
        return t - self._ref_t >= rule.zero_period

    def feed(self, values: dict[str, Value], t: float) -> RuleTransition | None:
        x = _number(values.get(self.rule.point))
        if x is None:
            return None
        night = self.night(t)
        gap = self._last_t is not None and t - self._last_t > self.rule.max_gap
        self._last_t = t
        if self._zero(x, t):
            self._run_start = None
            if night is not None:
                self._quiet_night = night
            if self.raised:
                self.raised = False
                return self._transition("cleared", x)
            return None
        if night is None:
            self._run_start = None
            return None
        if self._run_start is None or self._run_night != night or gap:
            self._run_start, self._run_night = t, night
        if (not self.raised and night not in (self._fired_night, self._quiet_night)
                and t - self._run_start >= self.rule.min_duration):
            self.raised = True
            self._fired_night = night
            return self._transition("raised", x)
        return None

    def _transition(self, state: str, x: float) -> RuleTransition:
        return RuleTransition(self.rule.name, state, self.rule.severity, self.rule.point,
                              x, self.rule.zero_below)


class PowerWhileOff:
    """``switch`` false and ``point`` above the limit for N polls in a row."""

    def __init__(self, rule: PowerWhileOffRule) -> None:
        self.rule = rule
        self.raised = False
        self._streak = 0

    def feed(self, values: dict[str, Value], t: float) -> RuleTransition | None:
        switch = values.get(self.rule.switch)
        power = _number(values.get(self.rule.point))
        if switch is None or power is None:
            return None
        off = not bool(switch)
        rule = self.rule
        if self.raised:
            if off and power > rule.above - rule.hysteresis:
                return None
            self.raised, self._streak = False, 0
            return RuleTransition(rule.name, "cleared", rule.severity, rule.point, power, rule.above)
        self._streak = self._streak + 1 if off and power > rule.above else 0
        if self._streak < rule.polls:
            return None
        self.raised = True
        return RuleTransition(rule.name, "raised", rule.severity, rule.point, power, rule.above)


Evaluator = RateAbove | NightFlow | PowerWhileOff


def evaluator(rule: EdgeRule) -> Evaluator:
    if isinstance(rule, RateAboveRule):
        return RateAbove(rule)
    if isinstance(rule, NightFlowRule):
        return NightFlow(rule)
    return PowerWhileOff(rule)


class RuleEngine:
    """The edge rules of one device, fed with each good poll's values and timestamp."""

    def __init__(self, rules: tuple[EdgeRule, ...]) -> None:
        self._evaluators = [evaluator(r) for r in rules]

    def active(self) -> list[str]:
        """Names of the rules currently raised."""
        return [e.rule.name for e in self._evaluators if e.raised]

    def evaluate(self, values: dict[str, Value], t: float) -> list[RuleTransition]:
        """Transitions caused by this poll; rules whose points are missing keep their state."""
        out: list[RuleTransition] = []
        for e in self._evaluators:
            tr = e.feed(values, t)
            if tr is not None:
                out.append(tr)
        return out
