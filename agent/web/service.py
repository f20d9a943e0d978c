"""Wiring of the local web page into the running agent (``[web]`` in the config).

``run_web(agent)`` is one task in the agent's TaskGroup: it hooks the reading history onto
every device poller (``DevicePoller.observers``), builds the status view from the agent's
own objects (the same figures as ``urbanedge status`` and ``/metrics``) and serves until
cancelled. A bind failure or an unusable TLS file is logged and the agent goes on polling
without the page.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from agent.ops.metrics import parse_listen
from agent.web.history import ReadingHistory
from agent.web.passwords import PasswordFileUnusable, read_users
from agent.web.render import DeviceRow, OutboxView, StatusView
from agent.web.server import WebServer, WebSettings

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger("urbanedge.web")


async def collect(agent: Agent) -> StatusView:
    from agent.commands import update_report

    snap = await agent.metrics_snapshot()
    units = {d["device_id"]: d.get("units") or {} for d in getattr(agent, "_inventory", [])}
    quality = {p.device_id: p.stats.last_quality for c in agent.coordinators for p in c.pollers}
    devices = [
        DeviceRow(id=d.device, bus=d.bus, kind=d.kind, online=d.online, last_poll=d.last_poll,
                  last_quality=quality.get(d.device), polls=d.polls, good=d.good, errors=dict(d.errors),
                  units=units.get(d.device, {}))
        for d in snap.devices
    ]
    o = snap.outbox
    outbox = None if o is None else OutboxView(depth=dict(o.depth), used_bytes=o.used_bytes, max_bytes=o.max_bytes,
                                               oldest_ts=o.oldest_ts, dropped_total=o.dropped_total)
    f = agent.forwarder
    uplink: dict[str, object] = dict(snap.uplink)
    if f is not None and f.stats.last_error:
        uplink["last_error"] = f.stats.last_error
    runner = agent.command_runner
    return StatusView(
        gateway_id=snap.gateway_id, version=snap.version, started=snap.started, devices=devices, outbox=outbox,
        uplink_state=snap.uplink_state, uplink=uplink, update=update_report(agent.cfg.update.slots),
        update_state=snap.update_state or "",
        last_command=dict(runner.last) if runner is not None and runner.last else None,
    )


def _tls(agent: Agent) -> ssl.SSLContext | None:
    web = agent.cfg.web
    if web.tls_cert is None or web.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(web.tls_cert, web.tls_key)
    return ctx


def build(agent: Agent) -> WebServer:
    web = agent.cfg.web
    assert web.listen is not None
    host, port = parse_listen(web.listen)
    history = ReadingHistory(web.history)
    for c in agent.coordinators:
        for p in c.pollers:
            p.observers.append(history.observe)
    settings = WebSettings(
        host=host, port=port, passwords=web.passwords, gateway_id=agent.cfg.identity.gateway_id,
        default_lang=web.default_lang, session_ttl=web.session_ttl, idle_timeout=web.idle_timeout,
        refresh=web.refresh, hostnames=tuple(web.hostnames),
        # Behind a wildcard address the server cannot know its own names; list them in hostnames.
        check_host=not (web.allow_wildcard and not web.hostnames), tls=_tls(agent))

    async def view() -> StatusView:
        return await collect(agent)

    return WebServer(settings, view, history)


async def run_web(agent: Agent) -> None:
    try:
        server = build(agent)
        await server.start()
    except (OSError, ssl.SSLError) as exc:
        # A taken address or a bad certificate must not stop polling: log it, run without the page.
        log.error("event=web_start_failed address=%s error=%r", agent.cfg.web.listen, exc)
        return
    try:
        read_users(agent.cfg.web.passwords)
    except PasswordFileUnusable as exc:
        # Served anyway (the file is re-read at each sign-in), but nobody can sign in yet.
        log.warning("event=web_no_users reason=%r", str(exc))
    await server.serve()
