"""What the IOC does with one message, whatever carried it (MQTT, a capture file).

``handle(channel, payload)`` opens a sealed batch or learns a certificate announcement,
stores the verified records exactly once, writes the new ones out, and counts every
rejection by reason. It raises nothing for bad input: a receiver must keep running
whatever arrives. A batch whose signer is not known yet is *parked* (bounded) and
retried when an announcement arrives, so a receiver that subscribed after a gateway's
announcement went by still gets its readings.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ioc.store.base import InvalidRecordError
from ioc.verify import Opener, Rejected, VerifiedBatch

log = logging.getLogger("urbanedge.ioc")

# "security": the gateway's security events (rejected commands, refused updates, certificate
# problems) on a topic of their own, so a SOC can subscribe to just those.
DATA_CHANNELS = ("alarm", "event", "security", "telemetry")


class RecordSink(Protocol):
    """Where verified records go (``ioc.output`` writers, the demo's printer)."""

    def write(self, source: str, records: Sequence[Mapping[str, Any]], *,
              verified: Mapping[str, Any] | None = None) -> int: ...


class Store(Protocol):
    def accept(self, source: str, records: list[dict[str, Any]], *, received_at: float) -> Any: ...


@dataclass
class Outcome:
    """What became of one message: ``accepted`` (new records written), ``parked`` or ``rejected``."""

    status: str
    reason: str = ""
    new: int = 0
    duplicates: int = 0


@dataclass
class PipelineStats:
    messages: int = 0
    batches_verified: int = 0
    records_new: int = 0
    records_duplicate: int = 0
    announcements: int = 0
    parked: int = 0
    gaps: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "batches_verified": self.batches_verified,
            "records_new": self.records_new, "records_duplicate": self.records_duplicate,
            "announcements": self.announcements, "parked": self.parked, "gaps": self.gaps,
            "rejected": dict(sorted(self.rejected.items())),
        }


class Pipeline:
    def __init__(self, opener: Opener, store: Store, sink: RecordSink | None, *, max_parked: int = 10_000,
                 park_seconds: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.opener = opener
        self.store = store
        self.sink = sink
        self.stats = PipelineStats()
        self._max_parked = max_parked
        self._park_seconds = park_seconds
        self._clock = clock
        # key → (parked at, payload, on_done); on_done acknowledges the message when it is settled
        self._parked: OrderedDict[int, tuple[float, bytes, Callable[[], None] | None]] = OrderedDict()
        self._next_key = 0

    def _reject(self, reason: str, problem: str, where: str) -> Outcome:
        self.stats.rejected[reason] += 1
        log.warning("event=ioc_rejected reason=%s where=%s problem=%r", reason, where, problem)
        return Outcome("rejected", reason)

    def handle(self, channel: str, payload: bytes, *, where: str = "-",
               on_done: Callable[[], None] | None = None) -> Outcome:
        """Process one message. ``on_done`` is called once the message is settled (stored,
        rejected, or dropped from the parking lot), which is when MQTT may acknowledge it.

        ``ioc.store.StoreUnavailableError`` is the one exception that escapes: the message is
        not settled, and the caller retries it once the store is back."""
        self.stats.messages += 1
        if channel == "cert":
            outcome = self._announcement(payload, where)
            self._retry_parked()
        elif channel in DATA_CHANNELS:
            outcome = self._batch(payload, where, on_done)
            if outcome.status == "parked":
                return outcome
        else:
            outcome = self._reject("malformed", f"unknown channel {channel!r}", where)
        if on_done is not None:
            on_done()
        self._expire_parked()
        return outcome

    def _announcement(self, payload: bytes, where: str) -> Outcome:
        try:
            signer = self.opener.learn_announcement(payload)
        except Rejected as exc:
            return self._reject(exc.reason, exc.problem, where)
        self.stats.announcements += 1
        log.info("event=ioc_signer_learnt device=%s serial=%x not_after=%s", signer.device_id, signer.serial,
                 signer.not_after.isoformat())
        return Outcome("accepted")

    def _batch(self, payload: bytes, where: str, on_done: Callable[[], None] | None) -> Outcome:
        try:
            batch = self.opener.open(payload)
        except Rejected as exc:
            if exc.reason == "unknown_certificate" and self._max_parked > 0:
                return self._park(payload, on_done)
            return self._reject(exc.reason, exc.problem, where)
        return self._store(batch, where)

    def _store(self, batch: VerifiedBatch, where: str) -> Outcome:
        try:
            result = self.store.accept(batch.source, batch.records, received_at=self._clock())
        except InvalidRecordError as exc:
            return self._reject("malformed", f"verified batch holds a record we cannot store: {exc}", where)
        self.stats.batches_verified += 1
        new: list[dict[str, Any]] = list(result.new)
        self.stats.records_new += len(new)
        self.stats.records_duplicate += result.duplicates
        for gap in result.gaps:
            self.stats.gaps += 1
            # Alarms overtake telemetry, so holes open and close all the time: info, not warning;
            # a hole that stays open shows in the store's per-source "missing".
            log.info("event=ioc_gap source=%s first_missing=%d last_missing=%d", gap.source,
                        gap.first_missing, gap.last_missing)
        if result.duplicates:
            # A QoS 1 redelivery or a replay: either way nothing is stored twice.
            self.stats.rejected["replay"] += 1 if not new else 0
            log.info("event=ioc_duplicates source=%s count=%d where=%s", batch.source, result.duplicates, where)
        if self.sink is not None:
            verified = {"signer": batch.signer.device_id, "cert_serial": f"{batch.signer.serial:x}"}
            self.sink.write(batch.source, new, verified=verified)
        if not new and result.duplicates:
            return Outcome("rejected", "replay", duplicates=result.duplicates)
        return Outcome("accepted", new=len(new), duplicates=result.duplicates)

    def _park(self, payload: bytes, on_done: Callable[[], None] | None) -> Outcome:
        while len(self._parked) >= self._max_parked:
            _, (_, old, done) = self._parked.popitem(last=False)
            self._settle_expired(old, done)
        self._parked[self._next_key] = (self._clock(), payload, on_done)
        self._next_key += 1
        self.stats.parked += 1
        return Outcome("parked", "unknown_certificate")

    def _settle_expired(self, payload: bytes, on_done: Callable[[], None] | None) -> None:
        self._reject("unknown_certificate", "no certificate announcement arrived for the signer", "parked")
        if on_done is not None:
            on_done()

    def _retry_parked(self) -> None:
        if not self._parked:
            return
        waiting, self._parked = self._parked, OrderedDict()
        for key, (since, payload, on_done) in waiting.items():
            try:
                batch = self.opener.open(payload)
            except Rejected as exc:
                if exc.reason == "unknown_certificate":
                    self._parked[key] = (since, payload, on_done)
                    continue
                self._reject(exc.reason, exc.problem, "parked")
            else:
                self._store(batch, "parked")
            if on_done is not None:
                on_done()

    def _expire_parked(self) -> None:
        limit = self._clock() - self._park_seconds
        while self._parked:
            key, (since, payload, on_done) = next(iter(self._parked.items()))
            if since > limit:
                break
            del self._parked[key]
            self._settle_expired(payload, on_done)

    def handle_idle(self) -> None:
        """Called when no message came for a while: settles parked batches that waited too long."""
        self._expire_parked()

    def flush_parked(self) -> None:
        """Reject whatever is still parked (used when stopping and at the end of ``ioc verify``)."""
        waiting, self._parked = self._parked, OrderedDict()
        for _, payload, on_done in waiting.values():
            self._settle_expired(payload, on_done)
