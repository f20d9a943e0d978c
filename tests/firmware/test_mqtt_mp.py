"""The node's MQTT client (firmware/ue/mqtt.py) under the real ``micropython -X heapsize=100k``,
against a real Mosquitto whose TLS listener has ``require_certificate true``
(tests/support/tls_broker.py). The client loads its CA, certificate and key as DER files with
MicroPython's mbedTLS ``ssl``; a paho (CPython) subscriber on the broker's plain listener sees
what arrived.

What is proved, one test each:
- QoS 1 publishing with the client certificate, byte-exact delivery (payloads around and above
  ``tx_size``, so both the one-write and the two-write paths), and ``publish`` returning only
  after the PUBACK: a relay holds the broker's bytes back while the subscriber already has it;
- the two-write path under back-pressure (an ESP32-sized send buffer, a slow uplink);
- refused certificates (none, or one from another CA; and a broker the node does not trust):
  one-line ``mqtt_connect_failed`` naming the TLS/certificate problem, retries with growing
  jittered backoff, no crash;
- a broker killed with a publish in flight: ConnectionLost (never success without PUBACK), then
  a reconnection by itself on the same port and later publishes acknowledged;
- the Last Will: published on SIGKILL of the node, not after ``disconnect()``;
- keepalive: a frozen broker (SIGSTOP) is declared dead within about one keepalive (test bound: 2), and the dead
  link's socket is closed (one socket left after the reconnection).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.micropython import micropython_exe, mp_env
from tests.support.tls_broker import Relay, TlsBroker, make_tls_material, tls_broker

HEAP = "100k"
TX_SIZE = 2048  # the client's default packet buffer, as the node uses it

# Shared by every node script: the test hands its settings over as a JSON file (argv[1]), the
# node reports on stdout, one line per fact, and its client's log lines come prefixed with
# "log <client> <ticks_ms>" so the test can check delays the node itself measured.
PRELUDE = r"""
import asyncio, json, os, sys
from time import ticks_ms
from ue import mqtt

CFG = json.load(open(sys.argv[1]))


def say(*words):
    print(" ".join([str(w) for w in words]))


def logger(tag):
    return lambda line: say("log", tag, ticks_ms(), line)


def tls(cert, ca_der=None):
    with open(ca_der or CFG["ca_der"], "rb") as f:
        ca = f.read()
    if cert is None:
        return mqtt.tls_context(ca)
    return mqtt.tls_context(ca, cert[0], cert[1])


def client(cid, cert="own", cls=mqtt.MQTTClient, ca_der=None, **kw):
    return cls(cid, "127.0.0.1", CFG["port"], tls=tls(CFG["cert"] if cert == "own" else cert, ca_der),
               server_hostname="127.0.0.1", log=logger(cid), **kw)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


async def until_file(path):
    # The test's go-ahead: it creates the file once it watches what it wants to see.
    while not exists(path):
        await asyncio.sleep_ms(10)
"""

PUBLISH_SCRIPT = PRELUDE + r"""
import gc

# Allocated once, early: the unix port compiles the client into this same 100 KB heap, which
# leaves it fragmented (on the ESP32 the code is frozen in flash). The node does the same.
gc.collect()
BUF = bytearray(6200)


async def main():
    c = client(CFG["client_id"])
    c.start()
    for i, path in enumerate(CFG["payloads"]):
        with open(path, "rb") as f:
            n = f.readinto(BUF)
        if i == CFG["held"]:
            say("ready", i)
            await until_file(CFG["go"])
        await c.publish(CFG["topic"], memoryview(BUF)[:n])
        say("acked", i)
    say("stats", c.connects, c.drops)
    await c.disconnect()


asyncio.run(main())
"""

# Every socket the node opens gets an ESP32-sized send buffer (lwIP's TCP_SND_BUF is 5744 bytes
# by default; Linux doubles what is asked): with a slow uplink the buffer is often full when a
# packet is written, which a loopback socket with its megabytes of buffer never is.
BACKPRESSURE_SCRIPT = PRELUDE + r"""
import gc
import socket as _socket

gc.collect()
BUFS = [bytearray(4200) for _ in range(4)]  # one per publishing task, allocated early


