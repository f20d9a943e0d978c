"""Waiting for the IOC to confirm a device: its signed receipt (``ioc.receipts``) naming the
certificate we just installed. The laptop cannot read the device's readings (they are
encrypted to the IOC) and does not trust the broker; the receipt is signed by the IOC."""

from __future__ import annotations

import queue
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from ioc.receipts import DEFAULT_IOC_ID, Receipt, ReceiptError, receipt_topic, verify_receipt
from provisioning.errors import ProvisionError


def wait_for_receipt(host: str, port: int, *, prefix: str, device_id: str, cert_serial: str,
                     root: x509.Certificate, timeout: float, ioc_id: str = DEFAULT_IOC_ID,
                     tls: ssl.SSLContext | None = None, min_telemetry: int = 1,
                     on_tick: Callable[[], None] | None = None) -> Receipt:
    """The first valid receipt for ``device_id`` about ``cert_serial`` with telemetry in it.

    ProvisionError("broker_unreachable") if the broker cannot be reached, ("no_reading") if no
    such receipt came within ``timeout`` (older receipts, for another certificate, or forged
    ones do not count; the last refusal is in the detail)."""
    inbox: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"installer-{uuid.uuid4().hex[:12]}")
    if tls is not None:
        client.tls_set_context(tls)
    topic = receipt_topic(prefix, device_id)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, m: inbox.put(bytes(m.payload))
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        raise ProvisionError("broker_unreachable", f"{host}:{port}: {exc}") from None
    client.loop_start()
    last_problem = "no receipt at all"
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProvisionError("no_reading", f"{device_id}: {last_problem} after {timeout:.0f} s")
            if on_tick is not None:
                on_tick()  # e.g. the node's console: it may say why nothing comes (and raise)
            try:
                data = inbox.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            try:
                r = verify_receipt(data, root, at=datetime.now(UTC), ioc_id=ioc_id)
            except ReceiptError as exc:
                last_problem = f"refused a receipt ({exc.reason}: {exc.detail})"
                continue
            if r.source != device_id or r.cert_serial.lower() != cert_serial.lower():
                last_problem = f"receipt for certificate {r.cert_serial}, not {cert_serial}"
                continue
            if r.telemetry < min_telemetry:
                last_problem = "the IOC has the device's events but no reading yet"
                continue
            return r
    finally:
        client.loop_stop()
        client.disconnect()


@dataclass
class Watch:
    """Where the installer waits for the IOC's receipt, and for how long."""

    host: str
    port: int
    root: Path
    prefix: str = "urbanedge/v1"
    timeout: float = 120.0
    ioc_id: str = DEFAULT_IOC_ID

    def wait(self, device_id: str, cert: x509.Certificate, *, min_telemetry: int = 1,
             on_tick: Callable[[], None] | None = None) -> Receipt:
        from pki.keys import load_cert

        return wait_for_receipt(self.host, self.port, prefix=self.prefix, device_id=device_id,
                                cert_serial=f"{cert.serial_number:x}", root=load_cert(self.root),
                                timeout=self.timeout, ioc_id=self.ioc_id, min_telemetry=min_telemetry,
                                on_tick=on_tick)
