"""The uplink: outbox rows → one-priority batches → MQTT QoS 1 → rows deleted on PUBACK.

The disk is the queue: nothing is held in memory but the batches in flight, and a row
leaves the outbox only after the broker acknowledged the message carrying it
(``aiomqtt.Client.publish(qos=1)`` returns when paho's ``on_publish`` fires, which for
QoS 1 is on PUBACK). A connection that drops loses its in-flight window; the rows are
still on disk and go out again after the reconnect. Receivers dedupe by (source, seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import aiomqtt
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

import urbanedge
from agent import aio
from agent.buffer.records import Priority, StoredRecord
from agent.buffer.store import OutboxError
from agent.seal.encode import BatchSealer, PayloadError
from agent.uplink.routing import same_channel_run
from agent.uplink.topics import Topics

log = logging.getLogger("urbanedge.uplink")

PRIORITIES: tuple[Priority, ...] = tuple(sorted(Priority))  # ALARM first
IDLE_RECHECK = 2.0  # s; outbox.changed is the wake-up, this only bounds a missed one
HEALTH_EVERY = 5.0  # s between health rows when nothing changes
SHUTDOWN_GRACE = 1.0  # s to publish the offline status on a clean stop
ACK_GRACE = 5.0  # s a restart or reboot waits for its own result to be acknowledged
ACK_POLL = 0.05  # s between looks at the outbox meanwhile
NAGLE_MAX_WAIT = 0.05  # s a small batch waits for an in-flight PUBACK before looking again
_ENVELOPE_OVERHEAD = 512  # bytes of COSE envelope and batch header, generously
_PER_RECORD_OVERHEAD = 28  # '"seq":<19 digits>,' plus the separating comma


class UplinkOutbox(Protocol):
    """The part of ``agent.buffer.async_store.AsyncOutbox`` the forwarder uses."""

    changed: asyncio.Event

    async def fetch(
        self, prio: Priority, after_seq: int, limit: int, max_body_bytes: int | None = None, /
    ) -> list[StoredRecord]: ...
    async def delete(self, seqs: Sequence[int], /) -> int: ...
    async def pending(self, seqs: Sequence[int], /) -> int: ...
    async def put_health(self, key: str, value: str, /) -> None: ...


@dataclass(frozen=True)
class UplinkSettings:
    host: str
    port: int
    client_id: str
    topics: Topics
    source: str
    sealer: BatchSealer
    keepalive: int = 30
    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None
    max_inflight: int = 16
    batch_max_records: int = 200
    batch_max_bytes: int = 64_000
    reconnect_min: float = 0.5
    reconnect_max: float = 60.0
    birth: dict[str, Any] = field(default_factory=dict)
    # Also bounds a handshake the broker ends before CONNACK (e.g. a TLS 1.3 client
    # certificate it rejects): aiomqtt only notices that by timing out (the TLS alert itself
    # reaches us through paho's log: Forwarder._note_tls_alert).
    connect_timeout: float = 10.0
    # Called with each message on the gateway's command topic (subscribed only when set).
    # The payload is untrusted: the callee decides what, if anything, it may cause.
    on_command: Callable[[bytes], None] | None = None
    # More command topics (the gateway's groups, ``Topics.group_command``): subscribed with the
    # gateway's own, on every (re)connect, and handed to ``on_command`` alike.
    command_topics: tuple[str, ...] = ()
    # Called with the exception that ended a connection attempt before it was online (e.g. a
    # TLS handshake failure): the agent turns certificate problems into security events.
    on_connect_failure: Callable[[BaseException], None] | None = None

    def __post_init__(self) -> None:
        if not self.source:
            raise ValueError("source (the gateway id in every payload) must not be empty")
        for name in ("keepalive", "max_inflight", "batch_max_records", "batch_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")


@dataclass
class UplinkStats:
    published_messages: int = 0
    published_records: int = 0
    acked_messages: int = 0
    acked_records: int = 0
    connects: int = 0
    reconnects: int = 0  # connections made after the first one
    connect_failures: int = 0
    dropped_bad_records: int = 0
    last_error: str | None = None


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


async def _wait_event(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        # An agent stopping right after an append (a restart or config switch after its
        # command result) would otherwise pump on into a TaskGroup that is shutting down.
        await aio.wait_for(event.wait(), seconds)


def _reason(exc: BaseException) -> str:
    # aiomqtt wraps the paho disconnect code (the useful part) as the cause.
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"


class Forwarder:
    """Keeps one MQTT connection up and drains the outbox through it, alarms first."""

    def __init__(
        self,
        outbox: UplinkOutbox,
        settings: UplinkSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._clock = clock
        self._started = clock()
        self._state = "offline"
        self._since = self._started
        self._stats = UplinkStats()
        self._inflight = 0
        self._health_due = asyncio.Event()
        self._settled = asyncio.Event()  # set whenever an in-flight message is acked or lost
        self._min_batch = max(1, settings.batch_max_records // 4)
        self._wait = wait_random_exponential(
            multiplier=settings.reconnect_min,
            min=settings.reconnect_min,
            max=settings.reconnect_max,
        )
        self._retrying = AsyncRetrying(wait=self._wait)
        self._version = urbanedge.__version__  # the running release (a slot's RELEASE.json)
        self._live: aiomqtt.Client | None = None  # the online connection, for rebirth()
        # paho reports a TLS alert that arrives after the handshake (TLS 1.3: the broker refuses
        # our client certificate once we have sent CONNECT) only to its logger, with the
        # ssl.SSLError as the argument; aiomqtt then just times out. Our own logger instance
        # (not registered, so one per forwarder) lets us see the error and say what it was.
        self._mqtt_log = logging.Logger("urbanedge.uplink.mqtt")
        self._mqtt_log.parent = logging.getLogger("urbanedge.uplink")
        self._mqtt_log.addFilter(self._note_tls_alert)
        self._tls_alert: ssl.SSLError | None = None

    @property
    def state(self) -> str:
        """``connecting``, ``online`` or ``offline``."""
        return self._state

    @property
    def stats(self) -> UplinkStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    async def until_acked(self, seqs: Sequence[int], grace: float = ACK_GRACE) -> bool:
        """Wait until the broker acknowledged these outbox rows (they are gone from the outbox
        then), for at most ``grace`` s; False at once while offline. Before a restart or a
        reboot: the IOC then hears ``done`` now rather than after the machine is back (the rows
        stay in the outbox either way, so nothing depends on this succeeding)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._state == "online":
            if await self._outbox.pending(seqs) == 0:
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(ACK_POLL)
        return False

    async def run(self) -> None:
        """Connect, forward, reconnect with jittered exponential backoff; until cancelled."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._health_loop(), name="uplink-health")
                await self._connect_loop()
        finally:
            self._set_state("offline")
            # Last word for `urbanedge status`; the outbox may already be closed.
            with contextlib.suppress(OutboxError):
                await self._outbox.put_health("uplink", json.dumps(self.health()))

    # -- connection lifecycle -------------------------------------------------------

    async def _connect_loop(self) -> None:
        attempt = 1
        while True:
            self._set_state("connecting")
            was_online, reason = await self._session()
            self._stats.last_error = reason
            if was_online:
                attempt = 1
                log.warning("event=uplink_lost reason=%r", reason)
            else:
                self._stats.connect_failures += 1
                if attempt == 1:
                    log.warning("event=uplink_connect_failed reason=%r", reason)
            self._set_state("offline")
            delay = self._backoff(attempt)
            log.info(
                "event=uplink_reconnect_delay delay=%.2f attempt=%d reason=%r",
                delay, attempt, reason,
            )
            attempt += 1
            await asyncio.sleep(delay)

    def _note_tls_alert(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if isinstance(arg, ssl.SSLError) and self._live is None:
                self._tls_alert = arg
        return True  # the record is logged as usual

    def _backoff(self, attempt: int) -> float:
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempt
        return float(self._wait(state))

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        offline = {"state": "offline", "source": s.source, "reason": "connection lost"}
        client = aiomqtt.Client(
            s.host,
            s.port,
            identifier=s.client_id,
            username=s.username,
            password=s.password,
            keepalive=s.keepalive,
            tls_context=s.tls,
            clean_session=True,
            will=aiomqtt.Will(s.topics.status, _dump(offline), qos=1, retain=True),
            # Room for status/birth next to a full window, so paho never queues ours.
            max_inflight_messages=s.max_inflight + 4,
            timeout=s.connect_timeout,
            logger=self._mqtt_log,
        )
        # The window is bounded by us; aiomqtt's warning assumes ~10 is unusual.
        client.pending_calls_threshold = s.max_inflight + 4
        return client

    async def _session(self) -> tuple[bool, str]:
        """One connection, from connect to loss. Returns (was it online, why it ended)."""
        online = False
        reason = "ended"
        self._tls_alert = None
        try:
            async with self._client() as client:
                try:
                    await self._announce(client)
                    if self._settings.on_command is not None:
                        for topic in (self._settings.topics.command, *self._settings.command_topics):
                            await client.subscribe(topic, qos=1)
                    online = True
                    self._live = client
                    self._on_online()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._watch(client), name="uplink-watch")
                        tg.create_task(self._pump(client, tg), name="uplink-pump")
                except asyncio.CancelledError:
                    await self._say_offline(client)
                    raise
        except* aiomqtt.MqttError as group:
            exc: BaseException = group.exceptions[0]
            if not online and self._tls_alert is not None:
                exc = self._tls_alert  # what the timeout stands for
            reason = _reason(exc)
            if not online and self._settings.on_connect_failure is not None:
                self._settings.on_connect_failure(exc)
        finally:
            self._live = None
            # A send task cancelled before it ran never reached its own decrement.
            self._inflight = 0
        return online, reason

    def _on_online(self) -> None:
        s = self._settings
        self._stats.connects += 1
        if self._stats.connects > 1:
            self._stats.reconnects += 1
        log.info(
            "event=uplink_connected host=%s port=%d client_id=%s tls=%s reconnects=%d",
            s.host, s.port, s.client_id, s.tls is not None, self._stats.reconnects,
        )
        self._set_state("online")

    async def _announce(self, client: aiomqtt.Client) -> None:
        s, now = self._settings, self._clock()
        status = {"state": "online", "source": s.source, "ts": round(now, 3)}
        birth = {
            **s.birth, "source": s.source, "agent_version": self._version,
            "started": round(self._started, 3), "connected": round(now, 3),
        }
        # The certificate first and retained: a receiver learns it before the first sealed
        # batch that names it by x5t, also when it (re)subscribes later.
        await client.publish(s.topics.cert, s.sealer.announcement(ts=now), qos=1, retain=True)
        await client.publish(s.topics.status, _dump(status), qos=1, retain=True)
        await client.publish(s.topics.birth, _dump(birth), qos=1)

    async def rebirth(self) -> bool:
        """Announce again now (certificate, status, birth: what a connect sends), for the
        IOC's ``rebirth`` command. False when offline: the next connect announces anyway.
        Raises ``aiomqtt.MqttError`` if the connection fails meanwhile."""
        client = self._live
        if client is None:
            return False
        await self._announce(client)
        return True

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        # A clean DISCONNECT suppresses the will, so a planned stop says it itself.
        s = self._settings
        status = {"state": "offline", "source": s.source, "reason": "shutdown",
                  "ts": round(self._clock(), 3)}
        try:
            await client.publish(
                s.topics.status, _dump(status), qos=1, retain=True, timeout=SHUTDOWN_GRACE
            )
        except aiomqtt.MqttError as exc:
            log.info("event=uplink_offline_status_failed reason=%r", _reason(exc))

    async def _watch(self, client: aiomqtt.Client) -> None:
        # The message iterator is aiomqtt's only public signal of a lost connection:
        # it raises MqttError, which ends the session's TaskGroup (and the window).
        on_command = self._settings.on_command
        wanted = {self._settings.topics.command, *self._settings.command_topics}
        async for msg in client.messages:
            topic = str(msg.topic)
            if topic not in wanted:
                # Only what we subscribed to is a command. A broker that hands back anything else
                # (amqtt re-sends a resumed session's own in-flight publishes) is not obeyed.
                log.warning("event=uplink_unexpected_message topic=%r bytes=%d", topic[:200],
                            len(msg.payload) if isinstance(msg.payload, bytes | bytearray) else 0)
                continue
            if on_command is not None and isinstance(msg.payload, bytes | bytearray):
                on_command(bytes(msg.payload))

    # -- forwarding -------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        slots = asyncio.Semaphore(self._settings.max_inflight)
        # Highest seq in flight per priority: a row is never in two in-flight messages.
        # Per connection, so rows whose message was lost with it are fetched again.
        cursors = dict.fromkeys(PRIORITIES, 0)
        while True:
            await slots.acquire()
            # Cleared before the fetch: an append racing with it sets the event again.
            self._outbox.changed.clear()
            self._settled.clear()
            found = await self._next_batch(cursors)
            if found is None:
                slots.release()
                await self._idle()
                continue
            prio, topic, records = found
            if prio != Priority.ALARM and self._inflight > 0 and len(records) < self._min_batch:
                # Nagle for sealed batches: each message costs ≈250 µs of sealing (an ECDH and
                # a signature) and ≈250 bytes, so while a message is in flight a small batch
                # waits for its PUBACK (or more records) instead of going out on its own.
                # Alarms never wait; with nothing in flight nothing waits either.
                slots.release()
                await _wait_event(self._settled, NAGLE_MAX_WAIT)
                continue
            cursors[prio] = records[-1].seq
            encoded = await self._encode(records)
            if encoded is None:
                slots.release()
                continue
            # Counted here, not in the task, so the counter follows publish order exactly.
            self._inflight += 1
            self._stats.published_messages += 1
            self._stats.published_records += len(encoded[0])
            tg.create_task(self._send(client, slots, topic, *encoded))

    async def _next_batch(
        self, cursors: dict[Priority, int]
    ) -> tuple[Priority, str, list[StoredRecord]] | None:
        s = self._settings
        budget = max(
            s.batch_max_bytes // 2,
            s.batch_max_bytes - _ENVELOPE_OVERHEAD - _PER_RECORD_OVERHEAD * s.batch_max_records,
        )
        for prio in PRIORITIES:
            records = await self._outbox.fetch(prio, cursors[prio], s.batch_max_records, budget)
            if records:
                # One sealed message goes to one topic: security events split a run of events.
                channel, run = same_channel_run(records)
                return prio, s.topics.channel(channel), run
        return None

    async def _idle(self) -> None:
        await _wait_event(self._outbox.changed, IDLE_RECHECK)

    async def _encode(
        self, records: list[StoredRecord]
    ) -> tuple[list[StoredRecord], bytes] | None:
        sealer = self._settings.sealer
        try:
            return records, sealer.encode(records, sent_ts=self._clock())
        except PayloadError:
            pass
        good: list[StoredRecord] = []
        bad: list[int] = []
        for rec in records:
            try:
                sealer.check(rec)
                good.append(rec)
            except PayloadError:
                bad.append(rec.seq)
        # A row no receiver could parse would block its priority forever.
        log.error("event=uplink_bad_records action=deleted count=%d seqs=%s", len(bad), bad)
        self._stats.dropped_bad_records += len(bad)
        await self._outbox.delete(bad)
        if not good:
            return None
        return good, sealer.encode(good, sent_ts=self._clock())

    async def _send(
        self,
        client: aiomqtt.Client,
        slots: asyncio.Semaphore,
        topic: str,
        records: list[StoredRecord],
        payload: bytes,
    ) -> None:
        s = self._settings
        try:
            # A PUBACK that has not come after two keepalives will not come.
            await client.publish(topic, payload, qos=1, timeout=2.0 * s.keepalive + 5)
            await self._outbox.delete([r.seq for r in records])
            self._stats.acked_messages += 1
            self._stats.acked_records += len(records)
        finally:
            self._inflight -= 1
            self._settled.set()
            slots.release()

    # -- state and health -------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._since = self._clock()
            self._health_due.set()

    def health(self) -> dict[str, Any]:
        """What ``urbanedge status`` shows about the uplink."""
        return {
            "state": self._state,
            "since": round(self._since, 3),
            "inflight": self._inflight,
            "broker": f"{self._settings.host}:{self._settings.port}",
            **asdict(self._stats),
        }

    async def _health_loop(self) -> None:
        while True:
            self._health_due.clear()
            await self._outbox.put_health("uplink", json.dumps(self.health()))
            await _wait_event(self._health_due, HEALTH_EVERY)
