"""The local web page's HTTP server: routes, sign-in, sessions, and the thin asyncio I/O.

Runs in the agent's TaskGroup (``agent.web.service``). Like the metrics endpoint it is a
small hand-written HTTP/1.1 server (one request per connection, read deadline, size
limits, bounded connections) rather than a web framework: the agent's RSS is a budget.

Routes:

- ``GET /login``, ``POST /login``: the sign-in form (a per-form token in a cookie and a
  hidden field guards it against login CSRF); failures are throttled per client address
  and per user name.
- ``POST /logout``: needs the session's CSRF token.
- ``GET /``: the status page; ``GET /api/status``: the same as JSON (for scripts on the
  service laptop). Without a session: a redirect to ``/login`` (page) or 401 (API).
- ``GET /static/page.css``, ``/static/page.js``: public.
- ``?lang=vi|en`` on any GET: remembers the language in a cookie and redirects back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agent.web import render
from agent.web.auth import DUMMY, LoginThrottle, SessionStore, csrf_ok, verify_password
from agent.web.history import ReadingHistory
from agent.web.http import (
    MAX_HEAD,
    NO_STORE,
    BadRequest,
    Request,
    Response,
    body_length,
    cookie,
    host_allowed,
    parse_head,
    redirect,
)
from agent.web.i18n import Lang, as_lang, negotiate, t
from agent.web.passwords import PasswordFileUnusable, read_users
from agent.web.static import CSS, JS

log = logging.getLogger("urbanedge.web")

READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
SESSION_COOKIE = "ue_session"
FORM_COOKIE = "ue_form"
LANG_COOKIE = "ue_lang"
FORM_TTL = 900  # s a sign-in form stays valid


def local_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def local_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


@dataclasses.dataclass(frozen=True)
class WebSettings:
    host: str
    port: int
    passwords: Any  # pathlib.Path
    gateway_id: str
    default_lang: Lang = "vi"
    session_ttl: float = 8 * 3600.0
    idle_timeout: float = 1800.0
    refresh: float = 10.0
    hostnames: Sequence[str] = ()
    check_host: bool = True
    tls: ssl.SSLContext | None = None


class WebServer:
    def __init__(self, settings: WebSettings, collect: Callable[[], Awaitable[render.StatusView]],
                 history: ReadingHistory, *, clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.host, self.port = settings.host, settings.port
        self._collect = collect
        self.history = history
        self.clock = clock
        self.sessions = SessionStore(ttl=settings.session_ttl, idle=settings.idle_timeout)
        self.throttle = LoginThrottle()
        self._verify_lock = asyncio.Lock()  # one slow hash at a time: the Pi has polling to do
        self._server: asyncio.Server | None = None
        self._active = 0
        self.requests = 0

    # -- I/O --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.s.tls,
                                                  limit=MAX_HEAD * 2)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=web_listening address=%s:%d tls=%s", self.host, self.port, self.s.tls is not None)

    async def serve(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()

    def allowed_hosts(self) -> list[str]:
        out = []
        for name in (self.host, *self.s.hostnames):
            h = f"[{name}]" if ":" in name else name
            out += [h.lower(), f"{h}:{self.port}".lower()]
        return out

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._active += 1
        try:
            resp, head_only = await self._read_and_dispatch(reader, writer)
            if resp is not None:
                writer.write(resp.encode(head_only))
        finally:
            self._active -= 1
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
            except (TimeoutError, ConnectionError, ssl.SSLError):
                writer.transport.abort()

    async def _read_and_dispatch(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> tuple[Response | None, bool]:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                req = parse_head(head[:-4])
                n = body_length(req)
                if n:
                    req = dataclasses.replace(req, body=await reader.readexactly(n))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return None, False
        except asyncio.LimitOverrunError:
            return Response(431, b"", "text/plain; charset=utf-8"), False
        except BadRequest as exc:
            log.info("event=web_bad_request client=%s reason=%r", client, str(exc))
            return Response(400, b"bad request\n", "text/plain; charset=utf-8"), False
        self.requests += 1
        try:
            resp = await self.dispatch(req, client)
        except Exception:  # a page must never take the agent down
            log.exception("event=web_failed path=%r", req.path[:100])
            resp = Response(500, b"internal error\n", "text/plain; charset=utf-8", [NO_STORE])
        return resp, req.method == "HEAD"

    # -- routing ------------------------------------------------------------------------------

    def _lang(self, req: Request) -> Lang:
        return negotiate(None, req.cookies.get(LANG_COOKIE), req.header("accept-language"), self.s.default_lang)

    def _ctx(self, req: Request, lang: Lang, **kw: Any) -> render.PageContext:
        return render.PageContext(lang=lang, now=self.clock(), fmt_time=local_time, fmt_clock=local_clock,
                                  path=req.path, **kw)

    def _html(self, status: int, html: str, *extra: tuple[str, str]) -> Response:
        return Response(status, html.encode("utf-8"), headers=[NO_STORE, *extra])

    async def dispatch(self, req: Request, client: str) -> Response:
        if self.s.check_host and not host_allowed(req.header("host"), self.allowed_hosts()):
            log.warning("event=web_bad_host client=%s host=%r", client, (req.header("host") or "")[:100])
            return Response(421, b"unknown host name\n", "text/plain; charset=utf-8")
        method = "GET" if req.method == "HEAD" else req.method
        if method == "GET" and req.path.startswith("/static/"):
            return self._static(req.path)
        if method == "GET" and "lang" in req.query:
            lang = as_lang(req.query["lang"])
            if lang is None:
                return self._html(400, render.error_page(self._ctx(req, self._lang(req)), "bad_request"))
            return redirect(req.path, [("Set-Cookie", cookie(LANG_COOKIE, lang, max_age=365 * 86_400,
                                                             secure=self._secure))])
        routes: dict[tuple[str, str], Callable[[Request, str], Awaitable[Response]]] = {
            ("GET", "/login"): self._login_form,
            ("POST", "/login"): self._login,
            ("POST", "/logout"): self._logout,
            ("GET", "/"): self._status,
            ("GET", "/api/status"): self._api_status,
        }
        handler = routes.get((method, req.path))
        if handler is None:
            if any(path == req.path for _, path in routes):
                return Response(405, b"", "text/plain; charset=utf-8", [("Allow", "GET, HEAD, POST")])
            return self._html(404, render.error_page(self._ctx(req, self._lang(req)), "not_found"))
        return await handler(req, client)

    @property
    def _secure(self) -> bool:
        return self.s.tls is not None

    def _static(self, path: str) -> Response:
        files = {"/static/page.css": (CSS, "text/css; charset=utf-8"),
                 "/static/page.js": (JS, "text/javascript; charset=utf-8")}
        if path not in files:
            return Response(404, b"", "text/plain; charset=utf-8")
        text, ctype = files[path]
        return Response(200, text.encode("utf-8"), ctype, [("Cache-Control", "max-age=300")])

    # -- sign in / out --------------------------------------------------------------------------

    def _login_page(self, req: Request, status: int, *, message: str | None = None, error: bool = False,
                    username: str = "", extra: Sequence[tuple[str, str]] = ()) -> Response:
        lang = self._lang(req)
        token = secrets.token_urlsafe(24)
        html = render.login_page(self._ctx(req, lang), self.s.gateway_id, token, message=message, error=error,
                                 username=username)
        return self._html(status, html, ("Set-Cookie", cookie(FORM_COOKIE, token, max_age=FORM_TTL, path="/login",
                                                              secure=self._secure)), *extra)

    async def _login_form(self, req: Request, client: str) -> Response:
        if self.sessions.get(req.cookies.get(SESSION_COOKIE), self.clock()) is not None:
            return redirect("/")
        msg = t(self._lang(req), "logged_out") if req.query.get("out") == "1" else None
        return self._login_page(req, 200, message=msg)

    async def _login(self, req: Request, client: str) -> Response:
        lang = self._lang(req)
        try:
            form = req.form()
        except BadRequest:
            return self._html(400, render.error_page(self._ctx(req, lang), "bad_request"))
        user = form.get("username", "")[:64]
        password = form.get("password", "")
        if not csrf_ok(req.cookies.get(FORM_COOKIE, ""), form.get("form")):
            return self._login_page(req, 403, message=t(lang, "login_expired"), error=True, username=user)
        now = self.clock()
        wait = max(self.throttle.retry_after(f"addr:{client}", now), self.throttle.retry_after(f"user:{user}", now))
        if wait > 0:
            log.warning("event=web_login_throttled client=%s user=%r retry_after=%.0f", client, user, wait)
            return self._login_page(req, 429, message=t(lang, "login_throttled", seconds=int(wait) + 1),
                                    error=True, username=user, extra=[("Retry-After", str(int(wait) + 1))])
        ok = await self._check_password(user, password)
        now = self.clock()
        if not ok:
            self.throttle.failed(f"addr:{client}", now)
            self.throttle.failed(f"user:{user}", now)
            log.warning("event=web_login_failed client=%s user=%r", client, user)
            return self._login_page(req, 401, message=t(lang, "login_failed"), error=True, username=user)
        self.throttle.succeeded(f"addr:{client}")
        self.throttle.succeeded(f"user:{user}")
        token, _ = self.sessions.create(user, now)
        log.info("event=web_login user=%r client=%s sessions=%d", user, client, len(self.sessions))
        return redirect("/", [
            ("Set-Cookie", cookie(SESSION_COOKIE, token, max_age=int(self.s.session_ttl), secure=self._secure)),
            ("Set-Cookie", cookie(FORM_COOKIE, "", max_age=0, path="/login", secure=self._secure)),
        ])

    async def _check_password(self, user: str, password: str) -> bool:
        try:
            users = await asyncio.to_thread(read_users, self.s.passwords)
        except PasswordFileUnusable as exc:
            log.error("event=web_password_file_unusable reason=%r", str(exc))
            users = {}
        stored = users.get(user)
        async with self._verify_lock:
            # An unknown user costs the same hash as a known one: timing does not reveal names.
            ok = await asyncio.to_thread(verify_password, password, stored or DUMMY)
        return ok and stored is not None

    async def _logout(self, req: Request, client: str) -> Response:
        token = req.cookies.get(SESSION_COOKIE)
        session = self.sessions.get(token, self.clock())
        if session is None:
            return redirect("/login")
        try:
            form = req.form()
        except BadRequest:
            form = {}
        if not csrf_ok(session.csrf, form.get("csrf")):
            log.warning("event=web_csrf_refused client=%s path=/logout", client)
            return self._html(403, render.error_page(self._ctx(req, self._lang(req)), "bad_request"))
        self.sessions.drop(token)
        log.info("event=web_logout user=%r client=%s", session.user, client)
        return redirect("/login?out=1", [("Set-Cookie", cookie(SESSION_COOKIE, "", max_age=0,
                                                               secure=self._secure))])

    # -- pages ----------------------------------------------------------------------------------

    async def _status(self, req: Request, client: str) -> Response:
        session = self.sessions.get(req.cookies.get(SESSION_COOKIE), self.clock())
        if session is None:
            return redirect("/login")
        view = await self._collect()
        series = {d: self.history.series(d) for d in self.history.devices()}
        ctx = self._ctx(req, self._lang(req), user=session.user, csrf=session.csrf)
        html = render.status_page(ctx, view, series, history_size=self.history.size, refresh=self.s.refresh)
        return self._html(200, html)

    async def _api_status(self, req: Request, client: str) -> Response:
        if self.sessions.get(req.cookies.get(SESSION_COOKIE), self.clock()) is None:
            return Response(401, b'{"error":"unauthorized"}\n', "application/json", [NO_STORE])
        view = await self._collect()
        body = dataclasses.asdict(view)
        body["history"] = {d: self.history.series(d) for d in self.history.devices()}
        return Response(200, json.dumps(body, default=str).encode(), "application/json", [NO_STORE])
