"""The agent: one root TaskGroup owning the outbox writer, the uplink, one coordinator per
bus and the health reporter. Cancelling ``Agent.run`` (SIGTERM) stops everything and
leaves the outbox consistent: queued records are flushed, nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import urbanedge
from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import event
from agent.buffer.writer import OutboxWriter
from agent.config import LoadedConfig
from agent.control.agent_commands import AgentCommands, build_agent_commands, load_thresholds, thresholds_path
from agent.control.executor import CommandRunner, Handler, build_runner
from agent.control.lighting_task import LightingTask, build_lighting
from agent.ops import metrics as ops_metrics
from agent.ops.sdnotify import Heartbeat, Notifier, Watchdog, watchdog_interval
from agent.poll.coordinator import BusCoordinator
from agent.reconfig.remote import RemoteConfig
from agent.restart import RestartRequested
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from agent.security.events import update_event
from agent.security.monitor import SecurityMonitor
from agent.update.health import HealthSample
from agent.uplink.forwarder import Forwarder, UplinkSettings
from agent.uplink.tls import context_from_settings
from agent.uplink.topics import Topics, group_command_topic
from drivers.profiles import Profile
from pki.command import Command, looks_signed
from pki.sealed_args import Unsealer

if TYPE_CHECKING:
    from agent.ops.metrics_server import MetricsServer
    from agent.update.updater import Updater

log = logging.getLogger("urbanedge.agent")

HEALTH_PERIOD = 5.0
COMPACT_EVERY = 60  # health periods: every 5 minutes


class Agent:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.outbox: AsyncOutbox | None = None
        self.writer: OutboxWriter | None = None
        self.forwarder: Forwarder | None = None
        self.coordinators: list[BusCoordinator] = []
        self.started = time.time()
        self.restart_requested = False
        self.last_ota: dict[str, Any] = {}
        self.notifier = Notifier.from_env()
        self.watchdog_every = watchdog_interval()
        # Liveness for the systemd watchdog: the health loop beats after each write through the
        # outbox thread; stale after one full watchdog period (at least two health periods).
        self.heartbeat = Heartbeat(max(2 * (self.watchdog_every or 0.0), 2 * HEALTH_PERIOD + 1))
        self.metrics_server: MetricsServer | None = None
        # Signed IOC commands (agent/control): raw bytes queue up here, one task runs them.
        self.command_queue: asyncio.Queue[bytes] = asyncio.Queue(self.cfg.commands.queue)
        self.command_runner: CommandRunner | None = None
        self.agent_commands: AgentCommands | None = None  # read-now, threshold, rebirth, restart, reboot
        self.lighting: LightingTask | None = None  # local streetlight control, uplink or not
        self.updater = self._updater()
        self.security = SecurityMonitor(loaded.config.identity.gateway_id)
        # Built here so an unusable certificate or key fails at start, before any task runs.
        self.settings = self.uplink_settings()
        # Remote configuration (agent/reconfig): the ``config`` command and the trial it starts.
        self.remote_config = RemoteConfig(loaded, self._health_sample)

    def _sealer(self) -> BatchSealer:
        ident = self.cfg.identity
        creds = load_credentials(self.cfg.seal, ident.gateway_id)
        return BatchSealer(ident.gateway_id, creds.sealer, creds.chain_der)

    def uplink_settings(self) -> UplinkSettings:
        b, ident = self.cfg.broker, self.cfg.identity
        tls = context_from_settings(b)
        self._inventory = [
            {"device_id": d.id, "kind": p.kind, "profile": p.name, "bus": bus.name,
             "interval": d.interval, "units": p.units()}
            for bus, d, p in self.loaded.devices()
        ]
        return UplinkSettings(
            host=b.host, port=b.port, client_id=b.client_id or ident.gateway_id,
            topics=Topics(b.topic_prefix, ident.site, ident.gateway_id),
            source=ident.gateway_id, sealer=self._sealer(), keepalive=b.keepalive, tls=tls,
            username=b.username, password=b.password, max_inflight=b.max_inflight,
            batch_max_records=b.batch_max_records, batch_max_bytes=b.batch_max_bytes,
            reconnect_min=b.reconnect_min, reconnect_max=b.reconnect_max,
            # The birth message is not sealed (brokers and dashboards read it), so it says only
            # what the topic already tells; the device inventory goes sealed, in agent_started.
            birth={"site": ident.site, "agent_version": urbanedge.__version__},
            on_command=self._on_command,
            # Group commands come on the group's topic, once for every member (docs/wire-format.md).
            command_topics=tuple(group_command_topic(b.topic_prefix, g) for g in self.cfg.commands.groups)
            if self.cfg.commands.enabled else (),
            on_connect_failure=self.security.on_connect_failure,
        )

    def _updater(self) -> Updater | None:
        up, ident = self.cfg.update, self.cfg.identity
        if not up.enabled:
            return None
        slot = os.environ.get("UE_SLOT")
        if slot is None:
            # Without the launcher nobody would boot the new slot or fall back from it.
            log.warning("event=update_disabled reason=%r", "not started by `urbanedge launch`")
            return None
        # Imported only when updates are on: the TUF client and the slot store are not small.
        from agent.update.updater import Updater, UpdateSettings

        settings = UpdateSettings(
            repository=up.repository, root=up.root, state_dir=up.state_dir, slots=up.slots,
            hardware=up.hardware, check_interval=up.check_interval, health_deadline=up.health_deadline,
            gateway_id=ident.gateway_id, site=ident.site, running_slot=slot,
            agent_version=urbanedge.__version__)
        return Updater(settings, self._report_update, self._health_sample)

    def _on_command(self, payload: bytes) -> None:
        cmd: Any = None
        if not looks_signed(payload):
            try:
                cmd = json.loads(payload)
            except ValueError:
                cmd = None
        if isinstance(cmd, dict) and cmd.get("cmd") == "update-check" and self.updater is not None:
            log.info("event=update_check_requested")
            self.updater.request_check()
        elif self.command_runner is not None:
            # Everything else goes to the verifier: COSE_Sign1 (tag 18) is checked, anything
            # unsigned is refused there and reported (a security event), not silently dropped.
            try:
                self.command_queue.put_nowait(payload)
            except asyncio.QueueFull:
                # Bounded: a flood of commands must not grow memory; the IOC sees no result and retries.
                self.command_runner.rejected["queue_full"] += 1
                log.warning("event=command_dropped reason=queue_full bytes=%d", len(payload))
        else:
            log.warning("event=command_ignored bytes=%d", len(payload))

    async def _update_check(self, _cmd: Command) -> None:
        assert self.updater is not None
        self.updater.request_check()

    async def _report_update(self, body: dict[str, Any]) -> None:
        assert self.outbox is not None
        self.last_ota = body
        now, source = time.time(), self.cfg.identity.gateway_id
        sec = update_event(source, now, body)  # a refused update that looks like an attack: tell the SOC
        if sec is not None:
            ops_metrics.counters.inc("security_events", kind="update_rejected")
        await self.outbox.append([event(source, now, "ota_status", **body), *([sec] if sec else [])])

    async def _report_sbom(self) -> None:
        """Seal the SBOM of the running code to the IOC (once per start: boot, and after updates).

        Built in a child process: the CycloneDX and schema libraries would otherwise stay
        resident in the agent for a job done once."""
        up = self.cfg.update
        slot = os.environ.get("UE_SLOT", "factory")
        cmd = [sys.executable, "-P", "-m", "urbanedge", "ota", "sbom", "gateway", "--release", urbanedge.__version__,
               "--cache", str(up.state_dir / "sbom-digests.json"), "-o", "-"]
        if slot in ("a", "b"):
            cmd += ["--app-dir", str(up.slots / slot)]
        up.state_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("event=sbom_failed reason=timeout")
            return
        if proc.returncode != 0:
            log.warning("event=sbom_failed code=%s reason=%r", proc.returncode, err.decode(errors="replace")[-500:])
            return
        assert self.outbox is not None
        bom = json.loads(out)
        await self.outbox.append([event(self.cfg.identity.gateway_id, time.time(), "sbom", bom=bom)])
        log.info("event=sbom_reported release=%s components=%d bytes=%d", urbanedge.__version__,
                 len(bom.get("components", [])), len(out))

    def _health_sample(self) -> HealthSample:
        f = self.forwarder
        stats = f.stats if f is not None else None
        w = self.writer
        return HealthSample(
            uplink_online=f is not None and f.state == "online",
            acked_records=stats.acked_records if stats is not None else 0,
            records_written=w.written if w is not None else 0,
            buses_polled={c.bus.name: sum(p.stats.good for p in c.pollers) for c in self.coordinators},
        )

    async def run(self, ready: asyncio.Event | None = None) -> None:
        buf = self.cfg.buffer
        buf.path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = await AsyncOutbox.open(buf.path, max_bytes=buf.max_bytes,
                                             durability=buf.durability)
        source = self.cfg.identity.gateway_id
        self.writer = OutboxWriter(self.outbox, source, queue_records=buf.queue_records)
        by_bus: dict[str, list[tuple[Any, Profile]]] = defaultdict(list)
        for bus, dev, prof in self.loaded.devices():
            by_bus[bus.name].append((dev, prof))
        self.coordinators = [BusCoordinator(bus, by_bus[bus.name], self.writer.put)
                             for bus in self.cfg.buses if by_bus[bus.name]]
        self.forwarder = Forwarder(self.outbox, self.settings)
        if self.cfg.lighting.enabled:
            self.lighting = build_lighting(self.loaded, self.coordinators, self.outbox.append)
        # Thresholds set by earlier `threshold` commands hold from the first poll on.
        assert self.cfg.commands.state is not None
        saved = load_thresholds(thresholds_path(self.cfg.commands.state), self.coordinators)
        if self.cfg.commands.enabled:
            up = self.updater
            handlers: dict[str, Handler] = {}
            self.agent_commands = build_agent_commands(
                self.loaded, self.coordinators, self.outbox.append, self.forwarder.rebirth, saved,
                {"version": urbanedge.__version__, "province": self.cfg.identity.province, "devices": self._inventory})
            handlers.update(self.agent_commands.handlers())
            if self.lighting is not None:
                handlers.update(self.lighting.handlers())
            if up is not None:
                handlers["update-check"] = Handler(run=self._update_check)
            handlers["config"] = self.remote_config.handler()
            seal = self.settings.sealer.sealer
            self.command_runner = build_runner(self.loaded, self.coordinators, self.outbox.append, handlers,
                                               unsealer=Unsealer.for_key(seal.signing_key, seal.cert_der),
                                               until_sent=self.forwarder.until_acked)
            if self.lighting is not None:
                self.command_runner.write_observers.append(self.lighting.on_command_write)
        await self.outbox.append([event(source, time.time(), "agent_started", version=urbanedge.__version__,
                                        province=self.cfg.identity.province, devices=self._inventory)])
        log.info("event=agent_started gateway=%s buses=%d devices=%d outbox=%s",
                 source, len(self.coordinators), len(self.loaded.devices()), buf.path)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.writer.run(), name="outbox-writer")
                tg.create_task(self.forwarder.run(), name="uplink")
                for c in self.coordinators:
                    tg.create_task(c.run(), name=f"bus:{c.bus.name}")
                tg.create_task(self._health_loop(), name="health")
                tg.create_task(self.remote_config.run(self.outbox.append), name="config-trial")
                tg.create_task(self.security.run(self.outbox.append, self.settings.sealer.chain_der[0]),
                               name="security")
                if self.updater is not None:
                    tg.create_task(self.updater.run(), name="updater")
                if self.cfg.update.sbom:
                    tg.create_task(self._report_sbom(), name="sbom")
                if self.command_runner is not None:
                    tg.create_task(self.command_runner.run(self.command_queue), name="commands")
                if self.agent_commands is not None:
                    tg.create_task(self.agent_commands.watch_restart(), name="restart-command")
                if self.lighting is not None:
                    tg.create_task(self.lighting.run(), name="lighting")
                self._start_ops(tg)
                if ready is not None:
                    ready.set()
        except* RestartRequested as group:
            self.restart_requested = True
            log.info("event=agent_restart reason=%r", str(group.exceptions[0]))
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Runs on cancellation too: shield so the flush and close complete.
        if self.remote_config.reload:
            # `urbanedge run` starts again in this process on the switched config: STOPPING=1
            # would make systemd stop the unit; RELOADING=1, then READY=1, is a reload.
            self.notifier.notify("RELOADING=1")
        else:
            self.notifier.stopping()

        async def close() -> None:
            if self.writer is not None:
                await self.writer.flush()
            if self.outbox is not None:
                await self._write_health()
                await self.outbox.close()
        await asyncio.shield(close())
        log.info("event=agent_stopped")

    def health(self) -> dict[str, Any]:
        w = self.writer
        return {
            "ts": time.time(),
            "started": self.started,
            "version": urbanedge.__version__,
            "gateway_id": self.cfg.identity.gateway_id,
            "queue": {"depth": w.queue.qsize() if w else 0,
                      "max": w.queue.maxsize if w else 0,
                      "full_waits": w.queue_full_waits if w else 0,
                      "written": w.written if w else 0},
            "buses": {c.bus.name: c.health() for c in self.coordinators},
            "last_command": self.command_runner.last if self.command_runner is not None else None,
            "lighting": self.lighting.health() if self.lighting is not None else None,
        }

    async def _write_health(self) -> None:
        if self.outbox is not None:
            await self.outbox.put_health("agent", json.dumps(self.health()))

    async def _health_loop(self) -> None:
        n = 0
        while True:
            await self._write_health()
            self.heartbeat.beat()
            n += 1
            if self.outbox is not None and n % COMPACT_EVERY == 0:
                # Give disk back after a long outage has drained (only acts when mostly empty).
                await self.outbox.compact(max_pages=25_000)
            await asyncio.sleep(HEALTH_PERIOD)

    # -- operations: metrics endpoint and systemd notify (agent/ops) ----------------------

    def _start_ops(self, tg: asyncio.TaskGroup) -> None:
        if self.cfg.metrics.listen is not None:
            # Imported only when enabled: http.server and its email parsing are ~0.8 MiB resident.
            from agent.ops.metrics_server import MetricsServer

            host, port = ops_metrics.parse_listen(self.cfg.metrics.listen)
            self.metrics_server = MetricsServer(host, port, self.render_metrics)
            tg.create_task(self._serve_metrics(self.metrics_server), name="metrics")
        if self.cfg.web.listen is not None:
            # Imported only when enabled: a gateway without the page carries none of its code.
            from agent.web.service import run_web

            tg.create_task(run_web(self), name="web")
        if self.notifier.enabled and self.watchdog_every is not None:
            dog = Watchdog(self.notifier, self.heartbeat.alive)
            tg.create_task(dog.run(self.watchdog_every), name="watchdog")
        self.notifier.ready(f"polling {len(self.loaded.devices())} devices")

    async def _serve_metrics(self, server: MetricsServer) -> None:
        try:
            await server.start()
        except OSError as exc:
            # A taken or foreign address must not stop polling: log it, run without metrics.
            log.error("event=metrics_bind_failed address=%s error=%r", self.cfg.metrics.listen, exc)
            return
        await server.serve()

    async def metrics_snapshot(self) -> ops_metrics.Snapshot:
        devices = [
            ops_metrics.DeviceSample(
                device=p.device_id, bus=c.bus.name, kind=p.kind, polls=p.stats.polls, good=p.stats.good,
                errors=dict(p.stats.errors), busy_seconds=p.busy_seconds, online=p.stats.online,
                last_poll=p.stats.last_poll, cycles_skipped=p.stats.cycles_skipped)
            for c in self.coordinators for p in c.pollers
        ]
        outbox = None
        if self.outbox is not None:
            st = await self.outbox.stats()
            outbox = ops_metrics.OutboxSample(
                depth={p.name.lower(): n for p, n in st.depth.items()}, used_bytes=st.used_bytes,
                file_bytes=st.file_bytes, max_bytes=st.max_bytes, oldest_ts=st.oldest_ts,
                evicted_by_prio={p.name.lower(): n for p, n in st.evicted_by_prio.items()},
                dropped_total=st.dropped_total)
        f, w = self.forwarder, self.writer
        uplink = {k: v for k, v in vars(f.stats).items() if isinstance(v, int)} if f is not None else {}
        return ops_metrics.Snapshot(
            now=time.time(), started=self.started, version=urbanedge.__version__,
            gateway_id=self.cfg.identity.gateway_id, devices=devices,
            bus_utilisation={c.bus.name: c.utilisation() for c in self.coordinators},
            outbox=outbox, uplink_state=f.state if f is not None else None, uplink=uplink,
            queue_depth=w.queue.qsize() if w else 0, records_written=w.written if w else 0,
            update_release=urbanedge.__version__, update_state=str(self.last_ota.get("state", "")))

    async def render_metrics(self) -> str:
        return ops_metrics.render_agent(await self.metrics_snapshot())
