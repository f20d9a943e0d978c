"""The node's Modbus RTU master and sensor decoding (firmware/ue: hal, modbus, sensors),
run under the real ``micropython -X heapsize=100k``.

* Sans-IO: requests and CRCs against pymodbus, response checks (bad CRC, truncated,
  exception, wrong unit/function/byte count, random garbage), register decoding against
  the gateway's ``decode_point`` and line sentences against the gateway's framer.
* Through a socat pty: the node reads the real simulator (``urbanedge sim``) and gets what
  the gateway's own client reads from the same simulator; injected faults are counted,
  retried and reported as quality "error" without crashing the node.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerRTU

from drivers.errors import FrameError
from drivers.modbus.client import ModbusBus
from drivers.modbus.plan import plan_reads
from drivers.modbus.registermap import decode_point
from drivers.profiles import LineFormat, Point, Value, builtin_profiles
from drivers.serial.framing import LineFramer, checksum, parse_values
from tests.support.micropython import micropython_exe, mp_env, run_mp
from tests.support.procs import SimProc
from tests.support.socat import PtyPair, open_pty_pair

ROOT = Path(__file__).resolve().parent.parent.parent


def _crc(frame: bytes) -> bytes:
    return int(FramerRTU.compute_CRC(frame)).to_bytes(2, "big")


def _frame(body: bytes) -> bytes:
    return body + _crc(body)


def _from_node(v: Any) -> Value:
    """Undo the node's float encoding (hex of the IEEE double, exact whatever repr does)."""
    if isinstance(v, dict):
        result: float = struct.unpack(">d", bytes.fromhex(v["f"]))[0]
        return result
    assert isinstance(v, bool | int)
    return v


def _same(a: Value, b: Value) -> bool:
    """Equal in value and type; NaN equals NaN (the gateway flags it, decode still yields it)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


# --- sans-IO ----------------------------------------------------------------------------

SANS_IO_SCRIPT = r"""
import sys, json, struct
from binascii import hexlify, unhexlify
from ue import modbus, sensors
from ue.profiles_table import PROFILES

def enc(v):
    if type(v) is float:
        return {"f": hexlify(struct.pack(">d", v)).decode()}
    return v

req = bytearray(8)
rain = PROFILES["rain-gauge"]
with open(sys.argv[1]) as f:
    for line in f:
        case = json.loads(line)
        kind = case[0]
        if kind == "req":
            try:
                modbus.build_read(req, case[1], case[2], case[3], case[4])
                out = hexlify(req).decode()
            except ValueError:
                out = "ValueError"
        elif kind == "rsp":
            frame = unhexlify(case[1])
            try:
                off = modbus.check_response(frame, len(frame), case[2], case[3], case[4])
                out = ["ok", hexlify(frame[off:len(frame) - 2]).decode()]
            except modbus.ExceptionResponse as e:
                out = ["exception", e.code]
            except modbus.FrameError as e:
                out = ["frame", e.kind]
        elif kind == "len":
            frame = unhexlify(case[1])
            try:
                out = modbus.response_length(frame, len(frame), case[2], case[3], case[4])
            except modbus.FrameError as e:
                out = ["frame", e.kind]
        elif kind == "dec":
            point = tuple(case[1])
            data = unhexlify(case[2])
            out = enc(sensors.decode_point(point, data, case[3]))
        elif kind == "line":
            vals = sensors.parse_sentence(rain, unhexlify(case[1]))
            out = None if vals is None else {k: enc(v) for k, v in vals.items()}
        print(json.dumps(out))
