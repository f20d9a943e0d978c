"""Security events the agent raises outside command handling: TLS handshake failures with the
broker and our own certificate nearing expiry. The decisions are in :mod:`agent.security.events`;
this is the thin asyncio side: a bounded queue the forwarder's callback feeds, and one task
that appends to the outbox and looks at the certificate twice a day."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from cryptography import x509

from agent import aio
from agent.buffer.records import NewRecord
from agent.ops.metrics import counters
from agent.security.events import RateLimit, certificate_expiry, security_event

log = logging.getLogger("urbanedge.security")

Append = Callable[[list[NewRecord]], Awaitable[object]]
REPEAT_EVERY = 3600.0  # s: the same certificate problem is reported at most this often
CERT_CHECK_EVERY = 12 * 3600.0
QUEUE_MAX = 64


def tls_problem(exc: BaseException) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``exc`` (or what caused it) is a TLS failure, else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return "broker_certificate_rejected", f"{cur.verify_message or cur} (verify code {cur.verify_code})"
        if isinstance(cur, ssl.SSLError):
            return "tls_handshake_failed", str(cur.reason or cur)
        cur = cur.__cause__ or cur.__context__
    return None


class SecurityMonitor:
    def __init__(self, source: str, *, clock: Callable[[], float] = time.time,
                 repeat_every: float = REPEAT_EVERY, cert_check_every: float = CERT_CHECK_EVERY) -> None:
        self.source = source
        self.clock = clock
        self.cert_check_every = cert_check_every
        self._limit = RateLimit(repeat_every)
        self._queue: asyncio.Queue[NewRecord] = asyncio.Queue(QUEUE_MAX)

    def on_connect_failure(self, exc: BaseException) -> None:
        """The forwarder's ``on_connect_failure``: called in the event loop, must not block."""
        found = tls_problem(exc)
        if found is None:
            return
        reason, detail = found
        now = self.clock()
        if not self._limit.allow(f"tls:{reason}", now):
            return
        log.warning("event=security_tls_failure reason=%s detail=%r", reason, detail)
        self._put(security_event(self.source, now, category="certificate", reason=reason, detail=detail))

    def check_certificate(self, cert_der: bytes) -> None:
        cert = x509.load_der_x509_certificate(cert_der)
        now = self.clock()
        found = certificate_expiry(cert.not_valid_after_utc.timestamp(), now)
        if found is None or not self._limit.allow(f"cert:{found[0]}", now):
            return
        reason, detail = found
        log.warning("event=security_own_certificate reason=%s detail=%r serial=%x", reason, detail,
                    cert.serial_number)
        self._put(security_event(self.source, now, category="certificate", reason=reason, detail=detail,
                                 cert_serial=f"{cert.serial_number:x}",
                                 not_after=round(cert.not_valid_after_utc.timestamp(), 3)))

    def _put(self, rec: NewRecord) -> None:
        counters.inc("security_events", kind="certificate")
        try:
            self._queue.put_nowait(rec)
        except asyncio.QueueFull:
            log.warning("event=security_event_dropped reason=queue_full")

    async def run(self, append: Append, cert_der: bytes) -> None:
        """Until cancelled: write queued events to the outbox; check our certificate now and then."""
        next_check = 0.0
        while True:
            if time.monotonic() >= next_check:
                self.check_certificate(cert_der)
                next_check = time.monotonic() + self.cert_check_every
            try:
                rec = await aio.wait_for(self._queue.get(), max(0.0, next_check - time.monotonic()))
            except TimeoutError:
                continue
            batch = [rec]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await append(batch)
