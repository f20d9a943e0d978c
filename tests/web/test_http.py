"""The small HTTP layer (pure): request parsing limits, cookies, headers on every response."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.web.http import MAX_BODY, BadRequest, Response, body_length, cookie, parse_head, redirect


def test_parse_request() -> None:
    req = parse_head(b"GET /login?lang=vi&x=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nCookie: a=1; ue_session=abc\r\n"
                     b"Accept-Language: vi")
    assert (req.method, req.path, dict(req.query)) == ("GET", "/login", {"lang": "vi", "x": "1"})
    assert req.header("HOST") == "10.0.0.1:8080"
    assert req.cookies == {"a": "1", "ue_session": "abc"}


@pytest.mark.parametrize("head", [b"GET /", b"GET http://x/ HTTP/1.1", b"GET / SPDY/3", b"GET / HTTP/1.1\r\nbad",
                                  b"GET / HTTP/1.1\r\n Host: x", b"G" * 9000])
def test_bad_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_head(head)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_bad_request(head: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_head(head)


def test_body_limits() -> None:
    def req(h: str) -> object:
        return parse_head(f"POST /login HTTP/1.1\r\n{h}".encode())
    assert body_length(req("Content-Length: 12")) == 12  # type: ignore[arg-type]
    for h in (f"Content-Length: {MAX_BODY + 1}", "Content-Length: -1", "Transfer-Encoding: chunked"):
        with pytest.raises(BadRequest):
            body_length(req(h))  # type: ignore[arg-type]


def test_form_needs_urlencoded_utf8() -> None:
    ok = parse_head(b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded")
    assert replace(ok, body=b"username=t%C3%A9ch&password=a+b&username=2").form() == \
        {"username": "téch", "password": "a b"}
    with pytest.raises(BadRequest):
        replace(ok, body=b"\xff=1").form()
    with pytest.raises(BadRequest):
        replace(parse_head(b"POST / HTTP/1.1\r\nContent-Type: text/plain"), body=b"a=1").form()
    with pytest.raises(BadRequest):
        replace(ok, body=b"&".join(b"f%d=1" % i for i in range(50))).form()


def test_every_response_has_the_security_headers() -> None:
    head = Response(200, b"hi").encode().split(b"\r\n\r\n", 1)[0].decode()
    assert "Content-Security-Policy: default-src 'none';" in head and "frame-ancestors 'none'" in head
    assert "X-Frame-Options: DENY" in head and "X-Content-Type-Options: nosniff" in head
    assert Response(200, b"body").encode(head_only=True).endswith(b"\r\n\r\n")
    with pytest.raises(ValueError):
        Response(200, headers=[("Location", "/\r\nSet-Cookie: x=1")]).encode()


def test_cookies_and_redirects() -> None:
    assert cookie("ue_session", "tok", max_age=60) == "ue_session=tok; Path=/; HttpOnly; SameSite=Strict; Max-Age=60"
    assert cookie("a", "b", max_age=None, secure=True).endswith("Secure")
    assert ("Location", "/") in redirect("//evil.example/").headers
    assert ("Location", "/") in redirect("https://evil.example/").headers
    assert ("Location", "/login?out=1") in redirect("/login?out=1").headers
