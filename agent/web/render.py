"""[pure] The HTML of the local web page: the sign-in form, the status view and error pages.

Everything a page shows comes in as data (:class:`StatusView`, the reading history, the
time and a time formatter), so the markup is tested without a server or a clock. Every
visible string goes through the catalogue (``agent.web.i18n``); every value through
``html.escape``. No inline script or style: the Content-Security-Policy forbids both, the
page loads ``/static/page.css`` and ``/static/page.js`` from the gateway itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

from agent.web.chart import fmt_value, line_chart
from agent.web.i18n import LANG_NAMES, LANGS, Lang, t

TimeFmt = Callable[[float], str]
Series = Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]  # device -> point -> (ts, value)


@dataclass(frozen=True)
class DeviceRow:
    id: str
    bus: str
    kind: str
    online: bool | None
    last_poll: float | None
    last_quality: str | None
    polls: int
    good: int
    errors: Mapping[str, int]
    units: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxView:
    depth: Mapping[str, int]
    used_bytes: int
    max_bytes: int
    oldest_ts: float | None
    dropped_total: int


@dataclass(frozen=True)
class StatusView:
    """What ``urbanedge status`` shows, taken from the running agent."""

    gateway_id: str
    version: str
    started: float
    devices: Sequence[DeviceRow]
    outbox: OutboxView | None
    uplink_state: str | None
    uplink: Mapping[str, Any]
    update: Mapping[str, Any]
    update_state: str
    last_command: Mapping[str, Any] | None


@dataclass(frozen=True)
class PageContext:
    lang: Lang
    now: float
    fmt_time: TimeFmt
    path: str = "/"
    user: str | None = None
    csrf: str | None = None
    fmt_clock: TimeFmt | None = None  # shorter, for chart axes; default fmt_time


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def html_id(*parts: str) -> str:
    return "-".join(_ID_UNSAFE.sub("_", p) for p in parts)


def _lang_switch(ctx: PageContext) -> str:
    links = []
    for lang in LANGS:
        name = escape(LANG_NAMES[lang])
        if lang == ctx.lang:
            links.append(f'<li><a href="?lang={lang}" lang="{lang}" hreflang="{lang}" '
                         f'aria-current="true">{name}</a></li>')
        else:
            label = escape(t(lang, "switch_to", name=LANG_NAMES[lang]))
            links.append(f'<li><a href="?lang={lang}" lang="{lang}" hreflang="{lang}" '
                         f'aria-label="{label}">{name}</a></li>')
    return (f'<nav class="lang" aria-label="{escape(t(ctx.lang, "language"))}"><ul>'
            + "".join(links) + "</ul></nav>")


def page(ctx: PageContext, title: str, body: str) -> str:
    """The frame every page shares: lang, skip link, header with language switch (and sign out)."""
    user = ""
    if ctx.user is not None and ctx.csrf is not None:
        user = (f'<form class="logout" method="post" action="/logout">'
                f'<span>{escape(t(ctx.lang, "signed_in_as", user=ctx.user))}</span> '
                f'<input type="hidden" name="csrf" value="{escape(ctx.csrf)}">'
                f'<button type="submit">{escape(t(ctx.lang, "logout_button"))}</button></form>')
    return (
        f'<!DOCTYPE html>\n<html lang="{ctx.lang}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="/static/page.css">'
        f'<script src="/static/page.js" defer></script></head>'
        f'<body><a class="skip" href="#main">{escape(t(ctx.lang, "skip_link"))}</a>'
        f'<header>{_lang_switch(ctx)}{user}</header>'
        f'<main id="main" tabindex="-1">{body}</main></body></html>\n'
    )


def login_page(ctx: PageContext, gateway_id: str, form_token: str, *, message: str | None = None,
               error: bool = False, username: str = "") -> str:
    L = ctx.lang
    note = ""
    if message:
        role = ' role="alert"' if error else ' role="status"'
        note = f'<p class="{"error" if error else "note"}" id="login-msg"{role}>{escape(message)}</p>'
    described = ' aria-describedby="login-msg"' if message and error else ""
    body = (
        f'<h1>{escape(t(L, "app_title", gateway=gateway_id))}</h1>'
        f'<h2>{escape(t(L, "login_title"))}</h2>'
        f"<p>{escape(t(L, 'login_intro'))}</p>{note}"
        f'<form method="post" action="/login" class="login">'
        f'<input type="hidden" name="form" value="{escape(form_token)}">'
        f'<p><label for="username">{escape(t(L, "username"))}</label>'
        f'<input id="username" name="username" type="text" autocomplete="username" required '
        f'autocapitalize="none" spellcheck="false" value="{escape(username)}"{described}></p>'
        f'<p><label for="password">{escape(t(L, "password"))}</label>'
        f'<input id="password" name="password" type="password" autocomplete="current-password" required'
        f"{described}></p>"
        f'<p><button type="submit">{escape(t(L, "login_button"))}</button></p></form>'
    )
    return page(ctx, f'{t(L, "login_title")} — {t(L, "app_title", gateway=gateway_id)}', body)


def error_page(ctx: PageContext, key: str) -> str:
    L = ctx.lang
    body = f'<h1>{escape(t(L, key))}</h1><p><a href="/">{escape(t(L, "back_home"))}</a></p>'
    return page(ctx, t(L, key), body)


def _ago(ctx: PageContext, ts: float | None) -> str:
    if ts is None:
        return t(ctx.lang, "never")
    age = max(0, round(ctx.now - ts))
    if age < 120:
        return t(ctx.lang, "seconds_ago", n=age)
    if age < 2 * 3600:
        return t(ctx.lang, "minutes_ago", n=age // 60)
    return t(ctx.lang, "hours_ago", n=age // 3600)


def _duration(lang: Lang, seconds: float) -> str:
    m = int(max(0.0, seconds) // 60)
    return t(lang, "duration", h=m // 60, m=m % 60)


def _dl(rows: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"


def _software(ctx: PageContext, v: StatusView) -> str:
    L = ctx.lang
    rows = [(t(L, "version"), v.version), (t(L, "uptime"), _duration(L, ctx.now - v.started))]
    upd = v.update
    if "error" in upd:
        rows.append((t(L, "update_state"), t(L, "update_unreadable", error=upd["error"])))
    elif upd:
        rows.append((t(L, "slot"), f'{upd.get("committed", "-")} ({upd.get("release", "-")})'))
        rows.append((t(L, "release_counter"), str(upd.get("counter", "-"))))
        trial = upd.get("trial")
        if isinstance(trial, Mapping):
            rows.append((t(L, "on_trial"), t(L, "trial_value", release=trial.get("release", "?"),
                                              slot=trial.get("slot", "?"), tries=trial.get("tries", "?"))))
    if v.update_state:
        rows.append((t(L, "update_state"), v.update_state))
    return (f'<section aria-labelledby="h-software"><h2 id="h-software">{escape(t(L, "software_heading"))}</h2>'
            f"{_dl(rows)}</section>")


def _state(lang: Lang, online: bool | None) -> tuple[str, str]:
    if online is True:
        return t(lang, "state_online"), "ok"
    if online is False:
        return t(lang, "state_offline"), "bad"
    return t(lang, "state_unknown"), "unknown"


def _devices(ctx: PageContext, v: StatusView) -> str:
    L = ctx.lang
    head = f'<section aria-labelledby="h-devices"><h2 id="h-devices">{escape(t(L, "devices_heading"))}</h2>'
    if not v.devices:
        return head + f'<p>{escape(t(L, "no_devices"))}</p></section>'
    cols = ("col_device", "col_bus", "col_kind", "col_state", "col_last_poll", "col_quality", "col_polls",
            "col_errors")
    rows = []
    for d in v.devices:
        state, cls = _state(L, d.online)
        errors = ", ".join(f"{k} {n}" for k, n in sorted(d.errors.items())) or t(L, "none")
        rows.append(
            f'<tr id="{escape(html_id("dev", d.id))}"><th scope="row">{escape(d.id)}</th><td>{escape(d.bus)}</td>'
            f'<td>{escape(d.kind)}</td><td class="{cls}">{escape(state)}</td>'
            f"<td>{escape(_ago(ctx, d.last_poll))}</td><td>{escape(d.last_quality or '-')}</td>"
            f"<td>{d.polls} ({d.good})</td><td>{escape(errors)}</td></tr>")
    return (head + '<div class="scroll"><table class="devices"><caption class="sr-only">'
            + escape(t(L, "devices_heading")) + "</caption><thead><tr>"
            + "".join(f'<th scope="col">{escape(t(L, c))}</th>' for c in cols)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div></section>")


def _outbox(ctx: PageContext, v: StatusView) -> str:
    L = ctx.lang
    o = v.outbox
    head = f'<section aria-labelledby="h-outbox"><h2 id="h-outbox">{escape(t(L, "outbox_heading"))}</h2>'
    if o is None:
        return head + f'<p>{escape(t(L, "state_unknown"))}</p></section>'
    depth = {k: o.depth.get(k, 0) for k in ("alarm", "event", "telemetry")}
    pct = round(100 * o.used_bytes / o.max_bytes) if o.max_bytes else 0
    oldest = t(L, "none") if o.oldest_ts is None else \
        f"{ctx.fmt_time(o.oldest_ts)} ({_ago(ctx, o.oldest_ts)})"
    rows = [
        (t(L, "outbox_records"), f"{sum(depth.values())}: {t(L, 'outbox_by_priority', **depth)}"),
        (t(L, "outbox_size"), t(L, "outbox_size_value", used=f"{o.used_bytes / 1e6:.1f}",
                                max=f"{o.max_bytes / 1e6:.0f}", pct=pct)),
        (t(L, "outbox_oldest"), oldest),
        (t(L, "outbox_dropped"), str(o.dropped_total)),
    ]
    return head + _dl(rows) + "</section>"


def _uplink(ctx: PageContext, v: StatusView) -> str:
    L = ctx.lang
    state_key = {"online": "uplink_online", "connecting": "uplink_connecting"}.get(v.uplink_state or "",
                                                                                  "uplink_offline")
    cls = "ok" if v.uplink_state == "online" else "bad"
    rows = [
        (t(L, "uplink_acked"), str(v.uplink.get("acked_records", 0))),
        (t(L, "uplink_reconnects"), str(v.uplink.get("reconnects", 0))),
    ]
    if v.uplink.get("last_error"):
        rows.append((t(L, "uplink_last_error"), str(v.uplink["last_error"])))
    return (f'<section aria-labelledby="h-uplink"><h2 id="h-uplink">{escape(t(L, "uplink_heading"))}</h2>'
            f'<dl><dt>{escape(t(L, "uplink_state"))}</dt><dd class="{cls}" id="uplink-state">'
            f'{escape(t(L, state_key))}</dd>{_dl(rows)[4:]}</section>')


def _command(ctx: PageContext, v: StatusView) -> str:
    L = ctx.lang
    head = f'<section aria-labelledby="h-command"><h2 id="h-command">{escape(t(L, "command_heading"))}</h2>'
    c = v.last_command
    if not c:
        return head + f'<p>{escape(t(L, "no_command"))}</p></section>'
    lines = [t(L, "command_value", cmd=c.get("cmd") or "?", state=c.get("state") or "?")]
    if c.get("reason"):
        lines.append(t(L, "command_reason", reason=c["reason"]))
    ts = c.get("ts")
    if isinstance(ts, int | float):
        lines.append(t(L, "command_at", time=ctx.fmt_time(float(ts))))
    return head + "".join(f"<p>{escape(x)}</p>" for x in lines) + "</section>"


def _charts(ctx: PageContext, v: StatusView, series: Series, history_size: int) -> str:
    L = ctx.lang
    out = [f'<section aria-labelledby="h-charts"><h2 id="h-charts">{escape(t(L, "charts_heading"))}</h2>'
           f'<p>{escape(t(L, "charts_intro", n=history_size))}</p>']
    units = {d.id: d.units for d in v.devices}
    any_data = False
    for dev in sorted(series):
        points = series[dev]
        if not points:
            continue
        any_data = True
        hid = html_id("h-readings", dev)
        out.append(f'<section class="device-charts" aria-labelledby="{hid}"><h3 id="{hid}">{escape(dev)}</h3>'
                   '<div class="charts">')
        for point, pts in points.items():
            if not pts:
                continue
            unit = units.get(dev, {}).get(point, "")
            label = f"{point} ({unit})" if unit else point
            cid = html_id("chart", dev, point)
            vals = [y for _, y in pts]
            desc = t(L, "chart_desc", count=len(pts), start=ctx.fmt_time(pts[0][0]), end=ctx.fmt_time(pts[-1][0]),
                     min=fmt_value(min(vals)), max=fmt_value(max(vals)), last=fmt_value(vals[-1]))
            svg = line_chart(pts, chart_id=cid, title=t(L, "chart_title", device=dev, point=label), desc=desc,
                             fmt_time=ctx.fmt_clock or ctx.fmt_time)
            rows = "".join(f"<tr><td>{escape(ctx.fmt_time(ts))}</td><td>{escape(fmt_value(y))}</td></tr>"
                           for ts, y in reversed(pts))
            out.append(
                f'<figure class="chart-box">{svg}<figcaption>{escape(label)}: '
                f'{escape(t(L, "latest_value", value=fmt_value(vals[-1])))}</figcaption>'
                f'<details id="{html_id("tbl", dev, point)}"><summary id="{html_id("sum", dev, point)}">'
                f'{escape(t(L, "show_table", point=label))}'
                f"</summary><table><caption>{escape(t(L, 'chart_title', device=dev, point=label))}</caption>"
                f'<thead><tr><th scope="col">{escape(t(L, "col_time"))}</th>'
                f'<th scope="col">{escape(t(L, "col_value"))}</th></tr></thead><tbody>{rows}</tbody></table>'
                f"</details></figure>")
        out.append("</div></section>")
    if not any_data:
        out.append(f'<p>{escape(t(L, "no_readings"))}</p>')
    out.append("</section>")
    return "".join(out)


def status_page(ctx: PageContext, v: StatusView, series: Series, *, history_size: int, refresh: float) -> str:
    """The status view: the same facts as ``urbanedge status``, plus charts of recent readings.

    ``refresh`` > 0 offers automatic refresh (done by /static/page.js, which swaps only the
    ``#live`` region and keeps the keyboard focus); the "Refresh" link works without script."""
    L = ctx.lang
    control = ""
    if refresh > 0:
        secs = round(refresh)
        control = (f'<p class="refresh-ctl" id="refresh-ctl" hidden><input type="checkbox" id="auto-refresh" '
                   f'data-seconds="{secs}" checked> <label for="auto-refresh">'
                   f'{escape(t(L, "auto_refresh", seconds=secs))}</label></p>')
    body = (
        f'<h1>{escape(t(L, "status_heading", gateway=v.gateway_id))}</h1>'
        f'<p><a href="/" id="refresh-link">{escape(t(L, "refresh"))}</a></p>{control}'
        f'<div id="live"><p class="updated">{escape(t(L, "updated_at", time=ctx.fmt_time(ctx.now)))}</p>'
        f"{_devices(ctx, v)}{_uplink(ctx, v)}{_outbox(ctx, v)}{_command(ctx, v)}{_software(ctx, v)}"
        f"{_charts(ctx, v, series, history_size)}</div>"
    )
    return page(ctx, t(L, "status_heading", gateway=v.gateway_id), body)
