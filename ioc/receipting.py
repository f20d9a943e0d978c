"""Publishes the IOC's signed receipts (``ioc.receipts``) for the sources it verified.

Wraps the receiver's record sink: every stored batch updates the source's counts; a receipt
goes out at most once per ``every`` seconds per source (the rest on the receiver's idle
tick), retained, so an installer who subscribes later still sees the latest one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from ioc.pipeline import RecordSink
from ioc.receipts import make_receipt, receipt_topic
from pki.envelope import SigningKey

log = logging.getLogger("urbanedge.ioc")


@dataclass
class _Counts:
    cert_serial: str = ""
    records: int = 0
    telemetry: int = 0
    seq_max: int = 0
    last_ts: float = 0.0
    sent_at: float = 0.0
    dirty: bool = False


class ReceiptPublisher:
    def __init__(self, inner: RecordSink | None, key: SigningKey, chain: Sequence[x509.Certificate],
                 publish: Callable[[str, bytes], None], *, prefix: str, every: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.inner, self.key, self.chain = inner, key, list(chain)
        self.publish, self.prefix, self.every, self.clock = publish, prefix, every, clock
        self._counts: dict[str, _Counts] = {}
        self.sent = 0

    def write(self, source: str, records: Sequence[Mapping[str, Any]], *,
              verified: Mapping[str, Any] | None = None) -> int:
        n = self.inner.write(source, records, verified=verified) if self.inner is not None else len(records)
        c = self._counts.setdefault(source, _Counts())
        if verified is not None and verified.get("cert_serial"):
            c.cert_serial = str(verified["cert_serial"])
        for r in records:
            c.records += 1
            c.telemetry += r.get("type") == "telemetry"
            c.seq_max = max(c.seq_max, int(r.get("seq", 0)))
            c.last_ts = max(c.last_ts, float(r.get("ts", 0.0)))
        c.dirty = bool(records) or c.dirty
        self.flush()
        return n

    def flush(self) -> None:
        now = self.clock()
        for source, c in self._counts.items():
            if not c.dirty or now - c.sent_at < self.every:
                continue
            data = make_receipt(self.key, self.chain, source=source, cert_serial=c.cert_serial, records=c.records,
                                telemetry=c.telemetry, seq_max=c.seq_max, last_ts=c.last_ts, now=now)
            try:
                self.publish(receipt_topic(self.prefix, source), data)
            except Exception as exc:  # the broker is away: the next tick tries again
                log.warning("event=ioc_receipt_failed source=%s problem=%r", source, str(exc))
                continue
            c.dirty, c.sent_at = False, now
            self.sent += 1
            log.info("event=ioc_receipt source=%s records=%d telemetry=%d seq_max=%d", source, c.records,
                     c.telemetry, c.seq_max)
