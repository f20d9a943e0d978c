"""Signed receipts: the IOC tells a device's installer "I verified and stored its readings".

A technician's laptop cannot open a device's readings (they are encrypted to the IOC), and
must not trust the broker. So the IOC receiver, once it has stored a verified batch from a
source, publishes a retained receipt on ``<prefix>/_ioc/receipts/<source>``: a COSE_Sign1 by
the IOC's command key (profile ``ioc-command``) with its chain in x5chain, over

    {"v": 1, "src": <source>, "cert_serial": <hex serial of the certificate that signed the
     readings>, "records": n, "telemetry": n, "seq_max": n, "last_ts": <unix s>, "ts": <unix s>}

The installer verifies it with only the provincial root: the chain, the signer being the IOC
(its configured id, and not a device certificate: no clientAuth), and that ``cert_serial`` is
the certificate it just installed. The receipt holds counts, never values: readings stay
end-to-end encrypted. ``_ioc`` cannot be a site name (sites never start with ``_``... and the
topic has one level more than a data topic), so no data subscription ever sees a receipt.

Pure code: building and checking the bytes; the receiver and the installer do the MQTT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cbor2
from cryptography import x509

from pki.envelope import EnvelopeError, SigningKey, parse_sign1, sign1
from pki.ioc_signer import IocSignerError, verify_ioc_sign1

DEFAULT_IOC_ID = "ioc-command"
MAX_RECEIPT_BYTES = 16 * 1024


def receipt_topic(prefix: str, source: str) -> str:
    return f"{prefix}/_ioc/receipts/{source}"


class ReceiptError(Exception):
    """The receipt is not one the IOC made for us; ``reason`` says why, ``detail`` how."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Receipt:
    source: str
    cert_serial: str
    records: int
    telemetry: int
    seq_max: int
    last_ts: float
    issued: float
    signer: str


def make_receipt(key: SigningKey, chain: Sequence[x509.Certificate], *, source: str, cert_serial: str,
                 records: int, telemetry: int, seq_max: int, last_ts: float, now: float) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    ders = [c.public_bytes(Encoding.DER) for c in chain]
    body = {"v": 1, "src": source, "cert_serial": cert_serial, "records": records, "telemetry": telemetry,
            "seq_max": seq_max, "last_ts": round(last_ts, 3), "ts": round(now, 3)}
    return sign1(cbor2.dumps(body, canonical=True), key, ders[0], chain=ders)


def verify_receipt(data: bytes, root: x509.Certificate, *, at: datetime,
                   crls: Sequence[x509.CertificateRevocationList] = (), ioc_id: str = DEFAULT_IOC_ID) -> Receipt:
    """The receipt in ``data`` if the IOC (``ioc_id``, chaining to ``root``) signed it."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise ReceiptError("malformed", f"{len(data)} bytes")
    try:
        s1 = parse_sign1(data)
    except EnvelopeError as exc:
        raise ReceiptError("malformed", exc.problem) from None
    if not s1.x5chain:
        raise ReceiptError("malformed", "no certificate chain in the receipt")
    try:
        signer = verify_ioc_sign1(s1, root, at=at, ioc_id=ioc_id, crls=crls)
    except IocSignerError as exc:
        raise ReceiptError(exc.reason, exc.detail) from None
    try:
        body: Any = cbor2.loads(s1.payload)
        return Receipt(source=str(body["src"]), cert_serial=str(body["cert_serial"]), records=int(body["records"]),
                       telemetry=int(body["telemetry"]), seq_max=int(body["seq_max"]),
                       last_ts=float(body["last_ts"]), issued=float(body["ts"]), signer=signer)
    except (ValueError, KeyError, TypeError, cbor2.CBORDecodeError) as exc:
        raise ReceiptError("malformed", f"receipt payload: {exc!r}") from None


