"""``python -m pki`` (= ``urbanedge pki``) as a real process, cross-checked with the openssl CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASS = "a long offline passphrase\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UE_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def pki(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pki", *map(str, args)], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=60)


def ok(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = pki(*args, cwd=cwd, env=env)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


def bad_input(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail as bad input: exit 2, one clear message, no traceback."""
    done = pki(*args, cwd=cwd, env=env)
    assert done.returncode == 2, f"{args}: rc={done.returncode} {done.stdout} {done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stderr


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)


def openssl_verify(ca: Cas, cert: Path, crl: Path | None = None) -> subprocess.CompletedProcess[str]:
    crl_args: list[str | Path] = ["-crl_check", "-CRLfile", crl] if crl else []
    return openssl("verify", *crl_args, "-CAfile", ca.root / "ca.pem", "-untrusted", ca.issuing / "ca.pem", cert)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Cas:
    work: Path
    root: Path
    issuing: Path
    passfile: Path

    def device(self, device_id: str, *extra: str, profile: str = "gateway") -> Path:
        """request on the 'device' (its own directory), then issue at the CA: the certificate path."""
        key, csr, cert = (self.work / "devices" / device_id / f"device.{ext}" for ext in ("key", "csr", "pem"))
        ok("request", "--key", key, "--csr", csr, "--device-id", device_id, "--province", "Da Nang",
           "--org", "DAWACO", "--site", "Pump 3", "--serial", f"SN-{device_id}", *extra, cwd=self.work)
        ok("issue", "--ca-dir", self.issuing, "--csr", csr, "--profile", profile, "--out", cert,
           "--passphrase-file", self.passfile, cwd=self.work)
        return cert


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> Cas:
    work = tmp_path_factory.mktemp("pki")
    passfile = work / "pass"
    passfile.write_text(PASS)
    root, issuing = work / "ca" / "root", work / "ca" / "issuing"
    out = ok("init-root", "--dir", root, "--province", "Da Nang", "--org", "Da Nang DOST",
             "--passphrase-file", passfile, cwd=work)
    assert "Da Nang DOST Root CA" in out
    # The issuing CA's passphrase from the environment, the root's from its file.
    ok("issue-ca", "--root-dir", root, "--dir", issuing, "--province", "Da Nang", "--org", "DAWACO",
       "--root-passphrase-file", passfile, cwd=work, env=_env(UE_CA_PASSPHRASE=PASS.strip()))
    return Cas(work, root, issuing, passfile)


def test_ca_files_and_modes(cas: Cas) -> None:
    for ca in (cas.root, cas.issuing):
        assert _mode(ca) == 0o700
        assert _mode(ca / "ca.key") == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in (ca / "ca.key").read_bytes()
    # openssl reads our encrypted key with the same passphrase: a standard PKCS#8 file.
    done = openssl("pkey", "-in", cas.root / "ca.key", "-passin", f"file:{cas.passfile}", "-noout")
    assert done.returncode == 0, done.stderr
    verified = openssl("verify", "-CAfile", cas.root / "ca.pem", cas.issuing / "ca.pem")
    assert verified.returncode == 0, verified.stderr


