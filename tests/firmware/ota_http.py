"""A real static HTTP/1.1 server over a release repository directory for the node OTA tests,
on a free loopback port: GET with single ``Range: bytes=a-b`` requests (206), 404 for what is
missing, and two faults the tests switch on per path:

- ``cut(path, after)``: the next response for ``path`` stops after ``after`` body bytes and the
  connection closes (a Wi-Fi drop mid-download);
- ``hold(path)``: responses for ``path`` wait until ``release(path)`` (a slow link, so a test can
  kill the node at a known step).

Every request is recorded as ``(path, range header or None)``.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class RepoServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self._cuts: dict[str, int] = {}
        self._holds: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def cut(self, path: str, after: int) -> None:
        with self._lock:
            self._cuts[path] = after

    def hold(self, path: str) -> None:
        with self._lock:
            self._holds[path] = threading.Event()

    def release(self, path: str) -> None:
        with self._lock:
            ev = self._holds.pop(path, None)
        if ev is not None:
            ev.set()

    def requested(self, path: str) -> list[str | None]:
        with self._lock:
            return [r for p, r in self.requests if p == path]

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        with self._lock:
            holds = list(self._holds.values())
            self._holds.clear()
        for ev in holds:
            ev.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rel = self.path.lstrip("/")
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((rel, rng))
                    hold = server._holds.get(rel)
                    cut = server._cuts.pop(rel, None)
                if hold is not None:
                    hold.wait(60)
                target = (server.root / rel).resolve()
                if ".." in rel or not target.is_relative_to(server.root.resolve()) or not target.is_file():
                    self._send(404, b"not found\n")
                    return
                data = target.read_bytes()
                status, first, last = 200, 0, len(data) - 1
                if rng is not None:
                    m = _RANGE.match(rng)
                    if m is None or int(m.group(1)) >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    first = int(m.group(1))
                    if m.group(2):
                        last = min(int(m.group(2)), len(data) - 1)
                    status = 206
                body = data[first:last + 1]
                headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"} if status == 206 else {}
                self._send(status, body, headers, cut)

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                      cut: int | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    self.wfile.write(body if cut is None else body[:cut])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the node was reset mid-download: what the tests do on purpose

        return Handler


# -- releases for the tests ------------------------------------------------------------------

def sign_raw(payload_map: dict[str, object], key: object, *, kid: bytes | None = None,
             protected: dict[int, int] | None = None) -> bytes:
    """A COSE_Sign1 over any payload map, skipping the release tool's own checks: how the tests
    make the manifests a careless or hostile publisher could produce."""
    import cbor2
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    from ota.node_manifest import key_id, public_sec1

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    prot = cbor2.dumps(protected or {1: -7})
    payload = cbor2.dumps(payload_map)
    der = key.sign(cbor2.dumps(["Signature1", prot, b"", payload]), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    k = kid if kid is not None else key_id(public_sec1(key.public_key()))
    return bytes(cbor2.dumps(cbor2.CBORTag(18, [prot, {4: k}, payload, r.to_bytes(32, "big") + s.to_bytes(32, "big")])))