"""


def _gen_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_node_profiles",
                                                  ROOT / "scripts" / "gen_node_profiles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class SansIO:
    cases: list[list[Any]]
    expected: list[Any]
    results: list[Any]


def _request_cases(rng: random.Random) -> Iterator[tuple[list[Any], Any]]:
    for _ in range(40):
        unit, fc = rng.randint(1, 247), rng.randint(1, 4)
        count = rng.randint(1, 2000 if fc <= 2 else 125)
        start = rng.randint(0, 65536 - count)
        body = struct.pack(">BBHH", unit, fc, start, count)
        yield ["req", unit, fc, start, count], _frame(body).hex()
    for bad in ([0, 3, 0, 1], [248, 3, 0, 1], [1, 5, 0, 1], [1, 3, 0, 126], [1, 1, 0, 2001],
                [1, 3, 65535, 2], [1, 4, 0, 0]):
        yield ["req", *bad], "ValueError"


def _response_cases(rng: random.Random) -> Iterator[tuple[list[Any], Any]]:
    regs = [rng.randint(0, 0xFFFF) for _ in range(7)]
    data = b"".join(w.to_bytes(2, "big") for w in regs)
    good = _frame(bytes([1, 4, 14]) + data)
    yield ["rsp", good.hex(), 1, 4, 7], ["ok", data.hex()]
    bits = bytes([0b1011, 0])
    yield ["rsp", _frame(bytes([9, 2, 2]) + bits).hex(), 9, 2, 10], ["ok", bits.hex()]
    bad_crc = good[:-1] + bytes([good[-1] ^ 0x01])
    yield ["rsp", bad_crc.hex(), 1, 4, 7], ["frame", "crc"]
    flipped = bytearray(good)
    flipped[5] ^= 0x40
    yield ["rsp", bytes(flipped).hex(), 1, 4, 7], ["frame", "crc"]
    yield ["rsp", good[:-3].hex(), 1, 4, 7], ["frame", "short"]
    yield ["rsp", (good + b"\x00").hex(), 1, 4, 7], ["frame", "long"]
    yield ["rsp", good.hex(), 2, 4, 7], ["frame", "unit"]
    yield ["rsp", good.hex(), 1, 3, 7], ["frame", "function"]
    yield ["rsp", good.hex(), 1, 4, 6], ["frame", "byte_count"]
    for code in (1, 2, 4, 6, 11):
        yield ["rsp", _frame(bytes([1, 0x84, code])).hex(), 1, 4, 7], ["exception", code]
    exc_bad_crc = _frame(bytes([1, 0x83, 2]))[:-1] + b"\x00"
    yield ["rsp", exc_bad_crc.hex(), 1, 3, 1], ["frame", "crc"]
    # Incremental length from a header: what the receiver waits for.
    yield ["len", "", 1, 4, 7], 5
    yield ["len", "01", 1, 4, 7], 5
    yield ["len", "0184", 1, 4, 7], 5
    yield ["len", "0104", 1, 4, 7], 5
    yield ["len", "01040e", 1, 4, 7], 19
    yield ["len", "010202", 1, 2, 10], 7
    yield ["len", "02", 1, 4, 7], ["frame", "unit"]
    # Random garbage: only a frame whose CRC happens to hold may pass.
    for _ in range(300):
        noise = rng.randbytes(rng.randint(0, 24))
        if rng.random() < 0.3 and len(noise) >= 2:
            noise = bytes([1, 3]) + noise[2:]
        yield ["rsp", noise.hex(), 1, 3, 2], None


def _decode_cases(rng: random.Random) -> Iterator[tuple[list[Any], Any]]:
    gen = _gen_module()
    scales = [(1.0, 0.0), (0.1, 0.0), (0.01, 0.0), (0.001, 0.0), (0.1, -40.0), (2.5, 0.5),
              (0.001, 12.345), (10.0, 0.0), (1.0, -273.15), (0.3333, 0.0)]
    for i in range(400):
        kind: Any = rng.choice(["int16", "uint16", "int32", "uint32", "float32", "bit", "bool"])
        scale, offset = rng.choice(scales)
        words = [rng.randint(0, 0xFFFF) for _ in range(4)]
        if kind == "float32" and rng.random() < 0.5:
            words[1:3] = list(struct.unpack(">HH", struct.pack(">f", rng.uniform(-1e4, 1e4))))
        at = rng.randint(0, 2)
        if kind == "bool":
            point = Point(name=f"p{i}", table="discrete_input", address=at, type="bool")
            bits = [rng.random() < 0.5 for _ in range(24)]
            data = bytes(sum(1 << j for j in range(8) if bits[k * 8 + j]) for k in range(3))
            raw: list[int] | list[bool] = bits[at : at + 1]
            is_bit = True
        else:
            if kind == "bit":
                point = Point(name=f"p{i}", table="input", address=at,
                              type=rng.choice(["bool", "uint16"]), bit=rng.randint(0, 15),
                              scale=scale, offset=offset)
            else:
                point = Point(name=f"p{i}", table="holding", address=at, type=kind,
                              word_order=rng.choice(["big", "little"]), scale=scale,
                              offset=offset)
            data = b"".join(w.to_bytes(2, "big") for w in words)
            raw = words[at : at + point.width]
            is_bit = False
        entry = list(gen.point_entry(point, at))
        yield ["dec", entry, data.hex(), is_bit], decode_point(point, raw)


def _sentence(fields: list[str], name: str = "UERGA") -> bytes:
    body = ",".join([name, *fields]).encode()
    return b"$%s*%02X\r\n" % (body, checksum(body))


def _line_cases(rng: random.Random) -> Iterator[tuple[list[Any], Any]]:
    fmt = builtin_profiles()["rain-gauge"].line
    assert fmt is not None
    lines = [
        _sentence(["12.40", "3.20", "41.5", "3.71", "0"]),
        _sentence(["0.000", "80.000", "20.125", "3.100", "4", "extra"]),
        _sentence(["12.40", "3.20", "41.5", "3.71"]),  # too few fields
        _sentence(["12.40", "x", "41.5", "3.71", "0"]),  # not a number
        _sentence(["12.40", "3.2", "41.5", "3.71", "0.5"]),  # int field with a fraction
        _sentence(["1_0", "3.2", "41.5", "3.71", "0"]),  # digit separators
        _sentence(["12.40", "3.20", "41.5", "3.71", "0"], name="UEXYZ"),
        _sentence(["inf", "3.20", "41.5", "3.71", "0"]),
        _sentence(["12.40", "3.20", "41.5", "3.71", "0"])[:-5] + b"00\r\n",  # bad checksum
        b"$UERGA,1,2,3*\r\n",
        b"garbage\r\n",
    ]
    for _ in range(60):
        fields = [f"{rng.uniform(0, 500):.3f}" for _ in range(4)] + [str(rng.randint(0, 15))]
        lines.append(_sentence(fields))
    for line in lines:
        yield ["line", line.hex()], _gateway_line(fmt, line)


def _gateway_line(fmt: LineFormat, line: bytes) -> dict[str, Value] | None:
    framer = LineFramer()
    framer.receive_data(line)
    sentence = framer.next_sentence()
    if sentence is None:
        return None
    try:
        return parse_values(fmt, sentence)
    except FrameError:
        return None


@pytest.fixture(scope="module")
def sans_io(tmp_path_factory: pytest.TempPathFactory) -> SansIO:
    rng = random.Random(20240604)
    pairs = [*_request_cases(rng), *_response_cases(rng), *_decode_cases(rng), *_line_cases(rng)]
    path = tmp_path_factory.mktemp("sansio") / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c, _ in pairs))
    out = run_mp(SANS_IO_SCRIPT, args=[str(path)], timeout=120)
    results = [json.loads(line) for line in out.splitlines()]
    assert len(results) == len(pairs)
    return SansIO([c for c, _ in pairs], [e for _, e in pairs], results)


def _of(s: SansIO, kind: str) -> list[tuple[list[Any], Any, Any]]:
    return [(c, e, r) for c, e, r in zip(s.cases, s.expected, s.results, strict=True) if c[0] == kind]


def test_requests_match_pymodbus_crc(sans_io: SansIO) -> None:
    for case, expected, got in _of(sans_io, "req"):
        assert got == expected, case


def test_response_checks(sans_io: SansIO) -> None:
    checked = 0
    for case, expected, got in _of(sans_io, "rsp") + _of(sans_io, "len"):
        if expected is None:  # random garbage
            frame = bytes.fromhex(case[1])
            valid = (len(frame) == 9 and frame[:3] == b"\x01\x03\x04"
                     and _crc(frame[:-2]) == frame[-2:])
            assert (got[0] == "ok") == valid, case
            assert got[0] in ("ok", "frame", "exception"), case
            if got[0] == "exception":  # 01 83 code CRC: only with a CRC that holds
                assert len(frame) == 5 and _crc(frame[:3]) == frame[3:], case
            continue
        assert got == expected, case
        checked += 1
    assert checked > 20


def test_decoding_matches_gateway(sans_io: SansIO) -> None:
    cases = _of(sans_io, "dec")
    assert len(cases) == 400
    for case, expected, got in cases:
        assert _same(_from_node(got), expected), (case, expected, got)


def test_line_sentences_match_gateway_framer(sans_io: SansIO) -> None:
    cases = _of(sans_io, "line")
    assert sum(1 for _, e, _ in cases if e is None) >= 8
    for case, expected, got in cases:
        if expected is None:
            assert got is None, bytes.fromhex(case[1])
        else:
            assert got is not None, bytes.fromhex(case[1])
            decoded = {k: _from_node(v) for k, v in got.items()}
            assert decoded.keys() == expected.keys()
            assert all(_same(decoded[k], expected[k]) for k in expected), (decoded, expected)


# --- through a pty, against the real simulator -------------------------------------------

NODE_SCRIPT = r"""
import sys, json, struct
from binascii import hexlify
from ue import hal, modbus, sensors

