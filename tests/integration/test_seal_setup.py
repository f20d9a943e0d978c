"""A gateway that cannot seal does not start: `urbanedge run` exits 2 naming the field and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import testpki


def _run(tmp_path: Path, seal: str, gateway_id: str = "gw-seal") -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[identity]\ngateway_id = "{gateway_id}"\nsite = "s"\n'
                   f'[buffer]\npath = "outbox.db"\n{seal}\n')
    return subprocess.run([sys.executable, "-m", "urbanedge", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)


def test_missing_key_file(tmp_path: Path) -> None:
    pki = testpki.shared_pki()
    creds = testpki.device("gw-seal")
    res = _run(tmp_path, f'[seal]\nkey = "nope.key"\ncert = "{creds.chain}"\nrecipient = "{pki.ioc_recipient_cert}"')
    assert res.returncode == 2
    assert "seal.key" in res.stderr and "nope.key" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(("field", "problem"), [
    ("cert", "names device"),          # another gateway's certificate
    ("recipient", "P-256"),            # an Ed25519 certificate is no ECDH recipient
    ("key", "does not belong"),        # a key that is not the certificate's
])
def test_credentials_that_do_not_fit(tmp_path: Path, field: str, problem: str) -> None:
    pki = testpki.shared_pki()
    mine, other = testpki.device("gw-seal"), testpki.device("gw-other")
    files = {"key": mine.key, "cert": mine.chain, "recipient": pki.ioc_recipient_cert}
    if field == "cert":
        files.update(key=other.key, cert=other.chain)
    elif field == "recipient":
        files["recipient"] = pki.issue_device("gw-ed", key_type="ed25519").cert
    else:
        files["key"] = other.key
    seal = "[seal]\n" + "\n".join(f'{k} = "{v}"' for k, v in files.items())
    res = _run(tmp_path, seal)
    assert res.returncode == 2, res.stderr
    assert problem in res.stderr and "Traceback" not in res.stderr
