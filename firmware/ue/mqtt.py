# The node's uplink: a small MQTT 3.1.1 client on asyncio streams, over TLS with the node's
# client certificate (MicroPython's ssl is mbedTLS).
#
# Contract with the caller (the flash log drives it):
# - `await publish(topic, payload)` sends QoS 1 and returns only once the broker's PUBACK for
#   that packet id arrived: that is the moment the log may advance its ack pointer.
# - If the link drops before the PUBACK, the call raises ConnectionLost. The client keeps no
#   copy to resend: the log is the source of truth and the caller publishes the record again
#   (as a new packet) once the link is back. Duplicates at the receiver are possible, loss is not.
# - A publish issued while offline waits for the link (wrap it in a timeout if that matters).
#
# Liveness: a supervisor task owns the connection. It connects (TCP, TLS, CONNECT/CONNACK under
# one timeout), then runs a reader and a keepalive task. Keepalive pings when nothing was sent
# or received for keepalive/2 and declares the link dead when a ping goes unanswered for another
# keepalive/2, so a silent broker is noticed one keepalive after it last spoke (the broker itself
# allows 1.5 x keepalive): a frozen broker or a silently dead path is detected even while the
# caller keeps publishing (publishing alone proves nothing, only what comes back does). After a
# drop it reconnects with jittered exponential backoff; the backoff only resets once a connection
# has stayed up longer than backoff_max, so a broker that accepts and then kicks us is not hammered.
#
# Memory: packet headers are built in one reusable buffer; the payload is written straight from
# the caller's buffer to the socket (never copied into a packet, nor into asyncio's Stream
# buffer: see _send_all); incoming packets are read into a fixed buffer; in-flight slots are
# preallocated (bounded window, no per-publish Event).

import asyncio
import os
import struct
from time import ticks_diff, ticks_ms

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class MQTTError(Exception):
    pass


class ConnectionLost(MQTTError):
    """The link dropped before this publish was acknowledged: resend it from the log."""


class ConnectFailed(MQTTError):
    """One connection attempt failed; str(e) says why."""


class Closed(MQTTError):
    """The client was shut down (disconnect()); nothing more will be sent."""


