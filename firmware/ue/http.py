# A tiny HTTP/1.1 GET client for the OTA updater, on asyncio streams so the node keeps polling
# and keeping its MQTT link alive while a release downloads.
#
# Plain http:// only: what is fetched is authenticated by the signed manifest (signature, then
# length and SHA-256 of every file), not by the transport. One request per connection
# (Connection: close), bodies streamed in small chunks, never more than the caller's limit:
# a hostile or broken server cannot make the node read or store more than the manifest declared.

import asyncio

CHUNK = 1024
TIMEOUT_MS = 10000
MAX_HEADER_LINES = 40


class HttpError(OSError):
    pass


def split_url(url):
    # "http://host:port/path" -> (host, port, "/path")
    if not url.startswith("http://"):
        raise HttpError("only http:// URLs: %s" % url)
    rest = url[7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    j = hostport.rfind(":")
    if j >= 0:
        return hostport[:j], int(hostport[j + 1:]), path
    return hostport, 80, path


async def _wait(coro, timeout_ms):
    try:
        return await asyncio.wait_for_ms(coro, timeout_ms)
    except asyncio.TimeoutError:
        raise HttpError("timed out")


class Response:
    # Status line and headers read; the body is read with readinto() up to `length` bytes.
    def __init__(self, stream, status, headers, timeout_ms):
        self.stream = stream
        self.status = status
        self.headers = headers
        self.timeout_ms = timeout_ms

    def header_int(self, name, default=-1):
        v = self.headers.get(name)
        try:
            return int(v) if v is not None else default
        except ValueError:
            raise HttpError("bad %s header: %s" % (name, v))

    async def readinto(self, buf):
        return await _wait(self.stream.readinto(buf), self.timeout_ms)

    async def close(self):
        try:
            self.stream.close()
            await self.stream.wait_closed()
        except OSError:
            pass


async def get(url, first=0, last=None, timeout_ms=TIMEOUT_MS):
    """GET url; with first > 0 or last given, asks for bytes first..last (Range). Returns an
    open Response (status + lower-case headers); the caller reads the body and closes it."""
    host, port, path = split_url(url)
    # MicroPython's reader and writer are one Stream object
    stream = (await _wait(asyncio.open_connection(host, port), timeout_ms))[1]
    try:
        req = "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n" % (path, host, port)
        if first or last is not None:
            req += "Range: bytes=%d-%s\r\n" % (first, "" if last is None else str(last))
        stream.write((req + "\r\n").encode())
        await stream.drain()
        line = await _wait(_readline(stream), timeout_ms)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError("not an HTTP response: %r" % line[:40])
        status = int(parts[1])
        headers = {}
        for _ in range(MAX_HEADER_LINES):
            line = await _wait(_readline(stream), timeout_ms)
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        else:
            raise HttpError("too many header lines")
        if headers.get("transfer-encoding", "identity").lower() != "identity":
            raise HttpError("chunked transfer encoding is not supported")
        return Response(stream, status, headers, timeout_ms)
    except BaseException:
        stream.close()
        raise


async def _readline(stream):
    line = await stream.readline()
    if len(line) > 1024:
        raise HttpError("header line too long")
    return line


async def get_small(url, limit, timeout_ms=TIMEOUT_MS):
    """(status, body bytes) of a small resource; HttpError if the body exceeds limit."""
    resp = await get(url, timeout_ms=timeout_ms)
    try:
        if resp.status != 200:
            return resp.status, b""
        n = resp.header_int("content-length")
        if n > limit:
            raise HttpError("%s: %d bytes, at most %d" % (url, n, limit))
        body = bytearray(limit + 1 if n < 0 else n)
        mv = memoryview(body)
        got = 0
        while got < len(body):
            k = await resp.readinto(mv[got:])
            if not k:
                break
            got += k
        if got > limit:
            raise HttpError("%s: more than %d bytes" % (url, limit))
        if n >= 0 and got != n:
            raise HttpError("%s: connection closed after %d of %d bytes" % (url, got, n))
        return 200, bytes(mv[:got])
    finally:
        await resp.close()


async def download(url, path, have, total, timeout_ms=TIMEOUT_MS):
    """Append bytes have..total-1 of url to the file at path (which holds `have` bytes): a
    Range request when resuming. A server that ignores Range (200) makes us start over.
    Returns the file's size afterwards; never writes past `total`."""
    resp = await get(url, first=have, last=total - 1, timeout_ms=timeout_ms)
    try:
        if resp.status == 206:
            cr = resp.headers.get("content-range", "")
            if not cr.startswith("bytes %d-" % have):
                raise HttpError("%s: asked from byte %d, got range %r" % (url, have, cr))
        elif resp.status == 200:
            have = 0
        else:
            raise HttpError("%s: HTTP %d" % (url, resp.status))
        buf = bytearray(CHUNK)
        mv = memoryview(buf)
        with open(path, "ab" if have else "wb") as f:
            while have < total:
                want = min(CHUNK, total - have)
                k = await resp.readinto(mv[:want])
                if not k:
                    break
                f.write(mv[:k])
                have += k
        return have
    finally:
        await resp.close()
