"""Enrolment tokens (the store, ``pki token ...``), the offline path ``pki issue --token``, the
EST core without sockets, and the ``serve`` command's bad input. Real files, real processes,
openssl to check what is issued."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.castore import CaDir
from pki.enroll.est import EstService
from pki.enroll.tokens import TokenError, TokenStore
from pki.keys import load_cert
from pki.throwaway import build_throwaway_pki
from tests.support.process import read_line

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LINE = re.compile(r"uet1\.[0-9a-f]{10}\.[A-Za-z0-9_-]{43}")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def pki(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pki", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=60)


def bad_input(*args: str | Path) -> str:
    done = pki(*args)
    assert done.returncode == 2, f"{args}: rc={done.returncode} {done.stdout} {done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stderr


@dataclass
class Ca:
    dir: Path
    root: Path
    passfile: Path
    work: Path

    @property
    def store(self) -> TokenStore:
        return TokenStore.for_ca(self.dir)

    def create(self, device: str, serial: str, *extra: str, profile: str = "gateway") -> str:
        done = pki("token", "create", "--ca-dir", self.dir, "--device-id", device, "--serial", serial,
                   "--site", "Pump 3", "--profile", profile, *extra)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Ca:
    work = tmp_path_factory.mktemp("tokens")
    built = build_throwaway_pki(work / "pki", [])
    return Ca(built.issuing_cert.parent, built.root_cert, work / "pki" / "ca-passphrase", work)


def csr_file(folder: Path, cn: str, serial: str, *, ca_rights: bool = False) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.SERIAL_NUMBER, serial)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    if ca_rights:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{cn}.csr"
    path.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def test_token_create_list_and_the_file_keeps_no_secret(ca: Ca) -> None:
    done = pki("token", "create", "--ca-dir", ca.dir, "--device-id", "gw-list", "--serial", "SN-LIST", "--site",
               "Pump 3", "--profile", "gateway", "--ttl", "2h", "--technician", "Nguyen Van A")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and TOKEN_LINE.fullmatch(token)
    assert re.search(r'^event=token_created id=[0-9a-f]{10} device=gw-list serial=SN-LIST site="Pump 3" '
                     r'profile=gateway expires=\S+ technician="Nguyen Van A"', done.stderr, re.M), done.stderr
    token_file = ca.dir / "enrol-tokens.json"
    for path in (token_file, ca.dir / "enrol-tokens.json.lock"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = token_file.read_text()
    secret = token.split(".")[2]
    assert secret not in text and secret[:16] not in text
    row = next(r for r in json.loads(text)["tokens"] if r["device_id"] == "gw-list")
    assert row["hash"].startswith("sha256:") and row["technician"] == "Nguyen Van A"
    expires = datetime.fromisoformat(row["expires"]) - datetime.fromisoformat(row["created"])
    assert expires == timedelta(hours=2)

    listing = pki("token", "list", "--ca-dir", ca.dir)
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["ID", "DEVICE", "SERIAL", "SITE", "PROFILE", "EXPIRES", "USED"]
    mine = next(r for r in rows if "gw-list" in r)
    assert row["id"] in mine and "SN-LIST" in mine and "Pump 3" in mine and mine.endswith("  no")
    as_json = json.loads(pki("token", "list", "--ca-dir", ca.dir, "--json").stdout)
    assert {"id": row["id"], "state": "unused"}.items() <= next(
        t for t in as_json if t["device_id"] == "gw-list").items()

    revoked = pki("token", "revoke", "--ca-dir", ca.dir, "--id", row["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    with pytest.raises(TokenError) as info:
        ca.store.check(token, datetime.now(UTC))
    assert info.value.reason == "unknown" and "revoked" in info.value.detail


def test_check_is_read_only_and_consume_checks_the_device(ca: Ca) -> None:
    store, now = ca.store, datetime.now(UTC)
    token = store.create("gw-bind", "SN-BIND", "Pump 3", "node", timedelta(minutes=5), now)
    before = store.path.read_bytes()
    assert store.check(token, now).profile == "node"
    assert store.path.read_bytes() == before
    for device, serial in (("gw-other", None), ("gw-bind", "SN-OTHER")):
        with pytest.raises(TokenError) as info:
            store.consume(token, device_id=device, serial=serial, now=now, cert_serial="01")
        assert info.value.reason == "wrong_device"
    assert store.path.read_bytes() == before
    with pytest.raises(TokenError) as info:
        store.check(token, now + timedelta(minutes=5))
    assert info.value.reason == "expired"
    used = store.consume(token, device_id="gw-bind", serial=None, now=now, cert_serial="0A1B")
    assert used.used_at is not None and used.cert_serial == "0A1B"
    with pytest.raises(TokenError) as info:
        store.consume(token, device_id="gw-bind", serial=None, now=now, cert_serial="0A1C")
    assert info.value.reason == "used" and "0A1B" in info.value.detail
    for text in ("", "uet1.zz.secret", token.replace("uet1", "uet2"), token + "x" * 200):
        with pytest.raises(TokenError) as info:
            store.check(text, now)
        assert info.value.reason == "malformed"


def test_concurrent_creates_all_persist(ca: Ca, tmp_path: Path) -> None:
    store_path = tmp_path / "tokens.json"
    barrier = threading.Barrier(5)
    made: list[str] = []

    def create_many(worker: int) -> None:
        store = TokenStore(store_path)  # its own lock file descriptor, as another process would have
        barrier.wait()
        for i in range(8):
            made.append(store.create(f"gw-{worker}-{i}", f"SN-{worker}-{i}", "", "node", timedelta(hours=1),
                                     datetime.now(UTC)))

    threads = [threading.Thread(target=create_many, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    # Two CLI processes at the same moment as the threads.
    cmd = [sys.executable, "-m", "pki", "token", "create", "--ca-dir", str(ca.dir), "--tokens", str(store_path),
           "--serial", "SN-CLI", "--profile", "gateway", "--device-id"]
    procs = [subprocess.Popen([*cmd, f"gw-cli-{n}"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in range(2)]
    barrier.wait()
    for t in threads:
        t.join()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        made.append(out.strip())
    ids = {t.split(".")[1] for t in made}
    stored = TokenStore(store_path).list()
    assert len(made) == 34 and {r.id for r in stored} == ids
    for token in made:
        TokenStore(store_path).check(token, datetime.now(UTC))


def test_offline_issue_consumes_the_token_with_the_same_checks(ca: Ca) -> None:
    folder = ca.work / "offline"
    token = ca.create("gw-off", "SN-OFF", profile="node")
    bad = csr_file(folder / "bad", "gw-off", "SN-OFF", ca_rights=True)
    out = folder / "gw-off.pem"
    err = bad_input("issue", "--ca-dir", ca.dir, "--csr", bad, "--token", token, "--out", out, "--passphrase-file",
                    ca.passfile)
    assert f"{bad}: csr_ca:" in err and not out.exists()
    other = csr_file(folder / "other", "gw-off", "SN-ELSE")
    err = bad_input("issue", "--ca-dir", ca.dir, "--csr", other, "--token", token, "--out", out,
                    "--passphrase-file", ca.passfile)
    assert "--token: token_wrong_device:" in err
    good = csr_file(folder, "gw-off", "SN-OFF")
    err = bad_input("issue", "--ca-dir", ca.dir, "--csr", good, "--token", token, "--profile", "gateway", "--out",
                    out, "--passphrase-file", ca.passfile)
    assert "--profile gateway: the token is for profile node" in err
    assert ca.store.check(token, datetime.now(UTC)).used_at is None  # nothing so far consumed it

    done = pki("issue", "--ca-dir", ca.dir, "--csr", good, "--token", token, "--out", out, "--chain-out",
               folder / "chain.pem", "--passphrase-file", ca.passfile)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("node certificate serial=")
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(ca.root), "-untrusted", str(ca.dir / "ca.pem"),
                               "-purpose", "sslclient", str(out)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    serial = load_cert(out).serial_number
    entry = CaDir.open(ca.dir).index.find(serial)
    assert entry is not None and entry.profile == "node"
    assert next(r for r in ca.store.list() if r.device_id == "gw-off").cert_serial == entry.serial

    err = bad_input("issue", "--ca-dir", ca.dir, "--csr", good, "--token", token, "--out", folder / "again.pem",
                    "--passphrase-file", ca.passfile)
    assert "--token: token_used:" in err and not (folder / "again.pem").exists()
    err = bad_input("issue", "--ca-dir", ca.dir, "--csr", good, "--out", out, "--passphrase-file", ca.passfile)
    assert "--profile is required" in err


def test_est_core_answers_without_sockets(ca: Ca) -> None:
    service = EstService(ca.dir, ca.passfile.read_bytes().strip(), load_cert(ca.root), ca.store)

    def first_line(body: bytes) -> str:
        return body.decode().splitlines()[0]

    status, kind, body = service.handle("GET", "/.well-known/est/cacerts?x=1", {}, b"", None)
    assert (status, kind) == (200, "application/pkcs7-mime") and base64.b64decode(body)
    status, kind, body = service.handle("GET", "/.well-known/est/csrattrs", {}, b"", None)
    assert status == 404 and kind.startswith("text/plain") and first_line(body) == "reason=not_found"
    status, _, body = service.handle("GET", "/.well-known/est/simpleenroll", {}, b"", None)
    assert status == 405 and first_line(body) == "reason=method_not_allowed"
    status, _, body = service.handle("POST", "/.well-known/est/simpleenroll", {"content-type": "text/plain"}, b"x",
                                     None)
    assert status == 415 and first_line(body) == "reason=bad_content_type"
    auth = {"Content-Type": "application/pkcs10",
            "Authorization": "Basic " + base64.b64encode(b"gw-x:uet1.0123456789." + b"A" * 43).decode()}
    status, _, body = service.handle("POST", "/.well-known/est/simpleenroll", auth, b"MAo=", None)
    assert status == 403 and first_line(body) == "reason=token_unknown"


def test_serve_and_token_bad_input(ca: Ca, tmp_path: Path) -> None:
    err = bad_input("token", "create", "--ca-dir", ca.dir, "--device-id", "gw-1", "--serial", "S", "--profile",
                    "node", "--ttl", "5x")
    assert err.startswith("urbanedge pki token create: error: --ttl '5x'")
    err = bad_input("token", "create", "--ca-dir", ca.dir, "--device-id", "bad id", "--serial", "S", "--profile",
                    "node")
    assert "bad device id 'bad id'" in err
    err = bad_input("token", "create", "--ca-dir", tmp_path / "nowhere", "--device-id", "gw-1", "--serial", "S",
                    "--profile", "node")
    assert "no such CA directory" in err
    assert not (tmp_path / "nowhere").exists()
    err = bad_input("serve", "--ca-dir", ca.dir, "--listen", "nonsense", "--passphrase-file", ca.passfile)
    assert "--listen 'nonsense'" in err
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("not the passphrase\n")
    err = bad_input("serve", "--ca-dir", ca.dir, "--listen", "127.0.0.1:0", "--passphrase-file", wrong)
    assert "wrong passphrase" in err
    alone = tmp_path / "alone" / "issuing"  # the issuing CA without its root beside it
    shutil.copytree(ca.dir, alone)
    err = bad_input("serve", "--ca-dir", alone, "--listen", "127.0.0.1:0", "--passphrase-file", ca.passfile)
    assert "--root FILE" in err
    err = bad_input("serve", "--ca-dir", alone, "--root", alone / "ca.pem", "--listen", "127.0.0.1:0",
                    "--passphrase-file", ca.passfile)
    assert "is not the root that signed" in err
    err = bad_input("serve", "--ca-dir", ca.dir, "--listen", "0.0.0.0:0", "--passphrase-file", ca.passfile)
    assert "--server-name" in err


def test_serve_with_given_tls_files_stops_on_sigint(ca: Ca, tmp_path: Path) -> None:
    """An operator-made est-server certificate (request + issue, as for any device) instead of a
    self-issued one; SIGINT ends the server with exit 0."""
    from pki.enroll.client import EstClient
    from tests.support.process import stop_process

    key, csr, chain = tmp_path / "est.key", tmp_path / "est.csr", tmp_path / "est-chain.pem"
    assert pki("request", "--key", key, "--csr", csr, "--device-id", "localhost").returncode == 0
    done = pki("issue", "--ca-dir", ca.dir, "--csr", csr, "--profile", "est-server", "--out", tmp_path / "est.pem",
               "--chain-out", chain, "--passphrase-file", ca.passfile)
    assert done.returncode == 0, done.stderr
    san = load_cert(chain).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert not san.get_values_for_type(x509.UniformResourceIdentifier)  # never a device identity
    proc = subprocess.Popen([sys.executable, "-m", "pki", "serve", "--ca-dir", str(ca.dir), "--listen",
                             "127.0.0.1:0", "--server-name", "localhost", "--tls-cert", str(chain), "--tls-key",
                             str(key), "--root", str(ca.root), "--passphrase-file", str(ca.passfile)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 20)
        match = re.fullmatch(r"event=est_listening url=(https://localhost:\d+/\.well-known/est)\n", line)
        assert match, line
        certs = EstClient(match.group(1), ca.root).cacerts()
        assert load_cert(ca.dir / "ca.pem") in certs
    finally:
        code = stop_process(proc, sig=signal.SIGINT)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