class _SmallSendBuffers:
    def __getattr__(self, name):
        return getattr(_socket, name)

    def socket(self, *args):
        s = _socket.socket(*args)
        s.setsockopt(_socket.SOL_SOCKET, getattr(_socket, "SO_SNDBUF", 7), CFG["sndbuf"])
        return s


sys.modules["socket"] = _SmallSendBuffers()
RAMP = memoryview(bytes(range(256)) * 2)


def fill(buf, k, i):
    # Above tx_size (two writes), each one different, built in the task's own buffer: the node's
    # way too (the client sends from the caller's buffer, which is free again on return).
    head = ("%d:%d:" % (k, i)).encode()
    size = 2100 + (i * 997 + k * 331) % 2000
    off = (k * 7 + i) % 256
    buf[:len(head)] = head
    pos, end = len(head), len(head) + size
    while pos < end:  # byte j of the body is (off + j) & 255
        m = min(256, end - pos)
        buf[pos:pos + m] = RAMP[off:off + m]
        pos += m
    return memoryview(buf)[:end]


async def publisher(c, k, buf):
    for i in range(CFG["count"]):
        await c.publish(CFG["topic"] + "/" + str(k), fill(buf, k, i))
    say("done", k)


async def main():
    c = client(CFG["client_id"], max_inflight=len(BUFS))
    await c.wait_connected()
    await asyncio.gather(*[publisher(c, k, BUFS[k]) for k in range(len(BUFS))])
    say("stats", c.connects, c.drops)
    await c.disconnect()


asyncio.run(main())
"""

REFUSED_SCRIPT = PRELUDE + r"""
async def main():
    kw = {"backoff_min_ms": CFG["bo_min"], "backoff_max_ms": CFG["bo_max"], "connect_timeout_ms": 5000}
    clients = [client("no-cert", cert=None, **kw), client("rogue-cert", cert=CFG["rogue"], **kw),
               client("wrong-ca", ca_der=CFG["other_ca"], **kw)]
    for c in clients:
        c.start()
    # While refused, a publish neither succeeds nor fails: it waits for a link.
    try:
        await asyncio.wait_for_ms(clients[0].publish("uet/refused", b"never"), 300)
        say("published without a link")
    except asyncio.TimeoutError:
        say("publish still waiting")
    while min([c.connect_failures for c in clients]) < CFG["attempts"]:
        await asyncio.sleep_ms(20)
    for c in clients:
        say("stats", c.client_id.decode(), c.connects, c.connect_failures, c.isconnected())
        await c.disconnect()
    try:
        await clients[0].publish("uet/refused", b"after")
        say("published after disconnect")
    except mqtt.Closed:
        say("closed")


asyncio.run(main())
"""

OUTAGE_SCRIPT = PRELUDE + r"""
CURRENT = [0]


class Probe(mqtt.MQTTClient):
    # Says when a PUBLISH is on the wire (handed to the kernel), so the test kills the broker
    # with that publish in flight, not before it was written.
    async def _send_publish(self, topic, payload, retain, pid):
        await super()._send_publish(topic, payload, retain, pid)
        say("written", CURRENT[0])


async def main():
    c = client(CFG["client_id"], cls=Probe, backoff_min_ms=100, backoff_max_ms=400)
    for i in range(CFG["count"]):
        CURRENT[0] = i
        if i == CFG["pause_at"]:
            say("paused", i)
            await until_file(CFG["go"])
        payload = ("msg %d;" % i).encode() * (i + 1)
        while True:
            try:
                await c.publish(CFG["topic"], payload)
            except mqtt.ConnectionLost:
                say("lost", i)  # not acknowledged: the node's log sends it again
                continue
            say("acked", i)
            break
    say("stats", c.connects, c.drops)
    await c.disconnect()


asyncio.run(main())
"""

WILL_SCRIPT = PRELUDE + r"""
from binascii import unhexlify


async def main():
    c = client(CFG["client_id"], will=(CFG["will_topic"], unhexlify(CFG["will_hex"]), True))
    await c.publish(CFG["topic"], b"alive")
    say("up")
    if CFG["clean"]:
        await c.disconnect()
        say("bye")
        return
    await asyncio.sleep(60)  # killed by the test long before


