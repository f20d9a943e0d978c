# The node agent: poll the sensors, keep every record in the flash log, seal batches and send
# them; the log advances only on the broker's PUBACK.
#
#   poll task:   every device on its interval -> telemetry record (+ alarm transitions,
#                device offline/online events) -> FlashLog.append (flushed) -> wake uplink
#   uplink task: connect (TLS, client certificate), announce the certificate chain (retained
#                `cert`) and `status` online; then, highest priority first, peek a batch from
#                the log, build the CBOR payload, seal it (sign + encrypt to the IOC), publish
#                QoS 1, and ack those seqs in the log once the PUBACK is in.
#
# A reset at any moment loses nothing the log accepted: what was sent but not acknowledged
# is sent again (the IOC drops the duplicate by (src, seq)).
#
# Memory: one batch at a time. Records are decoded from the log as the payload encoder
# iterates them (twice), never all at once; the sealed message is the largest buffer.

import asyncio
import binascii
import gc
import hashlib
import json
import os
import sys
import time

from ue import cose, hal, mqtt, records, sensors
from ue.flashlog import FlashLog
from ue.identity import Identity, IdentityError

VERSION = "0.3.0"

ALARM, EVENT, TELEMETRY = 0, 1, 2
# A channel (topic) besides the three priorities: security events keep EVENT priority but go
# to their own topic, which a SOC watches alone (docs/wire-format.md, as the gateway does).
SECURITY = 3
SECURITY_REPEAT_MS = 3600000  # the same security condition is reported once an hour
# The reason texts of ue/mqtt.py's failed connects that a SOC must see, in the gateway's words.
_TLS_REASONS = (("TLS handshake: broker certificate rejected", "broker_certificate_rejected"),
                ("TLS handshake refused by the broker", "tls_handshake_failed"))
_CHANNELS = ("alarm", "event", "telemetry", "security")


class ConfigError(ValueError):
    """node.json is missing a field or has a wrong one: str(e) names the file, field, problem."""


def wall_ms():
    # Unix milliseconds. The ESP32's epoch is 2000-01-01 and its float is binary32: use
    # integer nanoseconds where the port has them.
    if hasattr(time, "time_ns"):
        t = time.time_ns() // 1000000
    else:
        t = int(time.time()) * 1000
    if time.gmtime(0)[0] == 2000:
        t += 946684800000
    return t


def _log_line(line):
    print(line)


def _q(text):
    return '"' + str(text).replace('"', "'") + '"'


# --- SBOM ---------------------------------------------------------------------------------

def tls_reason(text):
    # The security reason of a failed connect's reason text (ue/mqtt.py), or None.
    for prefix, code in _TLS_REASONS:
        if text.startswith(prefix):
            return code
    return None


class RateLimit:
    # At most one report per key every every_ms (ticks_ms: fine for periods of hours).
    def __init__(self, every_ms):
        self.every_ms = every_ms
        self._last = {}

    def allow(self, key, now_ms):
        last = self._last.get(key)
        if last is not None and time.ticks_diff(now_ms, last) < self.every_ms:
            return False
        self._last[key] = now_ms
        return True


def _is_security(data):
    body = records.unpack(data)[2]
    return isinstance(body, dict) and body.get("event") == "security"


def _channel_run(peeked):
    # (channel, the leading records of peeked that share it): one sealed message goes to one
    # topic. The rest wait for the next batch, so seq order within EVENT is kept.
    sec = _is_security(peeked[0][2])
    n = 1
    while n < len(peeked) and _is_security(peeked[n][2]) == sec:
        n += 1
    return (SECURITY if sec else EVENT), peeked[:n]