def test_issue_verify_revoke_crl(cas: Cas) -> None:
    good = cas.device("gw-good")
    gone = cas.device("gw-gone")
    node = cas.device("node-ed", "--key-type", "ed25519", profile="node")
    for cert in (good, gone, node):
        done = openssl_verify(cas, cert)
        assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stderr
        assert _mode(cert.parent / "device.key") == 0o600
        assert _mode(cert.parent) == 0o700
    # The issuer's view of ongoing purposes: clientAuth for mTLS.
    assert openssl("verify", "-purpose", "sslclient", "-CAfile", cas.root / "ca.pem", "-untrusted",
                   cas.issuing / "ca.pem", good).returncode == 0

    out = ok("revoke", "--ca-dir", cas.issuing, "--cert", gone, "--reason", "keyCompromise", cwd=cas.work)
    assert "keyCompromise" in out
    ok("crl", "--ca-dir", cas.issuing, "--out", cas.work / "issuing.crl", "--days", "7",
       cwd=cas.work, env=_env(UE_CA_PASSPHRASE=PASS.strip()))
    crl = cas.issuing / "crl.pem"
    assert crl.read_bytes() == (cas.work / "issuing.crl").read_bytes()
    text = openssl("crl", "-in", crl, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    serial = openssl("x509", "-in", gone, "-noout", "-serial").stdout.strip().partition("=")[2]
    assert f"Serial Number: {serial}" in text.stdout
    assert "Key Compromise" in text.stdout and "CRL Number" in text.stdout
    good_serial = openssl("x509", "-in", good, "-noout", "-serial").stdout.strip().partition("=")[2]
    assert good_serial not in text.stdout
    sig = openssl("crl", "-in", crl, "-noout", "-CAfile", cas.issuing / "ca.pem")
    assert "verify OK" in sig.stderr + sig.stdout

    rejected = openssl_verify(cas, gone, crl)
    assert rejected.returncode != 0 and "certificate revoked" in rejected.stdout + rejected.stderr
    for cert in (good, node):
        assert openssl_verify(cas, cert, crl).returncode == 0

    # Revoking by serial (as `show` prints it) works too, and `crl` then lists both.
    shown = json.loads(ok("show", "--json", good, cwd=cas.work))
    ok("revoke", "--ca-dir", cas.issuing, "--serial", shown[0]["serial"], cwd=cas.work)
    ok("crl", "--ca-dir", cas.issuing, "--passphrase-file", cas.passfile, cwd=cas.work)
    assert openssl_verify(cas, good, crl).returncode != 0


def test_ioc_profiles(cas: Cas) -> None:
    recipient = cas.device("ioc-recipient", profile="ioc-recipient")
    command = cas.device("ioc-command", profile="ioc-command")
    for cert in (recipient, command):
        assert openssl_verify(cas, cert).returncode == 0
    text = openssl("x509", "-in", recipient, "-noout", "-ext", "keyUsage").stdout
    assert "Key Agreement" in text and "Digital Signature" not in text
    # ECDH-ES needs a P-256 recipient key: an Ed25519 request is refused, naming the CSR.
    key, csr = cas.work / "ioc2" / "k.pem", cas.work / "ioc2" / "r.csr"
    ok("request", "--key", key, "--csr", csr, "--device-id", "ioc-2", "--key-type", "ed25519", cwd=cas.work)
    err = bad_input("issue", "--ca-dir", cas.issuing, "--csr", csr, "--profile", "ioc-recipient", "--out",
                    cas.work / "ioc2" / "r.pem", "--passphrase-file", cas.passfile, cwd=cas.work)
    assert str(csr) in err and "does not fit profile ioc-recipient" in err
    assert not (cas.work / "ioc2" / "r.pem").exists()


def test_request_encrypts_and_never_overwrites(cas: Cas) -> None:
    folder = cas.work / "dev-enc"
    key, csr = folder / "k.pem", folder / "r.csr"
    ok("request", "--key", key, "--csr", csr, "--device-id", "gw-enc", "--passphrase-file", cas.passfile,
       cwd=cas.work)
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes() and _mode(key) == 0o600
    before = key.read_bytes()
    err = bad_input("request", "--key", key, "--csr", folder / "r2.csr", "--device-id", "gw-enc", cwd=cas.work)
    assert f"{key}: already exists; refusing to overwrite it" in err
    assert key.read_bytes() == before
    err = bad_input("init-root", "--dir", cas.root, "--province", "X", "--org", "Y", "--passphrase-file",
                    cas.passfile, cwd=cas.work)
    assert "ca.key: already exists; refusing to overwrite a CA key" in err
    err = bad_input("request", "--key", folder / "k2.pem", "--csr", folder / "r3.csr", "--device-id", "bad id",
                    cwd=cas.work)
    assert "bad device id 'bad id'" in err and not (folder / "k2.pem").exists()


def test_bad_input_exits_2(cas: Cas) -> None:
    csr = cas.work / "bad" / "r.csr"
    ok("request", "--key", cas.work / "bad" / "k.pem", "--csr", csr, "--device-id", "gw-bad", cwd=cas.work)
    out = cas.work / "bad" / "c.pem"

    def issue(csr_file: Path, *extra: str, env: dict[str, str] | None = None) -> str:
        return bad_input("issue", "--ca-dir", cas.issuing, "--csr", csr_file, "--out", out, *extra, cwd=cas.work,
                         env=env)

    wrong = cas.work / "bad" / "wrong-pass"
    wrong.write_text("not it\n")
    err = issue(csr, "--profile", "gateway", "--passphrase-file", str(wrong))
    assert f"{cas.issuing / 'ca.key'}: wrong passphrase" in err
    err = issue(csr, "--profile", "gateway", env=_env(UE_CA_PASSPHRASE="nope"))
    assert "wrong passphrase" in err
    err = issue(csr, "--profile", "gateway")
    assert f"{cas.issuing / 'ca.key'}: no passphrase given; use --passphrase-file FILE or set $UE_CA_PASSPHRASE" \
        in err

    garbage = cas.work / "bad" / "garbage.csr"
    garbage.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    err = issue(garbage, "--profile", "gateway", "--passphrase-file", str(cas.passfile))
    assert f"{garbage}: not a valid certificate signing request" in err

    tampered = cas.work / "bad" / "tampered.csr"
    der = bytearray(_der_of(csr))
    der[-1] ^= 0x01
    tampered.write_bytes(bytes(der))
    err = issue(tampered, "--profile", "gateway", "--passphrase-file", str(cas.passfile))
    assert f"{tampered}: bad CSR signature" in err

    err = issue(cas.work / "bad" / "absent.csr", "--profile", "gateway", "--passphrase-file", str(cas.passfile))
    assert "absent.csr: no such file" in err
    err = issue(csr, "--profile", "router", "--passphrase-file", str(cas.passfile))
    assert "invalid choice: 'router'" in err
    err = bad_input("crl", "--ca-dir", cas.work / "nowhere", "--passphrase-file", cas.passfile, cwd=cas.work)
    assert "nowhere: no such CA directory" in err
    err = bad_input("revoke", "--ca-dir", cas.issuing, "--serial", "ABCDEF", cwd=cas.work)
    assert "no certificate with serial ABCDEF" in err
    assert not out.exists()


def _der_of(pem_csr: Path) -> bytes:
    done = subprocess.run(["openssl", "req", "-in", str(pem_csr), "-outform", "DER"], capture_output=True,
                          timeout=30, check=True)
    return done.stdout


def test_show(cas: Cas) -> None:
    cert = cas.device("gw-show")
    text = ok("show", cert, cwd=cas.work)
    for expected in ("subject", "serialNumber=SN-gw-show,CN=gw-show,OU=Pump 3,O=DAWACO,ST=Da Nang,C=VN",
                     "issuer", "CN=DAWACO Issuing CA", "serial", "not_before", "not_after",
                     "URI:urn:urbanedge:device:gw-show", "digital_signature", "clientAuth", "EC P-256"):
        assert expected in text, expected
    [item] = json.loads(ok("show", "--json", cert, cwd=cas.work))
    openssl_serial = openssl("x509", "-in", cert, "-noout", "-serial").stdout.strip().partition("=")[2]
    assert item["serial"] == openssl_serial
    assert item["device_id"] == "gw-show" and item["san"] == ["URI:urn:urbanedge:device:gw-show"]
    assert item["key_usage"] == ["digital_signature"] and item["ca"] is False
    assert item["issuer"].startswith("CN=DAWACO Issuing CA")
    items = json.loads(ok("show", "--json", cas.issuing / "ca.pem", cas.root / "ca.pem",
                          cert.parent / "device.csr", cwd=cas.work))
    assert [(i["type"], i.get("path_length")) for i in items] == [("certificate", 0), ("certificate", 1),
                                                                   ("csr", None)]
    assert items[2]["signature_valid"] is True
    ok("crl", "--ca-dir", cas.issuing, "--passphrase-file", cas.passfile, cwd=cas.work)
    [crl] = json.loads(ok("show", "--json", cas.issuing / "crl.pem", cwd=cas.work))
    assert crl["type"] == "crl" and crl["number"] >= 1
    err = bad_input("show", cas.passfile, cwd=cas.work)
    assert "not a certificate, CSR or CRL" in err


def test_new_ca_passphrase_rules(cas: Cas) -> None:
    short, empty = cas.work / "short-pass", cas.work / "empty-pass"
    short.write_text("hunter2\n")
    empty.write_text("\n")
    target = cas.work / "ca" / "second"
    err = bad_input("init-root", "--dir", target, "--province", "Hue", "--org", "Hue DOST", "--passphrase-file",
                    short, cwd=cas.work)
    assert "a CA passphrase needs at least 12 characters" in err
    err = bad_input("init-root", "--dir", target, "--province", "Hue", "--org", "Hue DOST", "--passphrase-file",
                    empty, cwd=cas.work)
    assert f"{empty}: passphrase file is empty" in err
    assert not (target / "ca.key").exists()
    # Without a root passphrase of its own, issue-ca tries the new CA's: the same file here.
    ok("issue-ca", "--root-dir", cas.root, "--dir", cas.work / "ca" / "second-issuing", "--province", "Hue",
       "--org", "Hue Power", "--cn", "Hue Power CA 2", "--passphrase-file", cas.passfile, cwd=cas.work)
    assert openssl("verify", "-CAfile", cas.root / "ca.pem", cas.work / "ca" / "second-issuing" / "ca.pem"
                   ).returncode == 0


def test_issue_checks_the_output_directory_before_signing(cas: Cas) -> None:
    csr = cas.work / "outdir" / "r.csr"
    ok("request", "--key", cas.work / "outdir" / "k.pem", "--csr", csr, "--device-id", "gw-out", cwd=cas.work)
    before = (cas.issuing / "index.json").read_text()
    err = bad_input("issue", "--ca-dir", cas.issuing, "--csr", csr, "--profile", "node", "--out",
                    cas.work / "missing" / "c.pem", "--passphrase-file", cas.passfile, cwd=cas.work)
    assert "missing/c.pem: its directory does not exist" in err
    assert (cas.issuing / "index.json").read_text() == before
