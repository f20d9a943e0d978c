"""A minimal HTTP endpoint for Prometheus: ``GET /metrics`` only, one request per connection.

Bound only to the address configured in ``[metrics] listen`` (the gateway's service
interface); there is no other route. Requests are read with a deadline and a size limit so
a slow or hostile client cannot hold the agent's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from agent.ops.metrics import CONTENT_TYPE, parse_listen

__all__ = ["MetricsServer", "parse_listen"]

log = logging.getLogger("urbanedge.metrics")

READ_TIMEOUT = 5.0
MAX_HEADER = 8192


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8", extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{extra}\r\n")
    return head.encode("ascii") + body


class MetricsServer:
    def __init__(self, host: str, port: int, collect: Callable[[], Awaitable[str]]) -> None:
        self.host, self.port = host, port
        self._collect = collect
        self._server: asyncio.Server | None = None
        self.scrapes = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        # With port 0 the kernel picks one: report the real address.
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=metrics_listening address=%s:%d", self.host, self.port)

    async def serve(self) -> None:
        """Start (if not yet) and serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            await self._server.serve_forever()
        finally:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            if len(head) > MAX_HEADER:
                writer.write(_response("431 Request Header Fields Too Large", b""))
                return
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) != 3:
                writer.write(_response("400 Bad Request", b"bad request line\n"))
                return
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            if target != b"/metrics":
                writer.write(_response("404 Not Found", b"only /metrics\n"))
                return
            if method not in (b"GET", b"HEAD"):
                writer.write(_response("405 Method Not Allowed", b"", extra="Allow: GET, HEAD\r\n"))
                return
            try:
                body = (await self._collect()).encode("utf-8")
            except Exception as exc:  # a scrape must never take the agent down
                log.warning("event=metrics_failed error=%r", exc)
                writer.write(_response("500 Internal Server Error", b"collect failed\n"))
                return
            self.scrapes += 1
            resp = _response("200 OK", body, CONTENT_TYPE)
            writer.write(resp if method == b"GET" else resp[: len(resp) - len(body)])
        finally:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
            except (TimeoutError, ConnectionError):
                writer.transport.abort()