_CONNACK_REASONS = (
    "accepted",
    "unacceptable protocol version",
    "client identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)

_ERRNO = {
    32: "EPIPE (peer closed)",
    103: "ECONNABORTED",
    104: "ECONNRESET (peer reset)",
    110: "ETIMEDOUT",
    111: "ECONNREFUSED (nothing listening)",
    113: "EHOSTUNREACH",
}

# Slot states of the in-flight window.
_FREE = 0
_WAITING = 1  # reserved; PUBLISH sent or being sent, no PUBACK yet
_ACKED = 2
_LOST = 3


def describe(exc):
    """A one-line reason for a failed connect/read/write (mbedTLS and errno codes named)."""
    if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        if code < 0:
            # The port's ssl passes mbedTLS's own name along when it was built with it.
            name = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else "tls error"
            return "%s -0x%04x" % (_one_line(name), -code)
        return _ERRNO.get(code, "errno %d" % code)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "connection closed by peer"
    msg = _one_line(str(exc))
    return "%s: %s" % (type(exc).__name__, msg) if msg else type(exc).__name__


def _one_line(text):
    # mbedTLS certificate errors come as several "\n"-separated lines; a log line must stay one.
    return " ".join(text.split())


def tls_context(ca_der, cert_file=None, key_file=None):
    """A client SSLContext that verifies the broker against ca_der (bytes, DER) and presents
    the node's certificate (cert_file, key_file: DER files, as mbedTLS loads them)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # the stubs' SSLContext lacks it; the port has it
    ctx.load_verify_locations(cadata=ca_der)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _log_print(line):
    print(line)


def _q(text):
    # Quote a free-text log value so the line stays key=value parseable.
    return '"' + _one_line(text).replace('"', "'") + '"'


def _encode_len(buf, pos, n):
    # MQTT "remaining length": 7 bits per byte, high bit = more follows.
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[pos] = b | 0x80
            pos += 1
        else:
            buf[pos] = b
            return pos + 1


def _as_bytes(s):
    return s.encode() if isinstance(s, str) else s


def _send_all(sock, *bufs):
    # Writes bufs to the non-blocking (TLS) socket in order, waiting for room as needed. A plain
    # generator that yields to asyncio's IO queue, as asyncio's own stream code does: awaitable,
    # and it never copies the caller's bytes.
    # Why not Stream.write + drain:
    # - Stream.write copies whatever the socket does not take at once into a new bytes object:
    #   with a full send buffer that is the whole payload, an allocation the heap of a node with
    #   several publishes in flight cannot always make (MemoryError, half a packet sent).
    # - When the socket is full mbedTLS keeps the record it built pending and must be called
    #   again with the same bytes. Stream.write appends the next buffer to the pending one
    #   instead, and mbedTLS's retry then flushes the old record yet reports the longer buffer
    #   as written: the broker reads payload bytes as packets (seen with an ESP32-sized send
    #   buffer: "protocol error", "multiple CONNECT"). Here a retry is always the same bytes.
    for buf in bufs:
        mv = memoryview(buf)
        off = 0
        while off < len(mv):
            n = sock.write(mv[off:])
            if n is None:  # would block
                # The hook MicroPython's own streams use (private: the stubs do not list it).
                yield asyncio.core._io_queue.queue_write(sock)  # type: ignore[attr-defined]
            else:
                off += n


class MQTTClient:
    def __init__(
        self,
        client_id,
        host,
        port=8883,
        *,
        tls=None,  # SSLContext (tls_context()) or None for plain TCP
        server_hostname=None,
        keepalive=60,  # seconds, > 0
        clean_session=True,
        will=None,  # (topic, payload, retain); sent QoS 1
        user=None,
        password=None,
        max_inflight=4,
        backoff_min_ms=1000,
        backoff_max_ms=60000,
        connect_timeout_ms=15000,
        rx_size=128,
        tx_size=2048,
        log=_log_print,  # called with one 'event=... key=value' line
    ):
        if keepalive <= 0 or keepalive > 65535:
            raise ValueError("keepalive must be 1..65535 s")
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.client_id = _as_bytes(client_id)
        self.host = host
        self.port = port
        self._tls = tls
        self._sni = server_hostname or host
        self._ka_ms = keepalive * 1000
        self._keepalive = keepalive
        self._clean = clean_session
        self._will = will
        self._user = user
        self._password = password
        self._bo_min = backoff_min_ms
        self._bo_max = backoff_max_ms
        self._conn_to = connect_timeout_ms
        self._log = log

        n = max_inflight
        self._pids = [0] * n
        self._state = bytearray(n)
        self._slot_free = asyncio.Event()
        self._ack = asyncio.Event()  # pulsed whenever any slot resolves (ACKED or LOST)
        self._next = 0

        # Whole PUBLISH packets up to tx_size are assembled here (header, topic, id, payload).
        self._tx = bytearray(max(tx_size, 16))
        self._txmv = memoryview(self._tx)
        self._rx = bytearray(max(rx_size, 8))
        self._rxmv = memoryview(self._rx)
        self._rp = 0
        self._re = 0
        self._wlock = asyncio.Lock()

        self._r: "Any" = None  # asyncio streams once connected
        self._w: "Any" = None
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._gen = 0  # bumped per connection; a publish remembers the one it was sent on
        self._last_rx = ticks_ms()
        self._last_tx = ticks_ms()
        self._ping_at = None  # ticks of the unanswered PINGREQ, if any
        self._stage = ""  # what a connection attempt is doing, for the failure reason
        self._task = None
        self._closed = False

        self.connects = 0
        self.connect_failures = 0
        self.drops = 0
        self.last_error = None

    # -- public -------------------------------------------------------------------------

    def start(self):
        """Begin connecting in the background (idempotent); the link is kept up from then on."""
        if self._closed:
            raise Closed()
        if self._task is None:
            self._task = asyncio.create_task(self._supervise())

    def isconnected(self):
        return self._w is not None and self._up.is_set()

    def inflight(self):
        return sum(1 for s in self._state if s != _FREE)

    async def wait_connected(self, timeout_ms=None):
        """True once connected; False if timeout_ms passed first."""
        self.start()
        if timeout_ms is None:
            await self._up.wait()
            return True
        try:
            await asyncio.wait_for_ms(self._up.wait(), timeout_ms)
            return True
        except asyncio.TimeoutError:
            return False

    async def publish(self, topic, payload, retain=False):
        """QoS 1 publish; returns when the broker's PUBACK arrived. Raises ConnectionLost if the
        link dropped first (the caller resends from its log) and Closed after disconnect()."""
        self.start()
        topic = _as_bytes(topic)
        if len(topic) + 11 > len(self._tx):
            raise ValueError("topic longer than the packet buffer")
        i = await self._take_slot()
        try:
            while True:
                await self._up.wait()
                if self._closed:
                    raise Closed()
                if self._w is not None:
                    break  # else: dropped between the event and now; wait for the next link
            gen = self._gen
            pid = self._new_pid()
            self._pids[i] = pid
            try:
                await self._send_publish(topic, payload, retain, pid)
            except (OSError, asyncio.TimeoutError) as e:
                self._drop("write failed: " + describe(e), gen)
            except MemoryError:
                # Part of the packet may be out: the stream cannot carry another one.
                self._drop("write failed: out of memory", gen)
                raise
            while self._state[i] == _WAITING:
                await self._ack.wait()
            if self._state[i] != _ACKED:
                raise Closed() if self._closed else ConnectionLost()
        finally:
            self._pids[i] = 0
            self._state[i] = _FREE
            self._slot_free.set()

    async def disconnect(self):
        """Send DISCONNECT (so the broker does not publish the Will) and stop for good."""
        self._closed = True
        w = self._w
        if w is not None:
            try:
                async with self._wlock:
                    await asyncio.wait_for_ms(_send_all(w.s, b"\xe0\x00"), 2000)
            except (OSError, asyncio.TimeoutError):
                pass
        self._drop("disconnect", self._gen)
        self._up.set()  # wake publishers waiting for a link or a slot: they raise Closed
        self._slot_free.set()
        t = self._task
        self._task = None
        if t is not None:
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass

    # -- window -------------------------------------------------------------------------

    async def _take_slot(self):
        while True:
            if self._closed:
                raise Closed()
            st = self._state
            for i in range(len(st)):
                if st[i] == _FREE:
                    st[i] = _WAITING
                    return i
            self._slot_free.clear()
            await self._slot_free.wait()

    def _new_pid(self):
        pids = self._pids
        while True:
            self._next = self._next % 65535 + 1
            if self._next not in pids:
                return self._next

    def _resolve(self, pid, state):
        pids = self._pids
        for i in range(len(pids)):
            if pids[i] == pid and self._state[i] == _WAITING:
                self._state[i] = state
                break
        # Every waiter rechecks its own slot: one Event serves the whole window.
        self._ack.set()
        self._ack.clear()

    # -- connection ---------------------------------------------------------------------

    def _backoff_ms(self, attempt):
        d = self._bo_min << min(attempt, 16)
        if d > self._bo_max:
            d = self._bo_max
        half = d >> 1
        r = int.from_bytes(os.urandom(4), "big")
        return half + r % (half + 1)  # "equal jitter": at least d/2, at most d

    async def _supervise(self):
        attempt = 0
        while not self._closed:
            try:
                await asyncio.wait_for_ms(self._connect(), self._conn_to)
            except asyncio.CancelledError:
                self._close_stream()
                raise
            except Exception as e:  # any failed attempt (OS, TLS, protocol, timeout) is retried
                self._close_stream()
                self.connect_failures += 1
                self.last_error = self._explain(e)
                delay = self._backoff_ms(attempt)
                attempt += 1
                self._log("event=mqtt_connect_failed host=%s port=%d reason=%s retry_ms=%d"
                          % (self.host, self.port, _q(self.last_error), delay))
                await asyncio.sleep_ms(delay)
                continue
            self.connects += 1
            up_at = ticks_ms()
            self._log("event=mqtt_connected host=%s port=%d n=%d" % (self.host, self.port, self.connects))
            self._down.clear()
            gen = self._gen
            reader = asyncio.create_task(self._reader(gen))
            pinger = asyncio.create_task(self._pinger(gen))
            self._up.set()
            try:
                await self._down.wait()
            finally:
                # Also when disconnect() cancels us: neither may outlive the link.
                reader.cancel()
                pinger.cancel()
            if self._closed:
                break
            if ticks_diff(ticks_ms(), up_at) > self._bo_max:
                attempt = 0
            delay = self._backoff_ms(attempt)
            attempt += 1
            self._log("event=mqtt_reconnect_wait retry_ms=%d" % delay)
            await asyncio.sleep_ms(delay)

    def _explain(self, e):
        reason = describe(e)
        if isinstance(e, asyncio.TimeoutError):
            return "%s (%s)" % (reason, self._stage)
        if self._tls is None or self._stage != "TLS handshake":
            return reason
        if isinstance(e, ValueError):
            # mbedTLS's verdict on the broker's certificate (not signed by our CA, expired, ...).
            return "TLS handshake: broker certificate rejected: " + reason
        code = e.args[0] if isinstance(e, OSError) and e.args else None
        if isinstance(e, EOFError) or code in (32, 104) or (isinstance(code, int) and code < 0):
            # With TLS 1.2 the broker checks our certificate before its Finished, so our first
            # write (which drives the handshake) fails; mbedTLS sees an alert or a closed socket.
            # (A refused TCP connect also fails that first write, but as ECONNREFUSED: no hint.)
            return ("TLS handshake refused by the broker (client certificate missing, expired or "
                    "not issued by its CA?): " + reason)
        return reason

    async def _connect(self):
        self._gen += 1
        self._stage = "TCP connect"
        if self._tls is not None:
            r, w = await asyncio.open_connection(self.host, self.port, ssl=self._tls,
                                                 server_hostname=self._sni)
        else:
            r, w = await asyncio.open_connection(self.host, self.port)
        self._r, self._w = r, w
        self._ping_at = None
        # The handshake is not done by open_connection: the first write drives it, and that
        # write (the CONNECT) only completes once the broker has accepted our certificate.
        self._stage = "TLS handshake" if self._tls is not None else "CONNECT"
        await self._send_connect(w)
        self._stage = "waiting for CONNACK"
        self._rp = self._re = 0
        kind, n = await self._read_header(r)
        if kind != 0x20 or n != 2:
            raise ConnectFailed("expected CONNACK, got packet type 0x%02x" % kind)
        await self._need(r, 2)
        code = self._rx[self._rp + 1]
        self._rp += 2
        if code:
            reason = _CONNACK_REASONS[code] if code < len(_CONNACK_REASONS) else "code %d" % code
            raise ConnectFailed("CONNACK refused: " + reason)
        self._last_rx = self._last_tx = ticks_ms()

    def _close_stream(self):
        w = self._w
        self._w = self._r = None
        if w is not None:
            # This asyncio's Stream.close() does nothing (only wait_closed() closes): close the
            # socket itself, or every dropped link would keep its descriptor (and, on the
            # broker, a session) open. Tasks still waiting on it wake with an error.
            try:
                w.s.close()
            except OSError:
                pass

    def _drop(self, reason, gen):
        """The link of generation gen is gone: fail its in-flight publishes, wake the supervisor."""
        if gen != self._gen or self._w is None:
            return  # already handled (or a newer link is up)
        self._close_stream()
        self._up.clear()
        self.drops += 1
        lost = 0
        st = self._state
        for i in range(len(st)):
            if st[i] == _WAITING and self._pids[i]:
                st[i] = _LOST
                lost += 1
        self._ack.set()
        self._ack.clear()
        if not self._closed:
            self.last_error = reason
            self._log("event=mqtt_connection_lost reason=%s inflight_lost=%d silent_ms=%d"
                      % (_q(reason), lost, ticks_diff(ticks_ms(), self._last_rx)))
        self._down.set()

    # -- writing ------------------------------------------------------------------------

    async def _write(self, w, data):
        async with self._wlock:
            if w is not self._w:
                raise OSError(32)  # the link this was meant for is gone
            # A frozen peer lets the socket buffer fill: bound the wait, the pinger decides.
            await asyncio.wait_for_ms(_send_all(w.s, data), self._ka_ms)
        self._last_tx = ticks_ms()

    async def _send_connect(self, w):
        cid = self.client_id
        will = self._will
        user = _as_bytes(self._user) if self._user is not None else None
        pw = _as_bytes(self._password) if self._password is not None else None
        flags = 0x02 if self._clean else 0
        n = 10 + 2 + len(cid)
        if will is not None:
            wt, wp = _as_bytes(will[0]), _as_bytes(will[1])
            flags |= 0x04 | 0x08 | (0x20 if will[2] else 0)  # will, QoS 1, retain
            n += 2 + len(wt) + 2 + len(wp)
        if user is not None:
            flags |= 0x80
            n += 2 + len(user)
        if pw is not None:
            flags |= 0x40
            n += 2 + len(pw)
        # CONNECT happens once per link: building it in one bytearray is fine.
        pkt = bytearray(5 + n)
        pkt[0] = 0x10
        p = _encode_len(pkt, 1, n)
        pkt[p:p + 10] = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", self._keepalive)
        p += 10
        fields = [cid]
        if will is not None:
            fields.append(wt)
            fields.append(wp)
        if user is not None:
            fields.append(user)
        if pw is not None:
            fields.append(pw)
        for f in fields:
            struct.pack_into("!H", pkt, p, len(f))
            pkt[p + 2:p + 2 + len(f)] = f
            p += 2 + len(f)
        await self._write(w, memoryview(pkt)[:p])

    async def _send_publish(self, topic, payload, retain, pid):
        w = self._w
        if w is None:
            raise OSError(32)
        tx = self._tx
        mv = self._txmv
        async with self._wlock:
            if w is not self._w:
                raise OSError(32)  # dropped (and maybe reconnected) while we waited for the lock
            # The shared packet buffer is only touched while holding the write lock.
            tx[0] = 0x32 | (1 if retain else 0)  # PUBLISH, QoS 1
            p = _encode_len(tx, 1, 2 + len(topic) + 2 + len(payload))
            struct.pack_into("!H", tx, p, len(topic))
            p += 2
            tx[p:p + len(topic)] = topic
            p += len(topic)
            struct.pack_into("!H", tx, p, pid)
            p += 2
            if p + len(payload) <= len(tx):
                # One write, one TLS record: a header write followed by a payload write would
                # sit in Nagle's algorithm waiting for the broker's delayed ACK (~40 ms each).
                tx[p:p + len(payload)] = payload
                send = _send_all(w.s, mv[:p + len(payload)])
            else:
                send = _send_all(w.s, mv[:p], payload)
            await asyncio.wait_for_ms(send, self._ka_ms)
        self._last_tx = ticks_ms()

    # -- reading ------------------------------------------------------------------------
    # Reads go through the rx buffer (unread bytes at [_rp, _re)) so one readinto can take
    # several small packets (a burst of PUBACKs) instead of one poll per byte.

    async def _need(self, r, n):
        """Make n unread bytes available at self._rp (n <= len(self._rx))."""
        if self._re - self._rp >= n:
            return
        rx = self._rx
        if self._rp + n > len(rx):
            k = self._re - self._rp
            for j in range(k):  # at most a partial header: a few bytes
                rx[j] = rx[self._rp + j]
            self._rp, self._re = 0, k
        mv = self._rxmv
        sock = r.s
        while self._re - self._rp < n:
            # Non-blocking read first: mbedTLS returns one record per read and keeps the rest
            # (e.g. the next PUBACKs of a burst) in its own buffer, which polling the socket
            # cannot see. Only when it has nothing (None = would block) do we wait on poll.
            k = sock.readinto(mv[self._re:])
            if k is None:
                k = await r.readinto(mv[self._re:])
                if k is None:
                    continue  # TLS record not complete yet
            if k == 0:
                raise EOFError()
            self._re += k

    async def _byte(self, r):
        await self._need(r, 1)
        b = self._rx[self._rp]
        self._rp += 1
        return b

    async def _read_header(self, r):
        kind = await self._byte(r)
        n = 0
        shift = 0
        while True:
            b = await self._byte(r)
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return kind, n
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")

    async def _skip(self, r, n):
        size = len(self._rx)
        while n:
            k = n if n < size else size
            await self._need(r, k)
            self._rp += k
            n -= k

    async def _reader(self, gen):
        r = self._r
        rx = self._rx
        try:
            while True:
                kind, n = await self._read_header(r)
                t = kind >> 4
                if t == 4 and n == 2:  # PUBACK
                    await self._need(r, 2)
                    p = self._rp
                    self._rp += 2
                    self._resolve((rx[p] << 8) | rx[p + 1], _ACKED)
                elif t == 3 and (kind & 0x06) and n <= len(rx):
                    # A QoS>0 PUBLISH to us (we subscribe to nothing yet): ack it, drop it.
                    await self._need(r, n)
                    p = self._rp
                    tl = (rx[p] << 8) | rx[p + 1]
                    puback = b"\x40\x02" + bytes(rx[p + 2 + tl:p + 4 + tl])
                    self._rp += n
                    w = self._w
                    if w is not None:
                        await self._write(w, puback)
                else:  # PINGRESP, or anything we do not use
                    await self._skip(r, n)
                self._last_rx = ticks_ms()
                self._ping_at = None  # anything from the broker proves the link is alive
        except asyncio.CancelledError:
            raise
        except (OSError, EOFError, MQTTError, asyncio.TimeoutError) as e:
            self._drop("read failed: " + describe(e), gen)

    async def _pinger(self, gen):
        half = self._ka_ms >> 1
        try:
            while gen == self._gen and self._w is not None:
                # Sleep exactly until the next deadline (not in fixed steps, which would add up
                # to a step to each of the two waits): a silent broker is declared dead one
                # keepalive after it last spoke, well inside the broker's own 1.5 x keepalive.
                now = ticks_ms()
                if self._ping_at is not None:
                    waited = ticks_diff(now, self._ping_at)
                    if waited >= half:
                        self._drop("no PINGRESP within %d ms (keepalive %d s)" % (waited, self._keepalive), gen)
                        return
                    wait = half - waited
                else:
                    wait = half - max(ticks_diff(now, self._last_rx), ticks_diff(now, self._last_tx))
                    if wait <= 0:
                        self._ping_at = now
                        try:
                            # The write lock may be held by a publish stuck on a full socket.
                            await asyncio.wait_for_ms(self._write(self._w, b"\xc0\x00"), half)
                        except asyncio.TimeoutError:
                            self._drop("no PINGRESP: PINGREQ not written within %d ms" % half, gen)
                            return
                        continue
                await asyncio.sleep_ms(wait)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.TimeoutError) as e:
            self._drop("ping failed: " + describe(e), gen)
