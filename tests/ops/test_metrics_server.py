"""The /metrics HTTP endpoint over real loopback sockets (in-process, port chosen by the kernel)."""

from __future__ import annotations

import asyncio

from agent.ops.metrics_server import MetricsServer


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


async def serve_and(collect: object, *raws: bytes) -> list[bytes]:
    server = MetricsServer("127.0.0.1", 0, collect)  # type: ignore[arg-type]
    await server.start()
    task = asyncio.create_task(server.serve())
    try:
        return [await request(server.port, r) for r in raws]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_routes_and_methods() -> None:
    page = "# HELP x y\n# TYPE x gauge\nx 1\n"

    async def collect() -> str:
        return page

    ok, head, nf, bad, post = asyncio.run(serve_and(
        collect,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /metrics?debug=1 HTTP/1.1\r\n\r\n",
        b"GET /metrics/../etc HTTP/1.1\r\n\r\n",
        b"garbage\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ))
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\n" + page.encode())
    assert b"Content-Type: text/plain; version=0.0.4" in ok
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert f"Content-Length: {len(page)}\r\n".encode() in head  # the GET body's length, without the body
    assert nf.startswith(b"HTTP/1.1 404 ")
    assert bad.startswith(b"HTTP/1.1 400 ")
    assert post.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in post


def test_a_failing_collect_is_a_500_not_a_crash() -> None:
    calls = []

    async def collect() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("outbox closed")
        return "x 1\n"

    first, second = asyncio.run(serve_and(collect, b"GET /metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert first.startswith(b"HTTP/1.1 500 ")
    assert second.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_closes_early_is_ignored() -> None:
    async def collect() -> str:
        return "x 1\n"

    async def run() -> bytes:
        server = MetricsServer("127.0.0.1", 0, collect)
        await server.start()
        task = asyncio.create_task(server.serve())
        try:
            _, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(b"GET /met")
            w.close()
            await w.wait_closed()
            return await request(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(run()).startswith(b"HTTP/1.1 200 ")