def enc(v):
    if type(v) is float:
        return {"f": hexlify(struct.pack(">d", v)).decode()}
    return v

uart = hal.Uart(sys.argv[1])
master = modbus.ModbusMaster(uart, timeout_ms=int(sys.argv[2]), retries=2, backoff_ms=10)
state = {}
while True:
    words = sys.stdin.readline().split()
    if not words or words[0] == "quit":
        break
    prof = sensors.profile(words[1])
    if words[0] == "read":
        values, quality, pq = sensors.read_device(master, int(words[2]), prof)
    else:
        values, quality, pq = sensors.read_line(uart, prof, int(words[2]))
    alarms = sensors.check_alarms(prof, values, state)
    print(json.dumps({"values": {k: enc(v) for k, v in values.items()}, "quality": quality,
                      "pq": pq, "reason": sensors.error_reason(master),
                      "counters": master.counters(),
                      "alarms": [[a[0], a[1]] for a in alarms]}))
uart.close()
print(json.dumps({"bye": True}))
"""


class Node:
    """The node's read loop under MicroPython, one command per stdin line."""

    def __init__(self, tmp: Path, port: Path, timeout_ms: int = 500) -> None:
        script = tmp / "node.py"
        script.write_text(NODE_SCRIPT)
        self.proc = subprocess.Popen(
            [str(micropython_exe()), "-X", "heapsize=100k", str(script), str(port),
             str(timeout_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=mp_env(), cwd=tmp,
        )

    def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        if not out:
            assert self.proc.stderr is not None
            raise AssertionError(f"node died: {self.proc.wait(5)} {self.proc.stderr.read()}")
        reply: dict[str, Any] = json.loads(out)
        return reply

    def read(self, profile: str, unit: int = 1) -> dict[str, Any]:
        reply = self.ask(f"read {profile} {unit}")
        reply["values"] = {k: _from_node(v) for k, v in reply["values"].items()}
        return reply

    def quit(self) -> None:
        """Ends the node cleanly: it must still be alive and answering."""
        assert self.ask("quit") == {"bye": True}
        assert self.proc.wait(10) == 0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _control(sim: SimProc, line: str) -> None:
    """Send a control line and wait until the simulator confirms it."""
    sim.control(line)
    assert sim.proc.stdout is not None
    reply = sim.proc.stdout.readline().strip()
    assert reply == f"sim ok {line}", reply


@dataclass
class Bench:
    pty: PtyPair
    sim: SimProc
    tmp: Path


def _bench(tmp: Path, kind: str, *extra: str) -> Iterator[Bench]:
    pty = open_pty_pair(tmp, kind)
    try:
        sim = SimProc.start(kind, "--serial", str(pty.a), "--units", "1", *extra)
    except BaseException:
        pty.close()
        raise
    try:
        yield Bench(pty, sim, tmp)
    finally:
        sim.stop()
        pty.close()


@pytest.fixture
def flood(tmp_path: Path) -> Iterator[Bench]:
    # A tick far longer than the test: every read sees the same register image.
    yield from _bench(tmp_path, "flood-sensor", "--tick", "1000", "--seed", "11")


@pytest.fixture
def meter(tmp_path: Path) -> Iterator[Bench]:
    yield from _bench(tmp_path, "water-meter", "--tick", "1000", "--seed", "12")


def _gateway_read(port: Path, kind: str) -> dict[str, Value]:
    async def go() -> dict[str, Value]:
        bus = ModbusBus.rtu(str(port), baudrate=9600, parity="N", stopbits=1, bytesize=8,
                            timeout=1.0)
        try:
            values, failed = await bus.read_device(1, plan_reads(builtin_profiles()[kind].points))
        finally:
            await bus.close()
        assert failed == {}
        return values

    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["flood-sensor", "water-meter"])
def test_node_reads_what_the_gateway_reads(kind: str, tmp_path: Path) -> None:
    seed = "11" if kind == "flood-sensor" else "12"
    for bench in _bench(tmp_path, kind, "--tick", "1000", "--seed", seed):
        node = Node(tmp_path, bench.pty.b)
        try:
            first, second = node.read(kind), node.read(kind)
            node.quit()
        finally:
            node.kill()
        gateway = _gateway_read(bench.pty.b, kind)
    blocks = len(plan_reads(builtin_profiles()[kind].points))
    assert first["quality"] == "good" and first["pq"] == {}
    assert first["counters"]["ok"] == blocks and first["counters"]["requests"] == blocks
    assert second["counters"]["timeouts"] == second["counters"]["garbage"] == 0
    assert set(gateway) == set(builtin_profiles()[kind].value_names())
    for reading in (first, second):
        assert reading["values"].keys() == gateway.keys()
        for name, value in gateway.items():
            assert _same(reading["values"][name], value), (name, reading["values"][name], value)


def test_faults_are_counted_retried_and_survived(flood: Bench) -> None:
    node = Node(flood.tmp, flood.pty.b)
    try:
        good = node.read("flood-sensor")
        assert good["quality"] == "good"
        base = good["counters"]

        _control(flood.sim, "fault no-response 1.0 1")
        r = node.read("flood-sensor")
        assert (r["quality"], r["values"], r["reason"]) == ("error", {}, "timeout")
        assert r["counters"]["timeouts"] - base["timeouts"] == 3  # first try + 2 retries
        assert r["counters"]["retries"] - base["retries"] == 2

        _control(flood.sim, "fault exception 1.0 1")
        before = r["counters"]
        r = node.read("flood-sensor")
        assert (r["quality"], r["values"], r["reason"]) == ("error", {}, "exception")
        assert r["counters"]["exceptions"] - before["exceptions"] == 1  # an answer: no retry
        assert r["counters"]["retries"] == before["retries"]

        _control(flood.sim, "fault garbage 1.0 1")
        before = r["counters"]
        r = node.read("flood-sensor")
        assert (r["quality"], r["values"], r["reason"]) == ("error", {}, "bad_frame")
        bad = (r["counters"]["garbage"] - before["garbage"]
               + r["counters"]["crc_errors"] - before["crc_errors"])
        assert bad == 3

        _control(flood.sim, "fault bad-crc 1.0 1")
        before = r["counters"]
        r = node.read("flood-sensor")
        assert (r["quality"], r["reason"]) == ("error", "bad_frame")
        assert r["counters"]["crc_errors"] - before["crc_errors"] == 3

        _control(flood.sim, "fault none")
        r = node.read("flood-sensor")
        assert (r["quality"], r["values"], r["reason"]) == ("good", good["values"], None)
        node.quit()
    finally:
        node.kill()


def test_partial_exceptions_mark_only_their_points(meter: Bench) -> None:
    profile = builtin_profiles()["water-meter"]
    blocks = [{p.name for p in b.points} for b in plan_reads(profile.points)]
    assert len(blocks) == 3  # discrete inputs, the valve set-point (holding), input registers
    # Each request fails on its own: what is marked failed is whole blocks, never part of one.
    unions = [set().union(*c) for n in range(1, len(blocks)) for c in itertools.combinations(blocks, n)]
    node = Node(meter.tmp, meter.pty.b)
    partial = 0
    try:
        _control(meter.sim, "fault exception 0.5 1")
        for _ in range(16):
            r = node.read("water-meter")
            if r["quality"] == "good":
                assert set(r["values"]) == set(profile.value_names())
            elif r["values"]:
                partial += 1
                failed = set(r["pq"])
                assert failed in unions and set(r["pq"].values()) == {"error"}
                assert set(r["values"]) == set(profile.value_names()) - failed
            else:
                assert r["pq"] == {}
        node.quit()
    finally:
        node.kill()
    assert partial > 0


def test_alarm_transitions(flood: Bench) -> None:
    node = Node(flood.tmp, flood.pty.b)
    try:
        calm = node.read("flood-sensor")
        assert calm["values"]["water_level"] < 150
        raised = {a[0] for a in calm["alarms"] if a[1] == "raised"}
        assert not raised & {"flood_alert", "flood_danger"}

        _control(flood.sim, "alarm flood_danger 1")
        r = node.read("flood-sensor")
        assert r["values"]["water_level"] > 205
        assert {"flood_alert", "flood_danger"} <= {a[0] for a in r["alarms"] if a[1] == "raised"}
        assert node.read("flood-sensor")["alarms"] == []  # edge-triggered: no repeat

        _control(flood.sim, "clear 1")
        r = node.read("flood-sensor")
        assert sorted(a for a in r["alarms"] if a[1] == "cleared") == [
            ["flood_alert", "cleared"], ["flood_danger", "cleared"]]
        node.quit()
    finally:
        node.kill()


def test_line_sensor_and_its_alarm(tmp_path: Path) -> None:
    for bench in _bench(tmp_path, "rain-gauge", "--tick", "0.1", "--seed", "5"):
        node = Node(tmp_path, bench.pty.b)
        try:
            r = node.ask("line rain-gauge 2000")
            assert r["quality"] == "good"
            names = builtin_profiles()["rain-gauge"].value_names()
            assert sorted(r["values"]) == sorted(names)
            _control(bench.sim, "alarm heavy_rain")
            for _ in range(3):  # a sentence written before the control line may come first
                r = node.ask("line rain-gauge 2000")
                if ["heavy_rain", "raised"] in r["alarms"]:
                    break
            assert ["heavy_rain", "raised"] in r["alarms"]
            assert _from_node(r["values"]["rain_rate"]) == 80.0
            _control(bench.sim, "fault garbage")  # noise before each sentence: resync on '$'
            for _ in range(3):
                r = node.ask("line rain-gauge 2000")
                assert r["quality"] == "good" and sorted(r["values"]) == sorted(names)
            bench.sim.stop()  # a silent line
            node.ask("line rain-gauge 300")  # whatever was still buffered
            r = node.ask("line rain-gauge 300")
            assert (r["quality"], r["values"]) == ("error", {})
            node.quit()
        finally:
            node.kill()
