"""The IOC's signed receipts (ioc/receipts.py): only the IOC's command key, chaining to the
provincial root, makes one an installer accepts."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ioc.receipts import ReceiptError, make_receipt, verify_receipt
from pki.keys import load_cert, load_certs, load_private_key
from pki.throwaway import build_throwaway_pki
from tests.support import testpki


def _ioc_signer() -> tuple[ec.EllipticCurvePrivateKey, list]:  # type: ignore[type-arg]
    pki = testpki.shared_pki()
    key = load_private_key(pki.ioc_command_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, [load_cert(pki.ioc_command_cert), load_cert(pki.issuing_cert)]


def _receipt(key: ec.EllipticCurvePrivateKey, chain: list, source: str = "node-9") -> bytes:  # type: ignore[type-arg]
    return make_receipt(key, chain, source=source, cert_serial="abc123", records=7, telemetry=5, seq_max=9,
                        last_ts=1_796_000_000.5, now=time.time())


def test_a_receipt_from_the_ioc_verifies_with_only_the_root() -> None:
    key, chain = _ioc_signer()
    root = load_cert(testpki.shared_pki().root_cert)
    r = verify_receipt(_receipt(key, chain), root, at=datetime.now(UTC))
    assert (r.source, r.cert_serial, r.records, r.telemetry, r.seq_max) == ("node-9", "abc123", 7, 5, 9)
    assert r.signer == "ioc-command"


def test_a_device_cannot_sign_a_receipt() -> None:
    creds = testpki.device("gw-pretender")
    key = load_private_key(creds.key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    root = load_cert(testpki.shared_pki().root_cert)
    with pytest.raises(ReceiptError) as err:
        verify_receipt(_receipt(key, load_certs(creds.chain)), root, at=datetime.now(UTC))
    assert err.value.reason == "not_ioc"


def test_tampered_foreign_and_expired_receipts_are_refused(tmp_path: Path) -> None:
    key, chain = _ioc_signer()
    root = load_cert(testpki.shared_pki().root_cert)
    data = bytearray(_receipt(key, chain))
    data[-70] ^= 1  # inside the payload, before the signature
    with pytest.raises(ReceiptError) as err:
        verify_receipt(bytes(data), root, at=datetime.now(UTC))
    assert err.value.reason in ("bad_signature", "malformed")
    other = build_throwaway_pki(tmp_path / "other", [])
    with pytest.raises(ReceiptError) as err:
        verify_receipt(_receipt(key, chain), load_cert(other.root_cert), at=datetime.now(UTC))
    assert err.value.reason == "untrusted"
    with pytest.raises(ReceiptError) as err:
        verify_receipt(_receipt(key, chain), root, at=datetime.now(UTC) + timedelta(days=4000))
    assert err.value.reason == "untrusted"
    with pytest.raises(ReceiptError) as err:
        verify_receipt(b"\xd2\x84garbage", root, at=datetime.now(UTC))
    assert err.value.reason == "malformed"
