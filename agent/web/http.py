"""[pure] Just enough HTTP/1.1 for the local web page: parse a request head, cookies and a
form body; build a response with the security headers every page carries.

One request per connection (``Connection: close``), like the metrics endpoint: the page is
used by one technician at a time, and a closed connection holds no memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 8192
MAX_BODY = 8192

# No inline script or style, nothing from elsewhere, never framed. 'self' for the
# script/style files; connect-src for the auto-refresh fetch; form-action for sign in/out.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on form posts.
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
)
NO_STORE = ("Cache-Control", "no-store")


class BadRequest(ValueError):
    """A request that cannot be parsed; the message is for the log, not the client."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its first value
    cookies: Mapping[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (first value of each field)."""
        ctype = (self.header("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise BadRequest(f"form body of type {ctype!r}")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest("form body is not UTF-8") from exc
        try:
            fields = parse_qsl(text, keep_blank_values=True, max_num_fields=20)
        except ValueError as exc:
            raise BadRequest("too many form fields") from exc
        out: dict[str, str] = {}
        for k, v in fields:
            out.setdefault(k, v)
        return out


def parse_cookies(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def parse_head(head: bytes) -> Request:
    """The request line and headers (everything up to the blank line). Raises BadRequest."""
    if len(head) > MAX_HEAD:
        raise BadRequest("header too large")
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header line")
        headers.setdefault(name.lower(), value.strip())
    split = urlsplit(target)
    try:
        query = dict(parse_qsl(split.query, keep_blank_values=True, max_num_fields=20))
    except ValueError as exc:
        raise BadRequest("too many query fields") from exc
    return Request(method, split.path, query, headers, parse_cookies(headers.get("cookie")))


def body_length(req: Request) -> int:
    """The declared body length (0 if none). Raises BadRequest if invalid or over MAX_BODY."""
    if "transfer-encoding" in req.headers:
        raise BadRequest("chunked bodies are not accepted")
    raw = req.header("content-length")
    if raw is None:
        return 0
    if not raw.isdigit():
        raise BadRequest("bad Content-Length")
    n = int(raw)
    if n > MAX_BODY:
        raise BadRequest("body too large")
    return n


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, head_only: bool = False) -> bytes:
        reason = REASONS.get(self.status, "Unknown")
        for k, v in self.headers:
            if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
                raise ValueError("header injection")
        lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (*SECURITY_HEADERS, *self.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


REASONS = {200: "OK", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large", 421: "Misdirected Request",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


def cookie(name: str, value: str, *, max_age: int | None, path: str = "/", secure: bool = False) -> str:
    """A ``Set-Cookie`` value: always HttpOnly and SameSite=Strict (no cross-site request carries it)."""
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def redirect(location: str, extra: Sequence[tuple[str, str]] = ()) -> Response:
    # Only local paths: a redirect target never comes from elsewhere.
    if not location.startswith("/") or location.startswith("//"):
        location = "/"
    return Response(303, b"", "text/plain; charset=utf-8", [("Location", location), NO_STORE, *extra])


def host_allowed(host_header: str | None, allowed: Sequence[str]) -> bool:
    """Against DNS rebinding: the Host header must name this server as configured."""
    if host_header is None:
        return False
    return host_header.lower() in allowed