def sbom_body(release):
    # The node's SBOM event (docs: "a node sends"): MicroPython version, release, and the
    # SHA-256 of every file of the ue package that actually runs (read from where it was
    # imported, so a mixed or tampered slot shows). Frozen/ROMFS code has no files: {}.
    import ue

    files: "dict[str, str]" = {}
    f = getattr(ue, "__file__", None)
    d = f[:f.rfind("/")] if f and "/" in f else ("." if f else None)
    if d is not None:
        buf = bytearray(1024)
        mv = memoryview(buf)
        for name in sorted(os.listdir(d)):
            if name.endswith(".py") or name.endswith(".mpy"):
                h = hashlib.sha256()
                with open(d + "/" + name, "rb") as fh:
                    while True:
                        n = fh.readinto(buf)
                        if not n:
                            break
                        h.update(mv[:n])
                files["ue/" + name] = binascii.hexlify(h.digest()).decode()
    return {"event": "sbom", "mp": ".".join(str(x) for x in sys.implementation.version[:3]),
            "release": release or "", "files": files}


# --- configuration --------------------------------------------------------------------------

def _field(cfg, path, key, kind, default=None, required=False):
    if key not in cfg:
        if required:
            raise ConfigError("%s: missing field %s" % (path[0], path[1] + key))
        return default
    v = cfg[key]
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise ConfigError("%s: field %s: expected %s, got %r"
                          % (path[0], path[1] + key, getattr(kind, "__name__", "value"), v))
    return v


