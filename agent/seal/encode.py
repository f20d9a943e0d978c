"""[pure] The one function between outbox records and the bytes of an uplink message.

Every batch is sealed before it leaves: the records become the CBOR payload of
``agent/seal/payload.py``, which is signed by the gateway (COSE_Sign1) and encrypted to
the IOC (COSE_Encrypt) by ``pki/envelope.py``. Nothing in the uplink ever sees plaintext.

Sealing happens here, at send time, not when a record is written to the outbox: one
envelope costs ≈250 bytes and ≈150 µs, so it pays off only over a batch (60 readings or
more); records written one poll at a time would each carry it. docs/design.md
("Where sealing happens") gives the trade-off and what protects the outbox at rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

from agent.buffer.records import StoredRecord
from agent.seal.payload import PayloadError
from agent.seal.payload import encode as encode_payload
from pki.envelope import Sealer, sign1

__all__ = ["BatchSealer", "PayloadError"]


class BatchSealer:
    """Seals batches of one source (a gateway) with its key, to the IOC recipient."""

    def __init__(self, source: str, sealer: Sealer, chain_der: Sequence[bytes]) -> None:
        if not source:
            raise PayloadError("source must not be empty")
        self.source = source
        self.sealer = sealer
        self.chain_der = tuple(chain_der)

    def encode(self, records: Sequence[StoredRecord], *, sent_ts: float) -> bytes:
        """The sealed message carrying ``records``; :class:`PayloadError` if a record is corrupt."""
        return self.sealer.seal(encode_payload(self.source, records, sent_ts=sent_ts))

    def check(self, record: StoredRecord) -> None:
        """Raise :class:`PayloadError` if ``record`` cannot go into any payload (no crypto)."""
        encode_payload(self.source, [record], sent_ts=record.ts)

    def announcement(self, *, ts: float) -> bytes:
        """The certificate announcement: a COSE_Sign1 carrying our chain in x5chain, so the
        IOC can learn the certificate that the ``x5t`` of every sealed batch names."""
        body = cbor2.dumps({"src": self.source, "ts": round(ts, 3)})
        return sign1(body, self.sealer.signing_key, self.sealer.cert_der, chain=self.chain_der)
