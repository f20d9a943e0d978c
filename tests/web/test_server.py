"""The web server over real loopback sockets, in-process so the clock can be moved: sign in,
throttling, session expiry, CSRF on sign out, the password file's mode, limits and methods.
(The agent process with a browser is tests/web/test_web_browser.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.web.auth import MIN_ITERATIONS
from agent.web.history import ReadingHistory
from agent.web.passwords import set_password
from agent.web.render import DeviceRow, StatusView
from agent.web.server import WebServer, WebSettings

PASSWORD = "a long enough password"
VIEW = StatusView("gw-1", "1.0", 0.0, [DeviceRow("sl-1", "lan", "streetlight", True, 95.0, "good", 3, 3, {})],
                  None, "online", {}, {}, "", None)


@dataclass
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return v[0] if v else None

    def cookie(self, name: str) -> str | None:
        for c in self.headers.get("set-cookie", []):
            k, _, rest = c.partition("=")
            if k == name:
                return rest.split(";", 1)[0]
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await reader.read()
    writer.close()
    return out


async def call(port: int, method: str, path: str, *, cookies: dict[str, str] | None = None,
               form: dict[str, str] | None = None, host: str | None = None, head: str = "") -> Reply:
    body = urllib.parse.urlencode(form).encode() if form is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
    if cookies:
        lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in cookies.items()))
    if form is not None:
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
    data = await raw(port, ("\r\n".join(lines) + "\r\n" + head + "\r\n").encode() + body)
    top, _, rest = data.partition(b"\r\n\r\n")
    status_line, *hdr_lines = top.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for h in hdr_lines:
        k, _, v = h.partition(":")
        headers.setdefault(k.lower(), []).append(v.strip())
    return Reply(int(status_line.split()[1]), headers, rest)


async def login(port: int, user: str, password: str) -> Reply:
    form_page = await call(port, "GET", "/login")
    token = form_page.cookie("ue_form")
    assert token
    return await call(port, "POST", "/login", cookies={"ue_form": token},
                      form={"form": token, "username": user, "password": password})


Scenario = Callable[[WebServer, int, Clock], Awaitable[Any]]


def serve(tmp_path: Path, scenario: Scenario, *, mode: int = 0o600, tls: ssl.SSLContext | None = None) -> Any:
    pw = tmp_path / "passwords"
    set_password(pw, "tech", PASSWORD, iterations=MIN_ITERATIONS)
    pw.chmod(mode)
    history = ReadingHistory(5)
    for i in range(7):
        history.add("sl-1", 90.0 + i, {"voltage": 230 + i, "lamp_on": True, "label": "x"})  # type: ignore[dict-item]

    async def collect() -> StatusView:
        return VIEW

    async def main() -> Any:
        clock = Clock()
        server = WebServer(WebSettings(host="127.0.0.1", port=0, passwords=pw, gateway_id="gw-1",
                                       default_lang="en", session_ttl=3600, idle_timeout=600, tls=tls),
                           collect, history, clock=clock)
        await server.start()
        task = asyncio.create_task(server.serve())
        try:
            return await scenario(server, server.port, clock)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return asyncio.run(main())


def test_sign_in_then_page_and_api_then_idle_expiry(tmp_path: Path) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        r = await login(port, "tech", PASSWORD)
        assert r.status == 303 and r.header("location") == "/"
        session = r.cookie("ue_session")
        assert session and len(session) >= 40
        page = await call(port, "GET", "/", cookies={"ue_session": session})
        assert page.status == 200 and b"sl-1" in page.body and page.header("cache-control") == "no-store"
        api = await call(port, "GET", "/api/status", cookies={"ue_session": session})
        data = json.loads(api.body)
        assert data["devices"][0]["id"] == "sl-1"
        # The ring keeps the last 5 readings; only numbers (booleans as 0/1) are charted.
        assert [v for _, v in data["history"]["sl-1"]["voltage"]] == [232, 233, 234, 235, 236]
        assert data["history"]["sl-1"]["lamp_on"][-1][1] == 1
        assert "label" not in data["history"]["sl-1"]
        clock.now += 601  # idle longer than idle_timeout
        assert (await call(port, "GET", "/", cookies={"ue_session": session})).header("location") == "/login"
        assert (await call(port, "GET", "/api/status", cookies={"ue_session": session})).status == 401
    serve(tmp_path, scenario)


def test_failed_sign_ins_are_throttled_even_with_the_right_password(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        for _ in range(5):
            assert (await login(port, "tech", "wrong guess")).status == 401
        r = await login(port, "tech", PASSWORD)
        assert r.status == 429 and r.cookie("ue_session") is None
        assert int(r.header("retry-after") or 0) > 0
        assert b"Too many failed sign-ins" in r.body
        clock.now += 31
        assert (await login(port, "tech", PASSWORD)).status == 303
        # Unknown users fail the same way (and cost the same hash).
        assert (await login(port, "nobody", PASSWORD)).status == 401
    with caplog.at_level(logging.INFO, logger="urbanedge.web"):
        serve(tmp_path, scenario)
    assert "event=web_login_throttled" in caplog.text and "event=web_login user='tech'" in caplog.text


def test_sign_out_needs_the_csrf_token(tmp_path: Path) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        session = (await login(port, "tech", PASSWORD)).cookie("ue_session")
        assert session
        page = (await call(port, "GET", "/", cookies={"ue_session": session})).body.decode()
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = await call(port, "POST", "/logout", cookies={"ue_session": session}, form={"csrf": "forged"})
        assert r.status == 403
        assert (await call(port, "GET", "/", cookies={"ue_session": session})).status == 200
        r = await call(port, "POST", "/logout", cookies={"ue_session": session}, form={"csrf": csrf})
        assert r.status == 303 and r.header("location") == "/login?out=1"
        assert (await call(port, "GET", "/", cookies={"ue_session": session})).status == 303
        assert b"You have signed out." in (await call(port, "GET", "/login?out=1")).body
    serve(tmp_path, scenario)


def test_a_password_file_others_can_read_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> int:
        return (await login(port, "tech", PASSWORD)).status
    with caplog.at_level(logging.ERROR, logger="urbanedge.web"):
        assert serve(tmp_path, scenario, mode=0o644) == 401
    assert "event=web_password_file_unusable" in caplog.text and "chmod 600" in caplog.text


def test_language_choice_is_remembered(tmp_path: Path) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        r = await call(port, "GET", "/login?lang=vi")
        assert r.status == 303 and r.header("location") == "/login" and r.cookie("ue_lang") == "vi"
        page = await call(port, "GET", "/login", cookies={"ue_lang": "vi"})
        assert b'<html lang="vi">' in page.body and "Đăng nhập".encode() in page.body
        page = await call(port, "GET", "/login", head="Accept-Language: vi-VN,vi;q=0.9\r\n")
        assert b'<html lang="vi">' in page.body
        assert (await call(port, "GET", "/login?lang=fr")).status == 400
    serve(tmp_path, scenario)


def test_methods_limits_and_bad_requests(tmp_path: Path) -> None:
    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        head = await call(port, "HEAD", "/login")
        assert head.status == 200 and head.body == b"" and int(head.header("content-length") or 0) > 0
        assert (await call(port, "PUT", "/")).status == 405
        assert (await call(port, "GET", "/nope")).status == 404
        assert (await call(port, "GET", "/static/page.js")).header("content-type") == "text/javascript; charset=utf-8"
        assert (await call(port, "GET", "/", host="attacker.example")).status == 421
        assert (await raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 431")
        assert (await raw(port, b"BREW /pot\r\n\r\n")).startswith(b"HTTP/1.1 400")
        big = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        assert (await raw(port, big)).startswith(b"HTTP/1.1 400")
        # A login post without the form cookie (cross-site) or with a non-form body: refused.
        r = await call(port, "POST", "/login", form={"form": "x", "username": "tech", "password": PASSWORD})
        assert r.status == 403
        # The server is still serving.
        assert (await call(port, "GET", "/login")).status == 200
    serve(tmp_path, scenario)


def test_https_with_secure_cookies(tmp_path: Path) -> None:
    key, cert = tmp_path / "web.key", tmp_path / "web.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1", "-days", "1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def scenario(server: WebServer, port: int, clock: Clock) -> None:
        async def get(path: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            out = await reader.read()
            writer.close()
            return out
        page = await get("/login")
        assert page.startswith(b"HTTP/1.1 200 ")
        cookies = [line for line in page.split(b"\r\n") if line.startswith(b"Set-Cookie: ue_form=")]
        assert cookies and cookies[0].endswith(b"; Secure")
        # Plain HTTP on the TLS port gets nothing.
        assert not (await raw(port, f"GET /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                    ).startswith(b"HTTP/1.1 200")
    serve(tmp_path, scenario, tls=server_ctx)