def load_config(path):
    """node.json, checked; ConfigError names the field."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError:
        raise ConfigError("%s: cannot read the file (provision the node first)" % path)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON: %s" % (path, e))
    if not isinstance(cfg, dict):
        raise ConfigError("%s: expected a JSON object" % path)
    top = (path, "")
    node_id = _field(cfg, top, "node_id", str, required=True)
    site = _field(cfg, top, "site", str, required=True)
    for name, v in (("node_id", node_id), ("site", site)):
        if not v or len(v) > 64 or "/" in v or "+" in v or "#" in v:
            raise ConfigError("%s: field %s: 1..64 characters without / + #" % (path, name))
    broker = _field(cfg, top, "broker", dict, required=True)
    bp = (path, "broker.")
    _field(broker, bp, "host", str, required=True)
    port = _field(broker, bp, "port", int, 8883)
    if not 0 < port < 65536:
        raise ConfigError("%s: field broker.port: %d is not a TCP port" % (path, port))
    _field(broker, bp, "ca", str, "broker-ca.der")
    ka = _field(broker, bp, "keepalive", int, 60)
    if not 0 < ka <= 65535:
        raise ConfigError("%s: field broker.keepalive: 1..65535 s" % path)
    _field(broker, bp, "server_hostname", str)
    _field(broker, bp, "backoff_min_ms", int, 1000)
    _field(broker, bp, "backoff_max_ms", int, 60000)
    _field(cfg, top, "topic_prefix", str, "urbanedge/v1")
    bus = _field(cfg, top, "bus", dict, required=True)
    busp = (path, "bus.")
    if not isinstance(bus.get("port"), (str, int)) or isinstance(bus.get("port"), bool):
        raise ConfigError("%s: field bus.port: a UART number (ESP32) or a device path" % path)
    _field(bus, busp, "baudrate", int, 9600)
    _field(bus, busp, "timeout_ms", int, 300)
    devices = _field(cfg, top, "devices", list, required=True)
    if not devices:
        raise ConfigError("%s: field devices: at least one device" % path)
    seen = set()
    for i, dev in enumerate(devices):
        dp = (path, "devices[%d]." % i)
        if not isinstance(dev, dict):
            raise ConfigError("%s: field devices[%d]: expected an object" % (path, i))
        did = _field(dev, dp, "id", str, required=True)
        if did in seen:
            raise ConfigError("%s: field devices[%d].id: %r appears twice" % (path, i, did))
        seen.add(did)
        prof = _field(dev, dp, "profile", str, required=True)
        try:
            sensors.profile(prof)
        except KeyError:
            raise ConfigError("%s: field devices[%d].profile: unknown profile %r" % (path, i, prof))
        unit = _field(dev, dp, "unit", int, 1)
        if not 0 < unit < 248:
            raise ConfigError("%s: field devices[%d].unit: 1..247" % (path, i))
        if _field(dev, dp, "interval_s", (int, float), 60) <= 0:
            raise ConfigError("%s: field devices[%d].interval_s: must be > 0" % (path, i))
    batch = _field(cfg, top, "batch", dict, {})
    bt = (path, "batch.")
    if not 0 < _field(batch, bt, "max_records", int, 15) <= 200:
        raise ConfigError("%s: field batch.max_records: 1..200" % path)
    if _field(batch, bt, "max_wait_s", (int, float), 60) < 0:
        raise ConfigError("%s: field batch.max_wait_s: must be >= 0" % path)
    lg = _field(cfg, top, "log", dict, {})
    lp = (path, "log.")
    if _field(lg, lp, "seg_size", int, 16384) < 1024:
        raise ConfigError("%s: field log.seg_size: at least 1024" % path)
    if _field(lg, lp, "n_segs", int, 8) < 2:
        raise ConfigError("%s: field log.n_segs: at least 2" % path)
    _field(cfg, top, "wifi", dict, {})
    _field(cfg, top, "hw", str, "esp32")
    upd = _field(cfg, top, "ota", dict)
    if upd is not None:
        op = (path, "ota.")
        url = _field(upd, op, "url", str, required=True)
        if not url.startswith("http://"):
            raise ConfigError("%s: field ota.url: an http:// URL (files are checked against the signed manifest)" % path)
        keys = _field(upd, op, "keys", list, required=True)
        if not keys:
            raise ConfigError("%s: field ota.keys: at least one node-release public key" % path)
        for i, k in enumerate(keys):
            if not (isinstance(k, str) and len(k) == 130 and k[:2] == "04"):
                raise ConfigError("%s: field ota.keys[%d]: hex of a 65-byte SEC1 uncompressed P-256 key" % (path, i))
            try:
                int(k, 16)
            except ValueError:
                raise ConfigError("%s: field ota.keys[%d]: not hex" % (path, i))
        for name in ("check_s", "trial_s"):
            if _field(upd, op, name, (int, float), 1) <= 0:
                raise ConfigError("%s: field ota.%s: must be > 0" % (path, name))
    return cfg


class Node:
    # slot: the app slot the loader runs ("factory", "a", "b"; ue/ota.py).
    def __init__(self, cfg, storage, log=_log_line, slot="factory"):
        self.cfg = cfg
        self.log = log
        self.src = cfg["node_id"]
        self.identity = Identity(hal.ensure_dir(storage + "/id"))
        lg = cfg.get("log", {})
        self.flog = FlashLog(storage + "/log", seg_size=lg.get("seg_size", 16384),
                             n_segs=lg.get("n_segs", 8), keep_prio=ALARM)
        prefix = "%s/%s/%s/" % (cfg.get("topic_prefix", "urbanedge/v1"), cfg["site"], self.src)
        self.topics = [prefix + ch for ch in _CHANNELS]
        self.topic_cert = prefix + "cert"
        self.topic_status = prefix + "status"
        b = cfg.get("batch", {})
        self.batch_max = b.get("max_records", 15)
        self.max_wait_ms = int(b.get("max_wait_s", 60) * 1000)
        self.wdt = hal.Watchdog(120000)
        self.wake = asyncio.Event()
        self.eph = cose.EphemeralCache()
        self.devices = []
        for dev in cfg["devices"]:
            prof = sensors.profile(dev["profile"])
            self.devices.append({"id": dev["id"], "unit": dev.get("unit", 1), "prof": prof,
                                 "kind": prof[0], "interval_ms": int(dev.get("interval_s", 60) * 1000),
                                 "alarms": {}, "online": None})
        bus = cfg["bus"]
        direction = hal.direction_pin(bus["de_pin"]) if "de_pin" in bus else None
        self.uart = hal.Uart(bus["port"], baudrate=bus.get("baudrate", 9600), parity=bus.get("parity"),
                             stop=bus.get("stop", 1), tx=bus.get("tx"), rx=bus.get("rx"), direction=direction)
        self.master = sensors.modbus.ModbusMaster(self.uart, baudrate=bus.get("baudrate", 9600),
                                                  timeout_ms=bus.get("timeout_ms", 300))
        self.client = self._client()
        self.sent_batches = 0
        self.poll_failures = 0
        self.uplink_errors = 0
        self.sent_records = 0
        self.good_polls = 0
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._crash = None
        self.ota = None
        if "ota" in cfg:
            # Loaded only where configured: the updater's code is heap on the unix port.
            from ue import ota

            self.ota = ota.Updater(cfg["ota"], self.src, cfg.get("hw", "esp32"), storage, slot,
                                   self._event, self.log, VERSION)
        self._announced_on = 0
        self._security_limit = RateLimit(SECURITY_REPEAT_MS)
        self._seen_failures = 0
        self._reported_drops = self.flog.dropped
        self._first_pending_ms = None

    def _client(self):
        br = self.cfg["broker"]
        ident = self.identity
        ca_path = ident.dir + "/" + br.get("ca", "broker-ca.der")
        try:
            with open(ca_path, "rb") as f:
                ca = f.read()
            tls = mqtt.tls_context(ca, ident.cert_path, ident.key_path)
        except (OSError, ValueError) as e:
            raise IdentityError("broker CA %s or the node's certificate/key unusable for TLS: %s"
                                % (ca_path, mqtt.describe(e)))
        offline = json.dumps({"state": "offline", "source": self.src, "reason": "lost"}).encode()
        return mqtt.MQTTClient(
            self.src, br["host"], br.get("port", 8883), tls=tls,
            server_hostname=br.get("server_hostname"), keepalive=br.get("keepalive", 60),
            will=(self.topic_status, offline, True), backoff_min_ms=br.get("backoff_min_ms", 1000),
            backoff_max_ms=br.get("backoff_max_ms", 60000),
            tx_size=2048, log=self.log)

    def _check_connect_failures(self):
        # A failed connect since the last look whose reason is a TLS refusal: a security event.
        # (Looked at from the uplink loop, not hooked into ue/mqtt.py: the client's code is heap
        # on the unix port, where its tests run at the limit.)
        c = self.client
        if c.connect_failures == self._seen_failures:
            return
        self._seen_failures = c.connect_failures
        code = tls_reason(c.last_error or "")
        if code is not None:
            try:
                self.security("certificate", code, c.last_error)
            except Exception as e:  # a full flash must not stop the uplink
                self.log("event=security_event_failed reason=%s" % _q(repr(e)))

    def security(self, category, reason, detail):
        # A security event (EVENT priority, "security" channel); once per SECURITY_REPEAT_MS
        # per category and reason, so a broker refusing every reconnect is one report an hour.
        if not self._security_limit.allow(category + ":" + reason, time.ticks_ms()):
            return
        self.log("event=security_event category=%s reason=%s" % (category, reason))
        self._event({"event": "security", "category": category, "reason": reason, "detail": detail[:300]})

    # -- recording -----------------------------------------------------------------------

    def _event(self, body):
        self.record(EVENT, self.src, body)

    def record(self, prio, device_id, body, ts_ms=None):
        if ts_ms is None:
            ts_ms = wall_ms()
        seq = self.flog.append(prio, records.pack(device_id, ts_ms, body))
        if self._first_pending_ms is None:
            self._first_pending_ms = time.ticks_ms()
        if self.flog.dropped != self._reported_drops:
            # The ring was full: say how much went, so the IOC can tell a gap from a loss.
            total = self.flog.dropped
            self.log("event=node_log_dropped dropped=%d total=%d" % (total - self._reported_drops, total))
            body = {"event": "outbox_eviction", "evicted": total - self._reported_drops, "evicted_total": total}
            self._reported_drops = total
            self.flog.append(EVENT, records.pack(self.src, ts_ms, body))
        self.wake.set()
        return seq

    def poll_device(self, dev):
        # Exact decimals on the wire (the ESP32's float is binary32), plain numbers for alarms.
        values, quality, bad = sensors.read_device(self.master, dev["unit"], dev["prof"], True)
        now = wall_ms()
        body = {"kind": dev["kind"], "quality": quality, "values": values}
        if bad:
            body["q"] = bad
        if quality != "error":
            self.good_polls += 1
        if quality == "error" and not values:
            reason = sensors.error_reason(self.master) or "error"
            body["error"] = reason
            if dev["online"] is not False:
                dev["online"] = False
                self.log("event=device_offline device=%s reason=%s" % (dev["id"], reason))
                self.record(EVENT, dev["id"], {"event": "device_offline", "kind": dev["kind"],
                                               "reason": reason}, now)
        elif dev["online"] is not True:
            if dev["online"] is False:
                self.log("event=device_online device=%s" % dev["id"])
                self.record(EVENT, dev["id"], {"event": "device_online", "kind": dev["kind"]}, now)
            dev["online"] = True
        self.record(TELEMETRY, dev["id"], body, now)
        numbers = {k: sensors.as_number(v) for k, v in values.items()}
        for name, state, severity, point, value, threshold in sensors.check_alarms(dev["prof"], numbers, dev["alarms"]):
            value = values[point]  # the exact form goes on the wire
            self.log("event=alarm device=%s alarm=%s state=%s value=%r" % (dev["id"], name, state, value))
            self.record(ALARM, dev["id"], {"kind": dev["kind"], "alarm": name, "state": state,
                                           "severity": severity, "point": point, "value": value,
                                           "threshold": threshold}, now)

    async def poll_loop(self):
        due = [time.ticks_ms()] * len(self.devices)
        while True:
            self.wdt.feed()
            now = time.ticks_ms()
            wait = 60000
            for i, dev in enumerate(self.devices):
                left = time.ticks_diff(due[i], now)
                if left <= 0:
                    # The Modbus exchange blocks (at most the master's timeout x retries); the
                    # uplink's keepalive is far longer.
                    try:
                        self.poll_device(dev)
                    except Exception as e:  # a full flash, a UART gone: report, keep polling
                        self.poll_failures += 1
                        self.log("event=poll_failed device=%s reason=%s" % (dev["id"], _q(repr(e))))
                    due[i] = time.ticks_add(due[i], dev["interval_ms"])
                    if time.ticks_diff(due[i], time.ticks_ms()) < 0:
                        due[i] = time.ticks_add(time.ticks_ms(), dev["interval_ms"])  # overran: no burst
                    left = time.ticks_diff(due[i], time.ticks_ms())
                if left < wait:
                    wait = left
            await asyncio.sleep_ms(max(wait, 0))

    # -- sending ---------------------------------------------------------------------------

    def _ready(self):
        # (prio, peeked) of the batch to send now, or None. Alarms and events go at once;
        # telemetry once a full batch waits or the oldest has waited max_wait.
        fl = self.flog
        if fl.pending(ALARM):
            return ALARM, fl.peek(self.batch_max, ALARM)
        if fl.pending(EVENT):
            return _channel_run(fl.peek(self.batch_max, EVENT))
        n = fl.pending(TELEMETRY)
        if not n:
            self._first_pending_ms = None
            return None
        first = self._first_pending_ms
        old = first is not None and time.ticks_diff(time.ticks_ms(), first) >= self.max_wait_ms
        if n >= self.batch_max or old or self.max_wait_ms == 0:
            return TELEMETRY, fl.peek(self.batch_max, TELEMETRY)
        return None

    async def _announce(self):
        ident = self.identity
        ann = cose.announcement(self.src, wall_ms(), ident.d, ident.chain, ident.x5t)
        await self.client.publish(self.topic_cert, ann, retain=True)
        ann = None
        status = json.dumps({"state": "online", "source": self.src, "version": VERSION,
                             "ts": wall_ms() // 1000}).encode()
        await self.client.publish(self.topic_status, status, retain=True)
        self.log("event=node_announced src=%s" % self.src)

    async def send_one(self, ch, peeked):
        # ch: a priority, or SECURITY (EVENT records for the security topic)
        ident = self.identity
        payload = cose.batch_payload(self.src, wall_ms(), records.Batch(peeked))
        sealed = cose.seal(payload, ident.d, ident.x5t, ident.recipient_xy, ident.recipient_kid, self.eph)
        payload = None
        await self.client.publish(self.topics[ch], sealed)
        sealed = None
        seqs = [r[0] for r in peeked]
        self.flog.ack(seqs)
        self.sent_batches += 1
        self.sent_records += len(seqs)
        self.log("event=batch_acked channel=%s records=%d first_seq=%d pending=%d"
                 % (_CHANNELS[ch], len(seqs), seqs[0], self.flog.pending()))
        if self.flog.pending() == 0:
            self._first_pending_ms = None
        elif ch == TELEMETRY:
            self._first_pending_ms = time.ticks_ms()

    async def uplink_loop(self):
        client = self.client
        client.start()
        while True:
            self.wdt.feed()
            up = await client.wait_connected(30000)
            self._check_connect_failures()
            if not up:
                continue
            try:
                if self._announced_on != client.connects:
                    await self._announce()
                    self._announced_on = client.connects
                batch = self._ready()
                if batch is None:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for_ms(self.wake.wait(), 1000)
                    except asyncio.TimeoutError:
                        pass
                    continue
                await self.send_one(*batch)
                batch = None
                gc.collect()
            except mqtt.ConnectionLost:
                # Not acknowledged: the records stay in the log and go again on the next link.
                self.log("event=batch_unacked reason=connection_lost pending=%d" % self.flog.pending())
            except MemoryError:
                # A fragmented heap cannot take this batch: smaller ones from now on.
                batch = None
                gc.collect()
                self.batch_max = max(1, self.batch_max // 2)
                self.log("event=batch_too_big action=shrink max_records=%d" % self.batch_max)
            except Exception as e:  # a bug or a broken record must not stop the node: report, go on
                self.uplink_errors += 1
                self.log("event=uplink_error reason=%s" % _q(repr(e)))
                await asyncio.sleep_ms(1000)

    # -- OTA hooks -------------------------------------------------------------------------

    def self_test(self):
        # None once this run proved itself (the commit condition of an OTA trial), else what
        # is still missing.
        if not self.client.connects:
            return "no MQTT connection"
        if not self.good_polls:
            return "no sensor polled successfully"
        if not self.sent_batches:
            return "no sealed batch acknowledged"
        return None

    def request_reset(self, code=75):  # ue/ota.py RESET
        self.exit_code = code
        self._stop.set()

    async def _guard(self, coro):
        try:
            await coro
        except Exception as e:  # the uplink's crash ends the run, as it always did
            self._crash = e
            self._stop.set()

    async def run(self):
        """Returns 0, or 75 (ue/ota.py RESET) when an update (or a failed trial) wants a reset."""
        # The start is on flash before it is announced on the console.
        self.record(EVENT, self.src, {"event": "agent_started", "version": VERSION})
        self.log("event=node_started src=%s version=%s pending=%d dropped=%d"
                 % (self.src, VERSION, self.flog.pending(), self.flog.dropped))
        if self.ota is None:
            # With OTA the updater sends it (with the release it knows); here: the factory's.
            try:
                self._event(sbom_body(VERSION))
            except (OSError, MemoryError, ValueError) as e:  # (ValueError: too big for the log) a report must not stop the node
                self.log("event=sbom_failed reason=%s" % _q(repr(e)))
            gc.collect()
        tasks = [asyncio.create_task(self.poll_loop()), asyncio.create_task(self._guard(self.uplink_loop()))]
        if self.ota is not None:
            tasks.append(asyncio.create_task(self.ota.run(self.self_test, self.request_reset,
                                                          lambda: wall_ms() // 1000)))
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            self.flog.close()
        if self._crash is not None:
            raise self._crash
        return self.exit_code
