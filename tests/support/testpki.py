"""One throw-away provincial PKI per test process: the IOC side of every test opens with it.

Gateways in tests get a certificate from it on demand (``seal_toml``), and the test
subscriber verifies what they send with only its root, as the IOC does.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from agent.seal.encode import BatchSealer
from ioc.verify import Opener
from pki.keys import load_cert, load_crls, load_private_key
from pki.throwaway import DeviceCreds, ThrowawayPki, build_throwaway_pki

_lock = threading.Lock()
_pki: ThrowawayPki | None = None


def shared_pki() -> ThrowawayPki:
    global _pki
    with _lock:
        if _pki is None:
            d = Path(tempfile.mkdtemp(prefix="ue-test-pki-"))
            atexit.register(shutil.rmtree, d, True)
            _pki = build_throwaway_pki(d / "pki", [])
        return _pki


def device(device_id: str) -> DeviceCreds:
    pki = shared_pki()
    with _lock:
        creds = pki.devices.get(device_id)
        if creds is None:
            creds = pki.issue_device(device_id)
        return creds


def seal_toml(device_id: str) -> str:
    """The ``[seal]`` section of an agent config for ``device_id``."""
    creds, pki = device(device_id), shared_pki()
    return (f'[seal]\nkey = "{creds.key}"\ncert = "{creds.chain}"\n'
            f'recipient = "{pki.ioc_recipient_cert}"\n')


def opener(**kw: object) -> Opener:
    pki = shared_pki()
    key = load_private_key(pki.ioc_recipient_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Opener(key, load_cert(pki.ioc_recipient_cert), load_cert(pki.root_cert),
                  crls=load_crls(pki.crl), **kw)  # type: ignore[arg-type]


def batch_sealer(source: str) -> BatchSealer:
    """What a gateway named ``source`` seals with, from the shared test PKI."""
    from agent.config import Seal
    from agent.seal.credentials import load_credentials

    creds, pki = device(source), shared_pki()
    loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=pki.ioc_recipient_cert), source)
    return BatchSealer(source, loaded.sealer, loaded.chain_der)
