"""The node's start-up checks under the real MicroPython.

A node without a certificate is in provisioning mode: its configuration arrives over the
console (the real protocol, through NodeLink on a socat pty) and a bad one is refused there,
naming the field and the problem. A provisioned node whose node.json is broken stops with exit
code 2 and the same kind of message. The key is made once and kept across restarts; at start a
certificate that is not the node's own is refused by name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.node_link import NodeLinkError
from tests.provisioning.node_on_pty import issue_for, pem_to_der, provision_over, start_node
from tests.support import testpki
from tests.support.micropython import FIRMWARE, micropython_exe, mp_env

GOOD: dict[str, Any] = {
    "node_id": "wm-pit-0231", "site": "district-3",
    "broker": {"host": "127.0.0.1", "port": 8883},
    "bus": {"port": "/dev/null"},
    "devices": [{"id": "wm-1", "profile": "water-meter", "unit": 2, "interval_s": 60}],
}


def run_main(storage: Path) -> subprocess.CompletedProcess[str]:
    """main.py as at power-on (BOOT not held), console closed: a node that went into provisioning
    mode would see the console end at once and exit 3."""
    env = {**mp_env(), "UE_STORAGE": str(storage)}
    env.pop("UE_PROVISION", None)
    return subprocess.run([str(micropython_exe()), "-X", "heapsize=200k", str(FIRMWARE / "main.py")],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)


def provisioned(tmp: Path, cfg: dict[str, Any]) -> Path:
    """Storage of a node provisioned over the line with ``cfg``; the node is gone afterwards."""
    storage = tmp / "node"
    storage.mkdir()
    node = start_node(tmp, storage)
    try:
        with node.link() as link:
            provision_over(link, cfg)
        node.unplug()
        assert node.wait_exit(30) == 3, node.stderr_text()
    finally:
        node.stop()
    return storage


def with_change(path: str, value: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(json.dumps(GOOD))
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


BAD = [
    ("node_id", _DELETE, "node_id", "missing"),
    ("site", "a/b", "site", "without /"),
    ("broker.port", "8883", "broker.port", "expected int"),
    ("broker.port", 70000, "broker.port", "not a TCP port"),
    ("devices", [], "devices", "at least one"),
    ("devices.0.profile", "toaster", "devices[0].profile", "unknown profile"),
    ("devices.0.unit", 0, "devices[0].unit", "1..247"),
    ("devices.0.interval_s", -1, "devices[0].interval_s", "> 0"),
]


def test_bad_config_is_refused_over_the_line_naming_field_and_problem(tmp_path: Path) -> None:
    storage = tmp_path / "node"
    storage.mkdir()
    node = start_node(tmp_path, storage)
    try:
        with node.link() as link:
            for path, value, field, problem in BAD:
                with pytest.raises(NodeLinkError) as exc:
                    link.request("config", node_json=with_change(path, value))
                err = exc.value
                assert (err.reason, err.node_reason) == ("node_error", "config_invalid"), err
                assert str(storage / "node.json") in err.detail
                assert field in err.detail and problem in err.detail, err.detail
                assert not (storage / "node.json").exists()  # refused: nothing stored
            link.request("config", node_json=GOOD)
            with pytest.raises(NodeLinkError):
                link.request("config", node_json=with_change("devices", []))
            assert json.loads((storage / "node.json").read_text()) == GOOD  # the good one stays
            assert link.request("hello")["mode"] == "provisioning"
    finally:
        node.stop()
    assert "Traceback" not in node.stderr_text()


# The checks are node.load_config's, the same as over the line (every case above); here a sample of
# them at boot proves the boot path reports them.
@pytest.mark.parametrize(("path", "value", "field", "problem"), BAD[1::3])
def test_provisioned_node_with_a_broken_config_exits_2_naming_file_field_and_problem(
        tmp_path: Path, path: str, value: Any, field: str, problem: str) -> None:
    storage = provisioned(tmp_path, GOOD)
    (storage / "node.json").write_text(json.dumps(with_change(path, value)))
    res = run_main(storage)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=config_invalid" in res.stdout
    assert str(storage / "node.json") in res.stdout
    assert field in res.stdout and problem in res.stdout, res.stdout
    assert "Traceback" not in res.stderr


def test_not_json_and_missing_file_are_named(tmp_path: Path) -> None:
    storage = provisioned(tmp_path, GOOD)
    (storage / "node.json").write_text("{node_id: ")
    res = run_main(storage)
    assert res.returncode == 2 and "not valid JSON" in res.stdout
    (storage / "node.json").unlink()
    res = run_main(storage)
    assert res.returncode == 2 and "cannot read" in res.stdout


def test_node_keeps_its_key_and_refuses_a_foreign_certificate(tmp_path: Path) -> None:
    storage = tmp_path / "node"
    storage.mkdir()
    ident = storage / "id"
    answers = []
    for run in range(2):  # two power-ups of a node without a certificate
        node = start_node(tmp_path, storage, name=f"usb{run}")
        try:
            with node.link() as link:
                link.request("config", node_json=GOOD)
                answers.append(link.request("csr", node_id="wm-pit-0231"))
                if run == 0:
                    key_before = (ident / "node.key").read_bytes()
            node.unplug()
            assert node.wait_exit(30) == 3
        finally:
            node.stop()
    csr = x509.load_der_x509_csr((ident / "node.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=wm-pit-0231"
    assert answers[0]["public_key_hex"] == answers[1]["public_key_hex"]
    assert (ident / "node.key").read_bytes() == key_before  # a restart never makes a second key

    # A certificate for another key (someone else's) put on its flash is refused at start, by name.
    pki = testpki.shared_pki()
    other = testpki.device("someone-else")
    der = serialization.Encoding.DER
    (ident / "node.crt").write_bytes(x509.load_pem_x509_certificate(other.cert.read_bytes()).public_bytes(der))
    (ident / "chain.der").write_bytes(pem_to_der(pki.issuing_cert))
    (ident / "ioc.crt").write_bytes(pem_to_der(pki.ioc_recipient_cert))
    (ident / "broker-ca.der").write_bytes(b"")
    res = run_main(storage)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=identity_invalid" in res.stdout and "not the certificate of this node's key" in res.stdout

    # Its own certificate, issued from its own request, is accepted; the empty broker CA file is
    # the next thing it trips over: named, not a crash.
    (ident / "node.crt").write_bytes(issue_for((ident / "node.csr").read_bytes()).public_bytes(der))
    res = run_main(storage)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "event=identity_invalid" in res.stdout and "broker-ca.der" in res.stdout, res.stdout
    assert "Traceback" not in res.stderr