asyncio.run(main())
"""

KEEPALIVE_SCRIPT = PRELUDE + r"""
async def main():
    c = client(CFG["client_id"], keepalive=CFG["keepalive"], connect_timeout_ms=1500,
               backoff_min_ms=100, backoff_max_ms=400)
    await c.wait_connected()
    say("up")
    await until_file(CFG["go"])
    i = after = 0
    while after < 3:
        try:
            await c.publish(CFG["topic"], ("tick %d" % i).encode())
            say("acked", i, c.connects)
            if c.connects > 1:
                after += 1
        except mqtt.ConnectionLost:
            say("lost", i)
        i += 1
        await asyncio.sleep_ms(100)
    say("stats", c.connects, c.drops)
    await until_file(CFG["done"])  # the test counts our sockets meanwhile
    await c.disconnect()


asyncio.run(main())
"""


# -- helpers ---------------------------------------------------------------------------------


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


KV = re.compile(r'(\w+)=("[^"]*"|\S+)')


@dataclass(frozen=True)
class Line:
    at: float  # time.monotonic() when the test read it
    text: str


@dataclass(frozen=True)
class Event:
    at: float
    client: str
    ticks: int  # the node's own ticks_ms when it logged
    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields[key]


class Node:
    """One ``micropython -X heapsize=100k`` process running a script; its stdout lines are
    collected (with the time they arrived) by a thread."""

    def __init__(self, tmp: Path, name: str, script: str, cfg: dict[str, Any]) -> None:
        path = tmp / f"{name}.py"
        path.write_text(script)
        cfg_path = tmp / f"{name}.json"
        cfg_path.write_text(json.dumps(cfg))
        self.name = name
        self.err_path = tmp / f"{name}.stderr"
        err = open(self.err_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([str(micropython_exe()), "-X", f"heapsize={HEAP}", str(path), str(cfg_path)],
                                     stdout=subprocess.PIPE, stderr=err, env=mp_env(), cwd=tmp, text=True)
        err.close()
        self._lines: list[Line] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self._lines.append(Line(time.monotonic(), raw.rstrip("\n")))

    def lines(self) -> list[Line]:
        with self._lock:
            return list(self._lines)

    def texts(self) -> list[str]:
        return [ln.text for ln in self.lines()]

    def has(self, text: str) -> bool:
        return text in self.texts()

    def wait_line(self, text: str, timeout: float = 20) -> Line:
        found: list[Line] = []

        def seen() -> bool:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"{self.name} exited {self.proc.returncode} before {text!r}\n{self.output()}")
            found[:] = [ln for ln in self.lines() if ln.text == text]
            return bool(found)

        wait_for(seen, timeout, f"{self.name}: {text!r}\n{self.output()}")
        return found[0]

    def events(self, event: str | None = None, client: str | None = None) -> list[Event]:
        out = []
        for ln in self.lines():
            parts = ln.text.split(" ", 3)
            if len(parts) < 4 or parts[0] != "log":
                continue
            fields = {k: v.strip('"') for k, v in KV.findall(parts[3])}
            if (event is None or fields.get("event") == event) and (client is None or parts[1] == client):
                out.append(Event(ln.at, parts[1], int(parts[2]), fields))
        return out

    def wait_exit(self, timeout: float = 30) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s\n{self.output()}") from None
        self._reader.join(5)
        assert self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}\n{self.output()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)

    def output(self) -> str:
        err = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return "--- stdout ---\n" + "\n".join(self.texts()) + "\n--- stderr ---\n" + err


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """paho on the broker's plain listener; ``session`` (a client id) keeps the subscription and
    its queue on the broker while we are away (across restarts with persistence)."""

    def __init__(self, port: int, topic: str, session: str | None = None) -> None:
        self._msgs: list[Msg] = []
        self._lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=session or f"sub-{uuid.uuid4().hex[:12]}",
                        clean_session=session is None)
        c.reconnect_delay_set(1, 2)
        subscribed = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self._client = c
        if not subscribed.wait(10):
            self.close()
            raise RuntimeError(f"could not subscribe to {topic}")

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        with self._lock:
            self._msgs.append(Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain)))

    def messages(self, topic: str | None = None) -> list[Msg]:
        with self._lock:
            return [m for m in self._msgs if topic is None or m.topic == topic]

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [m.payload for m in self.messages(topic)]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@contextmanager
def subscriber(port: int, topic: str, session: str | None = None) -> Iterator[Subscriber]:
    sub = Subscriber(port, topic, session)
    try:
        yield sub
    finally:
        sub.close()


@contextmanager
def nodes() -> Iterator[list[Node]]:
    """Whatever node the test starts is gone when it ends, whatever happened."""
    started: list[Node] = []
    try:
        yield started
    finally:
        for n in started:
            n.kill()


def base_cfg(tb: TlsBroker, client_id: str, port: int | None = None) -> dict[str, Any]:
    own = tb.tls.client(client_id)
    return {"ca_der": str(tb.tls.ca_der), "cert": [str(own.cert_der), str(own.key_der)],
            "port": port or tb.tls_port, "client_id": client_id}


def sockets_of(pid: int) -> int:
    """Open sockets of a process (its /proc/PID/fd links to socket:[inode])."""
    fds = Path(f"/proc/{pid}/fd")
    n = 0
    for fd in fds.iterdir():
        with suppress(OSError):  # closed while we looked
            n += os.readlink(fd).startswith("socket:")
    return n


def publish_header_len(topic: bytes, payload_len: int) -> int:
    """Bytes of a QoS 1 PUBLISH before its payload: type, remaining length, topic, packet id."""
    remaining = 2 + len(topic) + 2 + payload_len
    n = 1
    while remaining >= 128:
        remaining >>= 7
        n += 1
    return 1 + n + 2 + len(topic) + 2


# -- tests -----------------------------------------------------------------------------------


def test_qos1_publish_returns_only_on_puback_and_arrives_byte_exact(tmp_path: Path) -> None:
    topic = "uet/pub/node-1/data"
    rng = random.Random(1)
    # The largest payload that still goes out in one write with its header, and one byte more.
    fits = max(n for n in range(TX_SIZE) if publish_header_len(topic.encode(), n) + n <= TX_SIZE)
    # (Nothing above the script's 6200-byte buffer: the unix port compiles the client into the
    # same 100 KB heap and leaves no larger block free for long. Node batches are ~1-2 KB.)
    payloads = [b"", b"\x00", bytes(range(256)), rng.randbytes(fits), rng.randbytes(fits + 1),
                rng.randbytes(3 * TX_SIZE + 5), rng.randbytes(300)]
    held = 5  # the 3 x tx_size one: the PUBACK is kept from the node until the test says so
    files = []
    for i, p in enumerate(payloads):
        files.append(str(tmp_path / f"p{i}.bin"))
        (tmp_path / f"p{i}.bin").write_bytes(p)
    with tls_broker(tmp_path / "b") as tb, subscriber(tb.broker.port, "uet/pub/#") as sub, nodes() as started:
        relay = Relay(tb.tls_port)
        try:
            go = tmp_path / "go"
            node = Node(tmp_path, "pub", PUBLISH_SCRIPT, {
                **base_cfg(tb, "node-1", relay.port), "topic": topic, "payloads": files, "held": held,
                "go": str(go)})
            started.append(node)
            node.wait_line(f"ready {held}")
            relay.hold()
            go.touch()
            # The broker has the message (so it has sent its PUBACK), the relay holds that
            # PUBACK: publish must not have returned.
            wait_for(lambda: len(sub.messages()) > held, 20, "the held message at the subscriber")
            wait_for(lambda: relay.held_bytes > 0, 20, "the broker's PUBACK at the relay")
            time.sleep(0.3)  # room for a wrong "acked" to show up; the right one cannot
            assert not node.has(f"acked {held}"), node.output()
            relay.release()
            node.wait_exit()
        finally:
            relay.close()
    out = node.texts()
    assert [t for t in out if t.startswith("acked")] == [f"acked {i}" for i in range(len(payloads))]
    assert out.index(f"acked {held - 1}") < out.index(f"ready {held}") < out.index(f"acked {held}")
    assert "stats 1 0" in out, node.output()  # one connection, never dropped
    got = sub.messages()
    assert [m.payload for m in got] == payloads  # byte-exact, in order, each once
    assert {(m.topic, m.qos) for m in got} == {(topic, 1)}
    assert relay.connections == 1
    assert "New client connected from 127.0.0.1" in tb.log_text()


def test_two_write_path_survives_an_esp32_sized_send_buffer(tmp_path: Path) -> None:
    """Payloads above tx_size go out as header + payload, and on a slow link the socket is often
    full. mbedTLS must then be called again with the same bytes; asyncio's Stream.write appended
    the payload to the pending header instead, and mbedTLS reported both as sent while only the
    header went (the broker read payload bytes as packets: "protocol error", "multiple
    CONNECT", a drop every ~25 messages). Stream.write also copied the unsent payload, which
    this heap cannot always hold (MemoryError with half a packet out)."""
    tasks, count = 4, 30  # tasks: the script's BUFS
    with tls_broker(tmp_path / "b") as tb, subscriber(tb.broker.port, "uet/bp/#") as sub, nodes() as started:
        relay = Relay(tb.tls_port, pace=(4096, 0.01), rcvbuf=4096)  # ~400 KB/s uplink
        try:
            node = Node(tmp_path, "bp", BACKPRESSURE_SCRIPT, {
                **base_cfg(tb, "node-bp", relay.port), "topic": "uet/bp", "count": count,
                "sndbuf": 2048})
            started.append(node)
            node.wait_exit(60)
        finally:
            relay.close()
        wait_for(lambda: len(sub.messages()) >= tasks * count, 20, "every message at the subscriber")
        broker_log = tb.log_text()
    assert "stats 1 0" in node.texts(), node.output()  # one connection, never dropped
    assert "protocol error" not in broker_log and "multiple CONNECT" not in broker_log
    for k in range(tasks):
        want = []
        for i in range(count):
            size = 2100 + (i * 997 + k * 331) % 2000
            off = (k * 7 + i) % 256
            want.append(f"{k}:{i}:".encode() + bytes((off + j) & 255 for j in range(size)))
        assert sub.payloads(f"uet/bp/{k}") == want


def test_refused_certificate_is_logged_and_retried_with_growing_jittered_backoff(tmp_path: Path) -> None:
    bo_min, bo_max, attempts = 100, 800, 5
    other = make_tls_material(tmp_path / "other-ca")
    rogue = other.client("rogue-cert")  # a good certificate, from a CA the broker does not know
    with tls_broker(tmp_path / "b") as tb:
        cfg = {**base_cfg(tb, "wrong-ca"), "rogue": [str(rogue.cert_der), str(rogue.key_der)],
               "other_ca": str(other.ca_der), "bo_min": bo_min, "bo_max": bo_max, "attempts": attempts}
        with nodes() as started:
            node = Node(tmp_path, "refused", REFUSED_SCRIPT, cfg)
            started.append(node)
            node.wait_exit(30)  # exits 0: nothing raised out of the client
        broker_log = tb.log_text()
    out = node.texts()
    assert "publish still waiting" in out and "closed" in out, node.output()
    for name in ("no-cert", "rogue-cert", "wrong-ca"):
        assert any(t.startswith(f"stats {name} 0 ") for t in out), node.output()  # never connected
    assert "peer did not return a certificate" in broker_log
    assert "unknown ca" in broker_log or "certificate verify failed" in broker_log
    ratios = set()
    for name, says in (("no-cert", "TLS handshake refused by the broker (client certificate"),
                       ("rogue-cert", "TLS handshake refused by the broker (client certificate"),
                       # The other way round: the node does not trust the broker's certificate.
                       ("wrong-ca", "TLS handshake: broker certificate rejected: ValueError: The "
                                    "certificate is not correctly signed by the trusted CA")):
        fails = node.events("mqtt_connect_failed", name)
        assert len(fails) >= attempts, node.output()
        assert not node.events("mqtt_connected", name)
        for e in fails:
            assert e["reason"].startswith(says), e["reason"]
            assert e["port"] == str(tb.tls_port)
        for k, e in enumerate(fails):
            d = min(bo_min << k, bo_max)
            retry = int(e["retry_ms"])
            assert d // 2 <= retry <= d, (k, retry, d)  # "equal jitter": half the delay, plus up to half
            ratios.add(retry * 1000 // d)
            if k + 1 < len(fails):
                # The node's own clock: the next attempt failed no sooner than the announced wait.
                assert fails[k + 1].ticks - e.ticks >= retry, (k, retry, fails[k + 1].ticks - e.ticks)
        assert int(fails[3]["retry_ms"]) > int(fails[0]["retry_ms"])  # it grows: 400..800 vs 50..100
    assert len(ratios) > 1  # jittered: not a fixed fraction of the delay


def test_broker_killed_mid_publish_raises_connection_lost_then_reconnects(tmp_path: Path) -> None:
    topic, count, pause_at = "uet/outage/node-3", 10, 5

    def payload(i: int) -> bytes:
        return f"msg {i};".encode() * (i + 1)

    # A persistent session: what the node sends before paho is back after the restart waits for
    # it on the broker (saved to disk at every change).
    session = f"outage-sub-{os.getpid()}"
    with tls_broker(tmp_path / "b", persistence=True) as tb, nodes() as started, \
            subscriber(tb.broker.port, "uet/outage/#", session=session) as sub:
        wait_for(lambda: (tb.broker.workdir / "mosquitto.db").exists(), 10, "the subscription on disk")
        go = tmp_path / "go"
        node = Node(tmp_path, "outage", OUTAGE_SCRIPT, {
            **base_cfg(tb, "node-3"), "topic": topic, "count": count, "pause_at": pause_at, "go": str(go)})
        started.append(node)
        node.wait_line(f"paused {pause_at}")
        wait_for(lambda: len(sub.messages()) >= pause_at, 20, "the first messages at the subscriber")
        assert tb.broker.proc is not None
        os.kill(tb.broker.proc.pid, signal.SIGSTOP)
        try:
            go.touch()
            # Frozen broker: the PUBLISH goes into its socket, no PUBACK comes back.
            node.wait_line(f"written {pause_at}")
        finally:
            tb.broker.kill()  # SIGKILL works on a stopped process
        lost = node.wait_line(f"lost {pause_at}")
        assert not node.has(f"acked {pause_at}")
        tb.start()  # same ports
        node.wait_exit(30)
        wait_for(lambda: {m.payload for m in sub.messages()} >= {payload(i) for i in range(count)}, 20,
                 "every message at the subscriber after the restart")
    out = node.texts()
    acked = [t for t in out if t.startswith("acked")]
    assert acked == [f"acked {i}" for i in range(count)]  # each reported once, in order
    assert out.index(f"written {pause_at}") < out.index(f"lost {pause_at}") < out.index(f"acked {pause_at}")
    assert [t for t in out if t.startswith("lost")] == [f"lost {pause_at}"]
    drops = node.events("mqtt_connection_lost")
    assert len(drops) == 1 and drops[0]["inflight_lost"] == "1", node.output()
    assert "ECONNRESET" in drops[0]["reason"] or "closed by peer" in drops[0]["reason"], drops[0]["reason"]
    connected = node.events("mqtt_connected")
    assert [e["n"] for e in connected] == ["1", "2"]
    assert connected[1].at > lost.at
    assert "stats 2 1" in out, node.output()
    # Nothing but what was sent arrived (duplicates of acknowledged messages are allowed by QoS 1).
    assert {m.payload for m in sub.messages()} == {payload(i) for i in range(count)}


def test_last_will_on_sigkill_not_after_disconnect(tmp_path: Path) -> None:
    clean_topic, kill_topic = "uet/will/clean/status", "uet/will/kill/status"
    will = b'{"state":"offline"}\x00\xff'
    with tls_broker(tmp_path / "b") as tb, subscriber(tb.broker.port, "uet/will/#") as sub, nodes() as started:
        clean = Node(tmp_path, "clean", WILL_SCRIPT, {
            **base_cfg(tb, "will-clean"), "topic": "uet/will/clean/data", "will_topic": clean_topic,
            "will_hex": will.hex(), "clean": True})
        started.append(clean)
        clean.wait_exit()
        assert clean.texts()[-2:] == ["up", "bye"], clean.output()
        # The broker has handled that DISCONNECT (it would publish a will right then)...
        wait_for(lambda: "Client will-clean disconnected." in tb.log_text(), 10, "the clean disconnect")
        killed = Node(tmp_path, "killed", WILL_SCRIPT, {
            **base_cfg(tb, "will-kill"), "topic": "uet/will/kill/data", "will_topic": kill_topic,
            "will_hex": will.hex(), "clean": False})
        started.append(killed)
        killed.wait_line("up")
        killed.kill()  # SIGKILL: the kernel closes the socket, no DISCONNECT was sent
        # ...so had it published one, it would have arrived before this will.
        wait_for(lambda: bool(sub.messages(kill_topic)), 10, "the will of the killed node")
        assert "Client will-kill closed its connection." in tb.log_text()
        got = sub.messages(kill_topic)
        assert [(m.payload, m.qos) for m in got] == [(will, 1)]
        assert sub.messages(clean_topic) == []
        # Retained as asked: a subscriber that comes later still gets it.
        with subscriber(tb.broker.port, kill_topic) as late:
            wait_for(lambda: bool(late.messages()), 10, "the retained will")
            assert [(m.payload, m.retain) for m in late.messages()] == [(will, True)]
    assert sorted(sub.payloads()) == sorted([b"alive", b"alive", will])


def test_keepalive_detects_a_frozen_broker_within_one_and_a_half_keepalives(tmp_path: Path) -> None:
    keepalive = 2
    # log_type all: the broker logs every PINGREQ/PINGRESP, so the test sees the idle link kept up.
    with tls_broker(tmp_path / "b", extra_conf="log_type all\n") as tb, nodes() as started:
        go = tmp_path / "go"
        node = Node(tmp_path, "ka", KEEPALIVE_SCRIPT, {
            **base_cfg(tb, "ka-node"), "topic": "uet/ka/node", "keepalive": keepalive, "go": str(go),
            "done": str(tmp_path / "done")})
        started.append(node)
        node.wait_line("up")
        # Idle: the node pings and the broker answers; nobody declares the link dead.
        wait_for(lambda: tb.log_text().count("Sending PINGRESP to ka-node") >= 2, 10, "two answered pings")
        assert not node.events("mqtt_connection_lost"), node.output()
        go.touch()
        node.wait_line("acked 2 1")
        assert tb.broker.proc is not None
        pid = tb.broker.proc.pid
        frozen_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: bool(node.events("mqtt_connection_lost")), 10, "the node to notice")
        finally:
            os.kill(pid, signal.SIGCONT)
        node.wait_line("stats 2 1")  # reconnected to the thawed broker, three more acknowledged
        # The dead link's socket was closed, not just forgotten: one socket, the new link's.
        # (asyncio's Stream.close() does nothing on this port; a leak per drop showed up here.)
        sockets = sockets_of(node.proc.pid)
        (tmp_path / "done").touch()
        node.wait_exit(30)
        assert sockets == 1, sockets
    lost = node.events("mqtt_connection_lost")
    assert len(lost) == 1, node.output()
    e = lost[0]
    assert e["reason"].startswith("no PINGRESP"), e["reason"]
    noticed_after = e.at - frozen_at
    # The client's deadline is one keepalive after the broker last spoke; the margin up to two is
    # for a loaded CI machine scheduling the node late (a client without this check never notices).
    assert noticed_after <= 2 * keepalive, f"noticed {noticed_after:.2f}s after SIGSTOP"
    assert int(e["silent_ms"]) <= 2000 * keepalive  # the node's own clock agrees
    assert e["inflight_lost"] == "1"  # the publish waiting for its PUBACK was failed, not kept
    out = node.texts()
    assert sum(t.startswith("lost") for t in out) == 1
    assert [c["n"] for c in node.events("mqtt_connected")] == ["1", "2"]
    assert "stats 2 1" in out, node.output()
