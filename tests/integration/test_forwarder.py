"""The uplink against a real Mosquitto and a real SQLite outbox.

A paho subscriber (its own thread, auto-reconnecting) records every batch; "nothing lost"
is checked by (source, seq). Between forwarder and broker sits a small TCP relay the test
controls: it can refuse new connections (so the forwarder cannot reconnect before the
subscriber has resubscribed to a restarted broker), withhold broker→gateway bytes (PUBACKs
held: messages provably in flight) and cut connections abruptly (for the Last Will).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import ssl
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.buffer import records
from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, Priority
from agent.config import Broker
from agent.uplink.forwarder import Forwarder, UplinkSettings
from agent.uplink.tls import TlsConfigError, client_context, context_from_settings
from agent.uplink.topics import Topics
from ioc.verify import Opener
from pki.keys import load_certs
from tests.support import testpki
from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port

TOPICS = Topics("urbanedge/v1", "test-site", "gw-1")
SOURCE = "gw-1"
CHANNEL_OF = {Priority.ALARM: "alarm", Priority.EVENT: "event", Priority.TELEMETRY: "telemetry"}


# -- the subscriber -------------------------------------------------------------------


@dataclass
class Received:
    channel: str
    payload: bytes
    retain: bool


@dataclass
class Receiver:
    """A paho subscriber on ``urbanedge/v1/#`` (QoS 0: it never writes to the broker,
    so a killed broker cannot reset its socket with data still unread)."""

    port: int
    messages: list[Received] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _opener: Opener | None = None
    _opened: list[tuple[str, list[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rx-{uuid.uuid4()}")
        # Sub-second delays work (paho does float arithmetic) though typed as int.
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, *_: c.subscribe(f"{TOPICS.prefix}/#", qos=0)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_disconnect = lambda *_: self.ready.clear()
        self.client.on_message = self._on_message

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        channel = TOPICS.parse(msg.topic)[2]
        with self.lock:
            self.messages.append(Received(channel, bytes(msg.payload), bool(msg.retain)))

    def start(self) -> None:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise TimeoutError("subscriber did not get its SUBACK")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, channel: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.channel == channel]

    def batches(self) -> list[tuple[str, list[int]]]:
        """(channel, seqs) of every record batch, in arrival order (each opened once, as the IOC would)."""
        with self.lock:
            got = [m for m in self.messages if m.channel in CHANNEL_OF.values()]
        if self._opener is None:
            self._opener = testpki.opener()
            self._opener.learn_chain(load_certs(testpki.device(SOURCE).chain))
        for m in got[len(self._opened):]:
            batch = self._opener.open(m.payload)
            assert batch.source == SOURCE
            self._opened.append((m.channel, [r["seq"] for r in batch.records]))
        return list(self._opened)

    def seqs(self) -> list[int]:
        return [s for _, seqs in self.batches() for s in seqs]


@contextlib.contextmanager
def receiver(port: int) -> Iterator[Receiver]:
    rx = Receiver(port)
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()


def fetch_retained(port: int, topic: str) -> dict[str, Any]:
    """The retained message on ``topic``, read by a fresh client (blocking; use a thread)."""
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ret-{uuid.uuid4()}")

    def on_message(_c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
            done.set()

    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not done.wait(5):
            raise AssertionError(f"no retained message on {topic}")
    finally:
        client.disconnect()
        client.loop_stop()
    return dict(json.loads(got[0]))


# -- a controllable TCP relay ---------------------------------------------------------


class Relay:
    """127.0.0.1:<port> → broker. ``close_gate`` stops listening (connect refused),
    ``hold`` withholds broker→client bytes, ``sever`` aborts every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.down = asyncio.Event()
        self.down.set()
        self.conns: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def open_gate(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close_gate(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    def hold(self) -> None:
        self.down.clear()

    def release(self) -> None:
        self.down.set()

    def sever(self) -> None:
        for writer in list(self.conns):
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self.conns.update((writer, up_w))
        try:
            await asyncio.gather(
                self._pipe(reader, up_w, None), self._pipe(up_r, writer, self.down)
            )
        finally:
            for w in (writer, up_w):
                w.transport.abort()
                self.conns.discard(w)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        try:
            while data := await src.read(65536):
                if gate is not None:
                    await gate.wait()
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            # One side gone: end the other too, as a real network path would.
            dst.transport.abort()


@contextlib.asynccontextmanager
async def relay_to(broker: Mosquitto) -> AsyncIterator[Relay]:
    relay = Relay(broker.port)
    await relay.open_gate()
    try:
        yield relay
    finally:
        relay.release()
        await relay.close_gate()
        relay.sever()


# -- helpers --------------------------------------------------------------------------


def settings(port: int, **kw: Any) -> UplinkSettings:
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "client_id": f"gw-1-{uuid.uuid4().hex[:8]}",
        "topics": TOPICS, "source": SOURCE, "sealer": testpki.batch_sealer(SOURCE),
        "reconnect_min": 0.05, "reconnect_max": 0.3,
    }
    return UplinkSettings(**{**base, **kw})


def telemetry(i: int) -> NewRecord:
    return records.telemetry(f"dev-{i % 7}", "pump", 1_000.0 + i, {"level": i, "ok": True})


def mixed(i: int) -> NewRecord:
    if i % 97 == 0:
        return records.alarm(f"dev-{i % 7}", "pump", 1_000.0 + i, "high", "raised",
                             "alert", "level", i, 10)
    if i % 89 == 0:
        return records.event(f"dev-{i % 7}", 1_000.0 + i, "device_online", attempt=i)
    return telemetry(i)


async def append(outbox: AsyncOutbox, recs: list[NewRecord]) -> dict[int, Priority]:
    """Append in chunks; returns seq → priority of everything appended."""
    out: dict[int, Priority] = {}
    for i in range(0, len(recs), 1000):
        chunk = recs[i : i + 1000]
        result = await outbox.append(chunk)
        assert result.evicted == 0 and result.dropped == 0
        out.update(zip(result.seqs, (r.prio for r in chunk), strict=True))
    return out


async def wait_until(cond: Callable[[], bool | Awaitable[bool]], what: str, limit: float = 30.0
                     ) -> None:
    async def check() -> bool:
        got = cond()
        return bool(await got) if not isinstance(got, bool) else got

    try:
        async with asyncio.timeout(limit):
            # Polling: most conditions live on paho's thread, where no asyncio.Event reaches.
            while not await check():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


async def empty(outbox: AsyncOutbox) -> bool:
    return (await outbox.stats()).records == 0


async def uplink_health(outbox: AsyncOutbox, state: str) -> bool:
    row = (await outbox.health()).get("uplink")
    return row is not None and json.loads(row)["state"] == state


@contextlib.asynccontextmanager
async def opened(tmp_path: Path) -> AsyncIterator[AsyncOutbox]:
    async with await AsyncOutbox.open(
        tmp_path / "outbox.db", max_bytes=256 * 1024 * 1024, durability="normal"
    ) as outbox:
        yield outbox


@contextlib.asynccontextmanager
async def running(fwd: Forwarder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(fwd.run(), name="forwarder")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def online(fwd: Forwarder, task: asyncio.Task[None]) -> None:
    def up() -> bool:
        if task.done():
            task.result()  # surface the forwarder's crash instead of a timeout
        return fwd.state == "online"

    await wait_until(up, "forwarder online")


def received_all(rx: Receiver, expected: dict[int, Priority]) -> Callable[[], bool]:
    return lambda: set(expected) <= set(rx.seqs())


# -- the tests ------------------------------------------------------------------------


def test_forwards_5000_records_by_priority_and_empties_the_outbox(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with opened(tmp_path) as outbox:
            expected = await append(outbox, [mixed(i) for i in range(5000)])
            fwd = Forwarder(outbox, settings(mosquitto.port, batch_max_records=150))
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    await wait_until(received_all(rx, expected), "all 5000 seqs received")
                    await wait_until(lambda: empty(outbox), "outbox empty", 10)
                    await wait_until(lambda: uplink_health(outbox, "online"), "health row")
                batches = rx.batches()
        assert sorted(rx.seqs()) == sorted(expected)  # each exactly once: no reconnect here
        for channel, seqs in batches:
            assert 0 < len(seqs) <= 150
            # One priority per message, on that priority's topic.
            assert {CHANNEL_OF[expected[s]] for s in seqs} == {channel}
        assert {c for c, _ in batches} == {"alarm", "event", "telemetry"}
        assert fwd.stats.acked_records == 5000
        assert fwd.state == "offline"
        assert "event=uplink_connected" in caplog.text

    asyncio.run(scenario())


def test_rows_are_deleted_only_after_puback(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    window, size = 12, 50  # 12 is above aiomqtt's "pending publish calls" threshold (10)

    async def scenario() -> None:
        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            fwd = Forwarder(
                outbox, settings(relay.port, max_inflight=window, batch_max_records=size)
            )
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    relay.hold()  # the broker gets every PUBLISH, we get no PUBACK
                    expected = await append(outbox, [telemetry(i) for i in range(1000)])
                    # The window has reached the subscriber, so it was sent...
                    await wait_until(lambda: len(rx.seqs()) >= window * size, "window sent")
                    await wait_until(lambda: fwd.health()["inflight"] == window, "window full")
                    # ...yet not one row is gone, and nothing more went out.
                    assert (await outbox.stats()).records == 1000
                    assert fwd.stats.acked_records == 0
                    # The first rows, each in exactly one in-flight message.
                    assert sorted(rx.seqs()) == sorted(expected)[: window * size]
                    relay.release()
                    await wait_until(received_all(rx, expected), "all received")
                    await wait_until(lambda: empty(outbox), "outbox empty")
        assert fwd.stats.acked_records == 1000
        # A window above the threshold is intended: no warning for it.
        assert "pending publish calls" not in caplog.text

    asyncio.run(scenario())


def test_until_acked_waits_for_the_puback_and_not_while_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """What a restart or reboot waits for: its result acknowledged, bounded; no wait offline."""

    async def scenario() -> None:
        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            fwd = Forwarder(outbox, settings(relay.port))
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    relay.hold()
                    seqs = list(await append(outbox, [mixed(1)]))
                    await wait_until(lambda: set(seqs) <= set(rx.seqs()), "the record sent")
                    assert await fwd.until_acked(seqs, grace=0.3) is False  # no PUBACK yet
                    assert await outbox.pending(seqs) == 1
                    relay.release()
                    assert await fwd.until_acked(seqs, grace=30) is True
                    assert await outbox.pending(seqs) == 0

                    await relay.close_gate()
                    relay.sever()
                    await wait_until(lambda: fwd.state != "online", "forwarder offline")
                    more = list(await append(outbox, [mixed(2)]))
                    assert await fwd.until_acked(more, grace=30) is False
                    assert await outbox.pending(more) == 1
                    await relay.open_gate()
                    await online(fwd, task)
                    assert await fwd.until_acked(more, grace=30) is True

    asyncio.run(scenario())


def test_a_corrupt_row_is_dropped_not_left_to_block_the_queue(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with opened(tmp_path) as outbox:
            good = await append(outbox, [telemetry(i) for i in range(10)])
            bad = NewRecord(Priority.TELEMETRY, "dev-x", 1.0, b"not json")
            bad_seq = (await outbox.append([bad])).seqs[0]
            good |= await append(outbox, [telemetry(i) for i in range(10, 20)])
            fwd = Forwarder(outbox, settings(mosquitto.port))
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    await wait_until(received_all(rx, good), "the good rows")
                    await wait_until(lambda: empty(outbox), "outbox empty")
        assert bad_seq not in rx.seqs()
        assert fwd.stats.dropped_bad_records == 1

    asyncio.run(scenario())


def test_broker_stopped_mid_stream_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def scenario() -> None:
        expected: dict[int, Priority] = {}

        async def keep_appending() -> None:
            for n in range(10**6):
                expected.update(await append(outbox, [mixed(n * 50 + i) for i in range(50)]))
                await asyncio.sleep(0.02)

        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            expected.update(await append(outbox, [mixed(i) for i in range(3000)]))
            fwd = Forwarder(outbox, settings(relay.port, batch_max_records=50, max_inflight=8))
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    feeder = asyncio.create_task(keep_appending())
                    try:
                        await online(fwd, task)
                        await wait_until(lambda: len(rx.seqs()) > 500, "stream flowing")
                        # Refused, not half-open, while the broker is away: see Relay.
                        await relay.close_gate()
                        await asyncio.to_thread(mosquitto.stop)
                        await wait_until(lambda: fwd.state != "online", "loss noticed")
                        queued_while_down = len(expected)
                        await asyncio.sleep(2.0)
                        assert len(expected) > queued_while_down  # appends went on
                        await asyncio.to_thread(mosquitto.start)
                        await wait_until(rx.ready.is_set, "subscriber back")
                        await relay.open_gate()
                        await online(fwd, task)
                    finally:
                        feeder.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await feeder
                    await wait_until(received_all(rx, expected), "every seq received")
                    await wait_until(lambda: empty(outbox), "outbox drained")
        stats = fwd.stats
        assert stats.reconnects >= 1
        assert stats.last_error is not None

    asyncio.run(scenario())


def test_broker_killed_with_messages_in_flight_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            fwd = Forwarder(outbox, settings(relay.port, batch_max_records=100, max_inflight=8))
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    relay.hold()
                    expected = await append(outbox, [telemetry(i) for i in range(2000)])
                    await wait_until(lambda: fwd.health()["inflight"] == 8, "window in flight")
                    await wait_until(lambda: len(rx.seqs()) == 800, "window at subscriber")
                    await relay.close_gate()
                    await asyncio.to_thread(mosquitto.kill)
                    relay.sever()  # the held PUBACKs die with the connection
                    relay.release()
                    await wait_until(lambda: fwd.state != "online", "loss noticed")
                    assert (await outbox.stats()).records == 2000  # nothing was acked
                    await asyncio.to_thread(mosquitto.start)
                    await wait_until(rx.ready.is_set, "subscriber back")
                    await relay.open_gate()
                    await wait_until(received_all(rx, expected), "every seq received")
                    await wait_until(lambda: empty(outbox), "outbox drained")
        seqs = rx.seqs()
        # The unacknowledged window went out again after the reconnect.
        assert len(seqs) - len(set(seqs)) >= 800
        assert fwd.stats.reconnects == 1

    asyncio.run(scenario())


def test_alarm_overtakes_telemetry_backlog(mosquitto: Mosquitto, tmp_path: Path) -> None:
    window = 8

    async def scenario() -> None:
        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            fwd = Forwarder(
                outbox, settings(relay.port, batch_max_records=50, max_inflight=window)
            )
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    # Acks withheld: the drain stalls with a full window, as on a slow link.
                    relay.hold()
                    backlog = await append(outbox, [telemetry(i) for i in range(20_000)])
                    await wait_until(lambda: len(rx.batches()) == window, "window sent")
                    alarm = records.alarm("dev-1", "pump", 5e3, "high", "raised", "alert",
                                          "level", 99, 90)
                    alarm_seq = (await outbox.append([alarm])).seqs[0]
                    relay.release()
                    await wait_until(received_all(rx, backlog), "backlog drained")
                    batches = rx.batches()
        position = next(i for i, (ch, seqs) in enumerate(batches) if ch == "alarm")
        assert batches[position][1] == [alarm_seq]
        # Only what was already in flight came before it: the next free slot was the alarm's.
        assert position <= window
        after = sum(len(seqs) for ch, seqs in batches[position + 1 :] if ch == "telemetry")
        assert after >= 20_000 - (window + 1) * 50

    asyncio.run(scenario())


def test_last_will_status_and_birth(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def retained() -> dict[str, Any]:
        return await asyncio.to_thread(fetch_retained, mosquitto.port, TOPICS.status)

    async def scenario() -> None:
        async with opened(tmp_path) as outbox, relay_to(mosquitto) as relay:
            birth = {"site_name": "Test Site", "devices": 3}
            fwd = Forwarder(outbox, settings(relay.port, birth=birth), clock=lambda: 1234.5)
            with receiver(mosquitto.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    assert (await retained())["state"] == "online"
                    await relay.close_gate()
                    relay.sever()  # abrupt: no DISCONNECT, so the broker sends the will
                    await wait_until(lambda: fwd.state != "online", "loss noticed")
                    will = await retained()
                    assert will["state"] == "offline"
                    assert will["reason"] == "connection lost"
                    await relay.open_gate()
                    await wait_until(lambda: len(rx.on("birth")) == 2, "second birth")
                    assert (await retained())["state"] == "online"
                    await wait_until(lambda: uplink_health(outbox, "online"), "health online")
                # Cancelled: a clean stop says offline itself (a clean DISCONNECT has no will).
                bye = await retained()
                assert (bye["state"], bye["reason"]) == ("offline", "shutdown")
                assert await uplink_health(outbox, "offline")
        first = json.loads(rx.on("birth")[0].payload)
        assert first["site_name"] == "Test Site" and first["devices"] == 3
        assert first["source"] == SOURCE and first["started"] == 1234.5
        assert first["agent_version"]
        assert fwd.stats.reconnects == 1

    asyncio.run(scenario())


# -- TLS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        return path

    def issue(
        cn: str, key: ec.EllipticCurvePrivateKey, issuer: Any, issuer_key: Any,
        extensions: list[tuple[Any, bool]],
    ) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical)
        return builder.sign(issuer_key, hashes.SHA256())

    def write_cert(cert: Any, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    ca = issue("test root", ca_key, ca_name, ca_key, [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())

    def leaf(cn: str, usage: Any, san: list[Any] | None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        exts: list[tuple[Any, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([usage]), False), (aki, False),
        ]
        if san:
            exts.append((x509.SubjectAlternativeName(san), False))
        return issue(cn, key, ca_name, ca_key, exts), key

    server, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
    ])
    client, client_key = leaf(SOURCE, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    folder.mkdir(parents=True, exist_ok=True)
    return Pki(
        ca=write_cert(ca, folder / "ca.pem"),
        server_cert=write_cert(server, folder / "server.pem"),
        server_key=write_key(server_key, folder / "server.key"),
        client_cert=write_cert(client, folder / "client.pem"),
        client_key=write_key(client_key, folder / "client.key"),
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, int, Pki]]:
    """A broker with a plain listener (for the subscriber) and a mutual-TLS listener."""
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra_conf=(
        "user root\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\ntls_version tlsv1.2\n"
    ))
    broker.workdir.mkdir()
    broker.start()
    try:
        yield broker, tls_port, pki
    finally:
        broker.stop()


def test_forwards_over_mutual_tls(tls_broker: tuple[Mosquitto, int, Pki], tmp_path: Path) -> None:
    broker, tls_port, pki = tls_broker

    async def scenario() -> None:
        async with opened(tmp_path) as outbox:
            expected = await append(outbox, [mixed(i) for i in range(500)])
            # Without a client certificate the broker refuses the handshake...
            anonymous = Forwarder(
                outbox, settings(tls_port, tls=client_context(pki.ca), connect_timeout=1.0)
            )
            async with running(anonymous):
                await wait_until(lambda: anonymous.stats.connect_failures >= 1, "refused")
            assert anonymous.stats.connects == 0
            # ...with ours it takes the records.
            ctx = client_context(pki.ca, pki.client_cert, pki.client_key)
            fwd = Forwarder(outbox, settings(tls_port, tls=ctx))
            with receiver(broker.port) as rx:
                async with running(fwd) as task:
                    await online(fwd, task)
                    await wait_until(received_all(rx, expected), "all received over TLS")
                    await wait_until(lambda: empty(outbox), "outbox empty")

    asyncio.run(scenario())


def test_tls_context_checks_files(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ctx = client_context(pki.ca, pki.client_cert, pki.client_key)
    assert ctx.check_hostname and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsConfigError, match=r"nope\.pem: CA file not found"):
        client_context(missing)
    with pytest.raises(TlsConfigError, match="key file not found"):
        client_context(pki.ca, pki.client_cert, missing)
    with pytest.raises(TlsConfigError, match="is a directory"):
        client_context(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match=r"garbage\.pem: not a PEM CA certificate"):
        client_context(garbage)
    with pytest.raises(TlsConfigError, match="not a pair"):
        client_context(pki.ca, pki.client_cert, pki.server_key)
    with pytest.raises(TlsConfigError, match="go together"):
        client_context(pki.ca, pki.client_cert, None)


def test_context_from_broker_settings(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    assert context_from_settings(Broker()) is None
    ctx = context_from_settings(
        Broker(tls=True, ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    )
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"source": ""}, "source"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"batch_max_bytes": 0}, "batch_max_bytes"),
        ({"reconnect_min": 0.0}, "reconnect_min"),
        ({"reconnect_min": 5.0, "reconnect_max": 1.0}, "reconnect_min"),
        ({"connect_timeout": 0.0}, "connect_timeout"),
    ],
)
def test_settings_are_checked(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        settings(1883, **change)
