"""The node's start-up checks under the real MicroPython: a bad node.json stops it with exit
code 2 and a message naming the file, the field and the problem; a node without a certificate
makes its key and request (exit 3) and keeps the same key across restarts; certificates that
are not its own are refused."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.profiles import end_entity_profile
from tests.support import testpki
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env

GOOD: dict[str, Any] = {
    "node_id": "wm-pit-0231", "site": "district-3",
    "broker": {"host": "127.0.0.1", "port": 8883},
    "bus": {"port": "/dev/null"},
    "devices": [{"id": "wm-1", "profile": "water-meter", "unit": 2, "interval_s": 60}],
}


def run_main(storage: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(micropython_exe()), "-X", "heapsize=200k", str(FIRMWARE / "main.py")],
                          env={**mp_env(), "UE_STORAGE": str(storage)}, capture_output=True, text=True,
                          timeout=60, check=False)


def with_change(path: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    target = cfg
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "field", "problem"), [
    ("node_id", _DELETE, "node_id", "missing"),
    ("site", "a/b", "site", "without /"),
    ("broker.port", "8883", "broker.port", "expected int"),
    ("broker.port", 70000, "broker.port", "not a TCP port"),
    ("devices", [], "devices", "at least one"),
    ("devices.0.profile", "toaster", "devices[0].profile", "unknown profile"),
    ("devices.0.unit", 0, "devices[0].unit", "1..247"),
    ("devices.0.interval_s", -1, "devices[0].interval_s", "> 0"),
])
def test_bad_config_exits_2_naming_file_field_and_problem(
        tmp_path: Path, path: str, value: Any, field: str, problem: str) -> None:
    (tmp_path / "node.json").write_text(json.dumps(with_change(path, value)))
    res = run_main(tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=config_invalid" in res.stdout
    assert str(tmp_path / "node.json") in res.stdout
    assert field in res.stdout and problem in res.stdout, res.stdout
    assert "Traceback" not in res.stderr


def test_not_json_and_missing_file_are_named(tmp_path: Path) -> None:
    res = run_main(tmp_path)
    assert res.returncode == 2 and "cannot read" in res.stdout
    (tmp_path / "node.json").write_text("{node_id: ")
    res = run_main(tmp_path)
    assert res.returncode == 2 and "not valid JSON" in res.stdout


def test_unprovisioned_node_keeps_its_key_and_refuses_a_foreign_certificate(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text(json.dumps(GOOD))
    first = run_main(tmp_path)
    assert first.returncode == 3 and "event=node_unprovisioned" in first.stdout
    ident = tmp_path / "id"
    key_before = (ident / "node.key").read_bytes()
    csr = x509.load_der_x509_csr((ident / "node.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=wm-pit-0231"
    assert run_main(tmp_path).returncode == 3
    assert (ident / "node.key").read_bytes() == key_before  # a restart never makes a second key

    # A certificate for another key (someone else's) is refused at start, by name.
    pki = testpki.shared_pki()
    other = testpki.device("someone-else")
    der = serialization.Encoding.DER
    (ident / "node.crt").write_bytes(x509.load_pem_x509_certificate(other.cert.read_bytes()).public_bytes(der))
    (ident / "chain.der").write_bytes(x509.load_pem_x509_certificate(pki.issuing_cert.read_bytes()).public_bytes(der))
    (ident / "ioc.crt").write_bytes(
        x509.load_pem_x509_certificate(pki.ioc_recipient_cert.read_bytes()).public_bytes(der))
    (ident / "broker-ca.der").write_bytes(b"")
    res = run_main(tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=identity_invalid" in res.stdout and "not the certificate of this node's key" in res.stdout

    # Its own certificate, issued from its own request, is accepted; the empty broker CA file is
    # the next thing it trips over: named, not a crash.
    assert pki._issuing is not None
    mine = pki._issuing.issue(csr, end_entity_profile("node"), now=datetime.now(UTC))
    (ident / "node.crt").write_bytes(mine.public_bytes(der))
    res = run_main(tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=identity_invalid" in res.stdout and "broker-ca.der" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr
