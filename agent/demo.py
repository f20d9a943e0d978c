"""``urbanedge demo``: the whole data path on one machine, with nothing to set up.

It creates a throw-away provincial PKI (root → issuing CA → the gateway's and the IOC's
certificates) under its work directory, starts an embedded MQTT broker (amqtt, pure
Python) on a free loopback port, one simulator of each device kind (Modbus TCP; plus a
serial rain gauge over a socat pty when socat is installed), the agent with a generated
config, and the IOC receiver, which decrypts and verifies every sealed batch with only
the root certificate and prints the verified readings — each once, by (source, seq).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("urbanedge.demo")

DEMO_DEVICES = [
    # (kind/profile, device ids with their unit numbers)
    ("streetlight", [("streetlight-1", 1), ("streetlight-2", 2)]),
    ("water-meter", [("water-meter-1", 1)]),
    ("flood-sensor", [("flood-sensor-1", 1)]),
]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run simulators, a local broker, the agent and a consumer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print one JSON object per record")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the generated config, outbox and logs here (default: a temp dir, removed)")
    p.add_argument("--interval", type=float, default=2.0, help="poll interval of every device (s)")
    p.add_argument("--alarm-after", type=float, default=8.0, metavar="SECONDS",
                   help="inject a flood alarm after this many seconds (negative: never)")
    p.set_defaults(func=cmd_demo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmd_demo(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        print("error: --duration must be positive", file=sys.stderr)
        return 2
    from agent.log import setup_logging

    setup_logging("error")  # the records are the output; warnings would interleave
    keep = args.workdir is not None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="urbanedge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_demo(args, workdir.resolve()))
    except KeyboardInterrupt:
        return 0
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def _broker(port: int) -> AsyncIterator[None]:
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    try:
        yield
    finally:
        try:
            await asyncio.wait_for(broker.shutdown(), 15)
        except TimeoutError:
            log.warning("event=demo_broker_shutdown_timeout")


class _Uplink:
    """The gateway's link to the broker: a TCP relay the demo cuts while ``WORKDIR/uplink.down`` exists.

    Cutting the link, not stopping the broker, is the outage a gateway sees in the field (a
    dead 4G modem, a cut fibre) and keeps the IOC's session on the broker, as a production
    broker with persistent sessions would: nothing the gateway sends after the link is back
    is lost to the IOC."""

    def __init__(self, broker_port: int, flag: Path) -> None:
        self.broker_port = broker_port
        self.flag = flag
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        self.up = False
        for w in list(self._conns):
            w.transport.abort()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()  # the link is down: the connection attempt fails
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._conns.difference_update((writer, up_writer))


GATEWAY_ID = "demo-gw-1"
UPLINK_DOWN = "uplink.down"


def _config(workdir: Path, broker_port: int, sim_ports: dict[str, int], interval: float,
            rain_pty: Path | None, seal: Any) -> Path:
    lines = [
        "# Generated by `urbanedge demo`: simulated devices on loopback, embedded broker.",
        'log_level = "warning"',
        "[identity]", f'gateway_id = "{GATEWAY_ID}"', 'site = "demo-site"', 'province = "demo"',
        # Reconnect backoff capped at 5 s (default 60): after `rm uplink.down` the backlog should
        # drain while you watch, not a minute later.
        "[broker]", 'host = "127.0.0.1"', f"port = {broker_port}", "reconnect_max = 5.0",
        "[buffer]", 'path = "outbox.db"', 'max_bytes = "64MB"',
        "[seal]", f'key = "{seal.key}"', f'cert = "{seal.chain}"', f'recipient = "{seal.recipient}"',
        # Signed commands from the (demo) IOC: verified against the provincial root only.
        "[commands]", "enabled = true", f'root = "{seal.root}"',
        # Local streetlight control on this machine's clock: the city's night schedule until a
        # signed `schedule` command replaces it (README: "Commands in the demo").
        "[lighting]", "enabled = true", f'utc_offset = "{_local_offset()}"', "period = 1.0",
    ]
    for kind, devices in DEMO_DEVICES:
        lines += ["[[buses]]", f'name = "{kind}-tcp"', 'type = "modbus-tcp"', 'host = "127.0.0.1"',
                  f"port = {sim_ports[kind]}", "timeout = 1.0"]
        for dev_id, unit in devices:
            lines += ["[[buses.devices]]", f'id = "{dev_id}"', f'profile = "{kind}"',
                      f"unit = {unit}", f"interval = {interval}"]
    if rain_pty is not None:
        lines += ["[[buses]]", 'name = "rain-serial"', 'type = "serial-line"',
                  f'port = "{rain_pty}"', "baudrate = 9600",
                  "[[buses.devices]]", 'id = "rain-gauge-1"', 'profile = "rain-gauge"',
                  f"interval = {interval}"]
    path = workdir / "demo.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _local_offset() -> str:
    """This machine's UTC offset as ``+HH:MM``: the demo's schedule runs on the local clock."""
    minutes = round(time.localtime().tm_gmtoff / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _command_args(workdir: Path, broker_port: int, pki: Any) -> Path:
    """``urbanedge ioc command @FILE ...``: the options that reach this demo's gateway as the IOC.

    One option or value per line (argparse's @file convention); ``--store`` is the demo IOC's
    reading store, so ``--wait-for`` can show the gateway's sealed result."""
    lines = ["--broker", f"127.0.0.1:{broker_port}",
             "--key", str(pki.ioc_command_key), "--cert", str(pki.ioc_command_key.with_name("command.chain.pem")),
             "--gateway", GATEWAY_ID, "--site", "demo-site",
             "--store", f"sqlite:{workdir / 'ioc-readings.db'}"]
    path = workdir / "ioc-command.args"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_socat(workdir: Path) -> tuple[subprocess.Popen[bytes], Path, Path] | None:
    exe = shutil.which("socat")
    if exe is None:
        return None
    a, b = workdir / "rain-sim.pty", workdir / "rain-agent.pty"
    for p in (a, b):
        p.unlink(missing_ok=True)
    proc = subprocess.Popen([exe, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return None
        time.sleep(0.02)
    return proc, a, b


def _say(args: argparse.Namespace, text: str) -> None:
    # In --json mode stdout carries only records; the narration goes to stderr.
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


async def _demo(args: argparse.Namespace, workdir: Path) -> int:
    from agent.app import Agent
    from agent.config import load_config
    from drivers.profiles import builtin_profiles
    from drivers.sim.server import Simulator
    from pki.throwaway import build_throwaway_pki

    profiles = builtin_profiles()
    pki_dir = workdir / "pki"
    if pki_dir.exists():  # a kept workdir from an earlier run: a fresh PKI each time
        shutil.rmtree(pki_dir)
    pki = build_throwaway_pki(pki_dir, [GATEWAY_ID], province="demo")
    _say(args, f"demo: throw-away PKI in {pki_dir} (root {pki.root_cert.name})")
    broker_port = _free_port()
    sims: dict[str, Simulator] = {}
    sim_ports: dict[str, int] = {}
    socat = _start_socat(workdir)
    line_sim: Any = None
    try:
        async with _broker(broker_port):
            _say(args, f"demo: broker mqtt://127.0.0.1:{broker_port} (embedded), workdir {workdir}")
            for kind, devices in DEMO_DEVICES:
                sim = Simulator(profiles[kind], units=[u for _, u in devices], seed=7)
                sim_ports[kind] = _free_port()
                await sim.serve_tcp("127.0.0.1", sim_ports[kind])
                sims[kind] = sim
                _say(args, f"demo: simulator {kind} on modbus-tcp 127.0.0.1:{sim_ports[kind]}")
            rain_pty = None
            if socat is not None:
                from drivers.sim.line import LineSimulator

                line_sim = LineSimulator(profiles["rain-gauge"], str(socat[1]), period=1.0, seed=7)
                await line_sim.start()
                rain_pty = socat[2]
                _say(args, f"demo: simulator rain-gauge on serial {socat[1]} <-> {socat[2]}")
            else:
                _say(args, "demo: socat not installed: serial rain gauge left out")
            gw = pki.devices[GATEWAY_ID]
            seal = argparse.Namespace(key=gw.key, chain=gw.chain, recipient=pki.ioc_recipient_cert,
                                      root=pki.root_cert)
            uplink = _Uplink(broker_port, workdir / UPLINK_DOWN)
            await uplink.start()
            # The gateway reaches the broker through the relay (its "uplink"); the IOC directly.
            cfg_path = _config(workdir, uplink.port, sim_ports, args.interval, rain_pty, seal)
            _say(args, f"demo: agent config {cfg_path}")
            cmd_args = _command_args(workdir, broker_port, pki)
            _say(args, f"demo: send signed commands from another shell: urbanedge ioc command @{cmd_args} "
                       "--device streetlight-1 --wait-for done dim 40")
            agent = Agent(load_config(cfg_path))
            receiver = _receiver(args, pki, broker_port, workdir)
            try:
                await _run_all(args, agent, sims, receiver, uplink)
            finally:
                await uplink.close()
                receiver.pipeline.flush_parked()
                _say(args, "demo: IOC " + json.dumps(receiver.pipeline.stats.as_dict()))
                receiver.pipeline.store.close()
    finally:
        if line_sim is not None:
            await line_sim.stop()
        for sim in sims.values():
            await sim.stop()
        if socat is not None:
            socat[0].terminate()
            socat[0].wait(5)
    return 0


async def _run_all(args: argparse.Namespace, agent: Any, sims: dict[str, Any], receiver: Any,
                   uplink: _Uplink) -> None:
    import threading

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    receiver.connect()
    consumer_stop = threading.Event()
    try:
        if not await asyncio.to_thread(receiver.wait_subscribed, 10.0):
            raise RuntimeError("the IOC receiver could not subscribe to the demo broker")
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(asyncio.to_thread(receiver.run, stop=consumer_stop))
            agent_task = tg.create_task(_gateway(args, agent))
            injector = None
            if args.alarm_after >= 0:
                injector = tg.create_task(_inject_alarm(args, sims["flood-sensor"], args.alarm_after))
            outage = tg.create_task(_uplink_switch(args, uplink))
            if args.duration is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.duration)
            else:
                await stop.wait()
            from agent import aio

            aio.cancel_firmly(agent_task)  # a stop lost on the way is repeated (agent/aio.py)
            await _bounded(args, "the agent's shutdown", agent_task)
            await asyncio.sleep(0.5)  # let the last acknowledged messages reach the receiver
            consumer_stop.set()
            await _bounded(args, "the IOC receiver", consumer)
            if injector is not None:
                injector.cancel()
            outage.cancel()
    finally:
        consumer_stop.set()
        receiver.close()
    _say(args, "demo: stopped")


def _receiver(args: argparse.Namespace, pki: Any, broker_port: int, workdir: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    from ioc.pipeline import Pipeline
    from ioc.receiver import Receiver, ReceiverSettings
    from ioc.store import open_store
    from ioc.verify import Opener
    from pki.keys import load_cert, load_crls, load_private_key

    key = load_private_key(pki.ioc_recipient_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    opener = Opener(key, load_cert(pki.ioc_recipient_cert), load_cert(pki.root_cert), crls=load_crls(pki.crl))
    store_path = workdir / "ioc-readings.db"
    store_path.unlink(missing_ok=True)
    pipeline = Pipeline(opener, open_store(f"sqlite:{store_path}"), _DemoSink(args))
    # amqtt speaks MQTT 3.1.1 only: one receiver, a plain subscription.
    settings = ReceiverSettings(host="127.0.0.1", port=broker_port, group=None, protocol=4,
                                client_id="demo-ioc")
    return Receiver(settings, pipeline)


class _DemoSink:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def write(self, source: str, records: Sequence[Mapping[str, Any]], *,
              verified: Mapping[str, Any] | None = None) -> int:
        for rec in records:
            _print_record(self.args, source, {**rec, "verified": dict(verified or {})})
        return len(records)


async def _gateway(args: argparse.Namespace, agent: Any) -> None:
    """The demo's gateway, started again in this process when it asks to be, as `urbanedge run`
    and the launcher do: after a signed ``restart``, or on a new configuration from a signed
    ``config`` command (which the gateway keeps only if it proves healthy: agent/reconfig)."""
    from agent.app import Agent
    from agent.config import ConfigError, load_config
    from agent.reconfig.remote import fail_start, prepare_start
    from agent.seal.credentials import SealSetupError
    from agent.uplink.tls import TlsConfigError

    path = agent.loaded.path
    while True:
        await agent.run()
        if not (agent.restart_requested or agent.remote_config.reload):
            return
        while True:
            prepare_start(path)
            _say(args, f"demo: the gateway starts again on {path}")
            try:
                agent = Agent(load_config(path))
                break
            except (ConfigError, TlsConfigError, SealSetupError) as exc:
                if not fail_start(path, str(exc)[:300]):
                    _say(args, f"demo: the gateway cannot start: {exc}")
                    return


async def _bounded(args: argparse.Namespace, what: str, task: asyncio.Task[Any], limit: float = 30.0) -> None:
    """Wait for ``task`` to end, at most ``limit`` s: Ctrl-C must never leave the demo hanging."""
    done, _ = await asyncio.wait([task], timeout=limit)
    if not done:
        _say(args, f"demo: {what} did not stop within {limit:g} s: left behind")
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        _say(args, f"demo: {what} failed: {task.exception()!r}")


async def _uplink_switch(args: argparse.Namespace, uplink: _Uplink) -> None:
    """``touch WORKDIR/uplink.down`` cuts the gateway's uplink, ``rm`` restores it: the outage a
    dead modem causes, switched from another shell without stopping anything."""
    flag = uplink.flag
    flag.unlink(missing_ok=True)  # a kept workdir may hold one from an earlier run
    while True:
        down = flag.exists()
        if down and uplink.up:
            uplink.cut()
            _say(args, f"demo: uplink DOWN at {time.strftime('%H:%M:%S')} ({flag} exists): the gateway keeps "
                       "polling, buffering and running its local schedule")
        elif not down and not uplink.up:
            uplink.restore()
            _say(args, f"demo: uplink UP at {time.strftime('%H:%M:%S')}: the backlog drains, alarms first")
        await asyncio.sleep(0.25)


async def _inject_alarm(args: argparse.Namespace, sim: Any, after: float) -> None:
    await asyncio.sleep(after)
    sim.inject_alarm("flood_danger", unit=1)
    _say(args, "demo: injected flood_danger on flood-sensor-1 (the alarm jumps the queue)")


def _print_record(args: argparse.Namespace, source: str, rec: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps({"source": source, **rec}, default=float), flush=True)
        return
    t = time.strftime("%H:%M:%S", time.localtime(rec["ts"]))
    if rec["type"] == "telemetry":
        vals = " ".join(f"{k}={_fmt(v)}" for k, v in rec["values"].items())
        line = f"{t} {rec['kind']:<12} {rec['device_id']:<15} seq={rec['seq']:<5} " \
               f"[{rec['quality']}] {vals or rec.get('error', '')}"
    elif rec["type"] == "alarm":
        line = f"{t} ALARM {rec['alarm']} {rec['state']} on {rec['device_id']} " \
               f"({rec['point']}={_fmt(rec['value'])}, threshold {rec.get('threshold')}) seq={rec['seq']}"
    else:
        extra = {k: v for k, v in rec.items()
                 if k not in ("type", "ts", "seq", "event", "device_id", "verified")}
        line = f"{t} event {rec['event']} {rec['device_id']} seq={rec['seq']} {extra or ''}"
    print(line, flush=True)


def _fmt(v: Any) -> str:
    from decimal import Decimal

    return f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float | Decimal) else str(v)
