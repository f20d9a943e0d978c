"""One device's polling schedule: staggered start, retries with jittered backoff, offline
detection, alarm evaluation, and the records each poll produces.

Each device is its own task; devices on one bus share that bus through a FIFO lock that a
request holds for at most its timeout. A dead device therefore costs its bus one timeout
per attempt, and waits out its backoff *without* holding the bus.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from agent.buffer.records import NewRecord, alarm, event, telemetry
from agent.poll.alarms import AlarmEvaluator
from agent.poll.readers import DeviceReader, PollResult
from agent.poll.rules import RuleEngine
from drivers.errors import DeviceError
from drivers.profiles import Value

log = logging.getLogger("urbanedge.poll")
# One jitter source for every poller: a Random holds 2.5 KiB of state, 1.2 MiB for 500 devices.
_JITTER = random.Random()

Sink = Callable[[NewRecord], Awaitable[None]]


@dataclass(frozen=True)
class Reading:
    """The last good poll of a device, for local consumers (lighting control, the web page)."""

    device_id: str
    ts: float
    values: Mapping[str, Value]
    quality: str


# Called synchronously after every good poll; must be quick and must not raise.
ReadingObserver = Callable[[Reading], None]


@dataclass
class DeviceStats:
    polls: int = 0
    good: int = 0
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    readings: int = 0
    cycles_skipped: int = 0
    last_poll: float | None = None
    last_quality: str | None = None
    online: bool | None = None


@dataclass(frozen=True)
class PollPolicy:
    interval: float
    timeout: float
    retries: int
    offline_after: int
    backoff_max: float


class DevicePoller:
    """Polls one device forever; cancel the task to stop it (state stays consistent)."""

    def __init__(
        self,
        device_id: str,
        kind: str,
        reader: DeviceReader,
        bus_lock: asyncio.Lock,
        policy: PollPolicy,
        alarms: AlarmEvaluator,
        sink: Sink,
        *,
        rng: random.Random | None = None,
        rules: RuleEngine | None = None,
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self.reader = reader
        self.lock = bus_lock
        self.policy = policy
        self.alarms = alarms
        self.rules = rules or RuleEngine(())
        self.sink = sink
        self.stats = DeviceStats()
        self._rng = rng or _JITTER
        self._failed_cycles = 0
        self._overrunning = False
        # Retries inside a cycle are short; probing an offline device backs off up to backoff_max.
        self._retry_wait = wait_random_exponential(multiplier=0.2, max=max(0.2, policy.interval / 4))
        self.busy_seconds = 0.0
        self.latest: Reading | None = None
        self.observers: list[ReadingObserver] = []

    async def run(self) -> None:
        # Stagger: devices with the same interval spread over it instead of all firing at t=0.
        await asyncio.sleep(self._rng.uniform(0, min(self.policy.interval, 10.0)))
        due = time.monotonic()
        while True:
            ok = await self._cycle()
            due = self._next_due(due, ok)
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    def _next_due(self, due: float, ok: bool) -> float:
        interval = self.policy.interval
        now = time.monotonic()
        if not ok and self._failed_cycles >= self.policy.offline_after:
            # Offline: probe with exponential backoff (jittered) instead of every interval.
            n = self._failed_cycles - self.policy.offline_after
            wait = min(self.policy.backoff_max, interval * (2 ** min(n, 16)))
            return now + max(interval, self._rng.uniform(wait / 2, wait))
        due += interval
        if due < now:
            # Overrun: the bus (or the outbox) could not keep up. Skip the missed cycles
            # rather than queueing them; warn when it starts, count every one.
            missed = int((now - due) // interval) + 1
            due += missed * interval
            self.stats.cycles_skipped += missed
            if not self._overrunning:
                self._overrunning = True
                log.warning("event=poll_overrun device=%s missed_cycles=%d interval=%.3g",
                            self.device_id, missed, interval)
        elif self._overrunning:
            self._overrunning = False
            log.info("event=poll_on_time device=%s cycles_skipped_total=%d",
                     self.device_id, self.stats.cycles_skipped)
        return due

    async def _attempt(self) -> PollResult:
        async with self.lock:
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(self.policy.timeout * 4 + 1):
                    return await self.reader.read()
            except TimeoutError as exc:
                # The driver's own per-request timeout should fire first; this is the backstop.
                raise DeviceError("poll exceeded its deadline") from exc
            finally:
                self.busy_seconds += time.monotonic() - t0

    async def _cycle(self) -> bool:
        # Hot path: one plain attempt. The retry machinery (tenacity) is only built
        # once an attempt has failed, which keeps a successful poll cheap.
        try:
            result = await self._attempt()
        except DeviceError as exc:
            self._count(exc)
            if self.policy.retries == 0:
                await self._on_failure(exc)
                return False
            return await self._retry_cycle()
        self.stats.polls += 1
        await self._on_success(result)
        return True

    async def _retry_cycle(self) -> bool:
        # First backoff by hand (tenacity waits only *between* its own attempts), jittered
        # like the rest so devices that failed together do not retry together.
        await asyncio.sleep(self._rng.uniform(0, 0.4))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.retries),
            wait=self._retry_wait,
            retry=retry_if_exception_type(DeviceError),
            before_sleep=self._count_failure,
            reraise=True,
        )
        try:
            result: PollResult = await retrying(self._attempt)
        except DeviceError as exc:
            self._count(exc)
            await self._on_failure(exc)
            return False
        self.stats.polls += 1
        await self._on_success(result)
        return True

    def _count(self, exc: BaseException | None) -> None:
        reason = getattr(exc, "reason", "error")
        self.stats.polls += 1
        self.stats.failures += 1
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1

    def _count_failure(self, state: RetryCallState) -> None:
        self._count(state.outcome.exception() if state.outcome else None)

    async def poll_now(self, command_id: str) -> Reading:
        """One poll out of schedule (the ``read-now`` command): through the bus lock like any
        poll, recorded like any good poll but marked with ``command_id``. A failure raises
        :class:`DeviceError` and is counted, but leaves the schedule's offline count alone:
        one missed on-demand read does not make a device offline."""
        try:
            result = await self._attempt()
        except DeviceError as exc:
            self._count(exc)
            raise
        self.stats.polls += 1
        return await self._on_success(result, command_id)

    async def _on_success(self, result: PollResult, command_id: str | None = None) -> Reading:
        now = time.time()
        st = self.stats
        st.good += 1
        st.requests += result.requests
        st.readings += len(result.values)
        st.last_poll, st.last_quality = now, result.quality
        if st.online is False:
            log.info("event=device_online device=%s", self.device_id)
            await self.sink(event(self.device_id, now, "device_online", kind=self.kind))
        st.online = True
        self._failed_cycles = 0
        await self.sink(telemetry(self.device_id, self.kind, now, result.values,
                                  result.quality, result.point_quality, command_id=command_id))
        good = {k: v for k, v in result.values.items() if k not in result.point_quality}
        self.latest = reading = Reading(self.device_id, now, good, result.quality)
        for observe in self.observers:
            try:
                observe(self.latest)
            except Exception:  # an observer's bug must not stop polling
                log.exception("event=reading_observer_failed device=%s", self.device_id)
        for tr in self.alarms.evaluate(good):
            log.warning("event=alarm device=%s alarm=%s state=%s value=%s",
                        self.device_id, tr.rule.name, tr.state, tr.value)
            await self.sink(alarm(self.device_id, self.kind, now, tr.rule.name, tr.state,
                                  tr.rule.severity, tr.rule.point, tr.value, tr.threshold))
        # Edge rules get the poll's own timestamp: their time windows never read the clock.
        for rt in self.rules.evaluate(good, now):
            log.warning("event=alarm device=%s alarm=%s state=%s value=%s rule=edge",
                        self.device_id, rt.name, rt.state, rt.value)
            await self.sink(alarm(self.device_id, self.kind, now, rt.name, rt.state,
                                  rt.severity, rt.point, rt.value, rt.threshold))
        return reading

    async def _on_failure(self, exc: DeviceError) -> None:
        now = time.time()
        st = self.stats
        self._failed_cycles += 1
        reason = getattr(exc, "reason", "error")
        st.last_poll, st.last_quality = now, "error"
        if self._failed_cycles == 1:
            # Log the first failure of a streak, not every one.
            log.warning("event=poll_failed device=%s reason=%s detail=%s",
                        self.device_id, reason, str(exc)[:200])
        await self.sink(telemetry(self.device_id, self.kind, now, {}, "error", error=reason))
        if self._failed_cycles == self.policy.offline_after and st.online is not False:
            st.online = False
            log.warning("event=device_offline device=%s reason=%s", self.device_id, reason)
            await self.sink(event(self.device_id, now, "device_offline", kind=self.kind,
                                  reason=reason, detail=str(exc)[:200]))
