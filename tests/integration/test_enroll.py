"""The EST enrolment service as a real process (``python -m pki serve`` on a free loopback
port) and ``EstClient`` against it over real TLS; certificates cross-checked with openssl.

Tokens are made with the same ``TokenStore`` file the server reads (the server opens the
store and the CA afresh for every request, which these tests rely on too).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki.castore import CaDir
from pki.enroll.client import EstClient, EstClientError
from pki.enroll.tokens import TokenStore
from pki.keys import cert_pem, load_cert
from pki.profiles import end_entity_profile
from pki.throwaway import build_throwaway_pki
from tests.support.ports import free_port
from tests.support.process import read_line, stop_process

ROOT = Path(__file__).resolve().parents[2]
DER, PEM = serialization.Encoding.DER, serialization.Encoding.PEM


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class Est:
    url: str
    root: Path
    issuing: Path
    ca_dir: Path
    passfile: Path
    tokens: TokenStore
    log: Path
    work: Path
    proc: subprocess.Popen[str]

    def client(self, root: Path | None = None) -> EstClient:
        return EstClient(self.url, root or self.root, timeout=10)

    def token(self, device_id: str, serial: str, *, site: str = "Pump 3", profile: str = "gateway",
              ttl: timedelta = timedelta(hours=1), now: datetime | None = None) -> str:
        return self.tokens.create(device_id, serial, site, profile, ttl, now or datetime.now(UTC), "An")

    def index(self) -> CaDir:
        return CaDir.open(self.ca_dir)


@pytest.fixture(scope="module")
def est(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Est]:
    work = tmp_path_factory.mktemp("est")
    pki = build_throwaway_pki(work / "pki", [])
    passfile = work / "pki" / "ca-passphrase"
    log = work / "serve.log"
    with log.open("w") as err:
        # No --root: the root CA directory beside the issuing one is found by itself.
        proc = subprocess.Popen([sys.executable, "-m", "pki", "serve", "--ca-dir", str(pki.issuing_cert.parent),
                                 "--listen", "127.0.0.1:0", "--passphrase-file", str(passfile)],
                                cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = read_line(proc, 20)
        match = re.fullmatch(r"event=est_listening url=(https://127\.0\.0\.1:(\d+)/\.well-known/est)\n", line)
        assert match, (line, log.read_text())
        assert int(match.group(2)) != 0
        yield Est(match.group(1), pki.root_cert, pki.issuing_cert, pki.issuing_cert.parent, passfile,
                  TokenStore.for_ca(pki.issuing_cert.parent), log, work, proc)
    finally:
        code = stop_process(proc)
    assert code == 0, log.read_text()
    assert "event=est_stopped" in log.read_text()


def make_csr(cn: str | None, *, serial: str | None = None, site: str | None = "Pump 3",
             key: ec.EllipticCurvePrivateKey | None = None,
             extensions: tuple[x509.ExtensionType, ...] = ()) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]
    if site is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site))
    if cn is not None:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(DER), key


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)


def save(folder: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert_pem(cert))
    key_file.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def refused(call: object, reason: str) -> EstClientError:
    assert callable(call)
    with pytest.raises(EstClientError) as info:
        call()
    assert info.value.reason == reason, info.value
    return info.value


def raw_post(est: Est, operation: str, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A request the client would never send (no auth, garbage), over TLS trusting only the root."""
    ctx = ssl.create_default_context(cafile=str(est.root))
    host, port = est.url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    conn.request("POST", f"/.well-known/est/{operation}", body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_cacerts_and_server_trusted_by_the_root_alone(est: Est) -> None:
    certs = est.client().cacerts()
    # A PKCS#7 SET OF is DER-sorted: the order is not the server's to choose.
    assert sorted(certs, key=lambda c: c.subject.rfc4514_string()) == [load_cert(est.issuing), load_cert(est.root)]
    # openssl, trusting only the root, accepts the self-issued server certificate for 127.0.0.1.
    host_port = est.url.split("//")[1].split("/")[0]
    done = subprocess.run(["openssl", "s_client", "-connect", host_port, "-CAfile", str(est.root),
                           "-verify_return_error", "-verify_ip", "127.0.0.1", "-purpose", "sslserver"],
                          input="", capture_output=True, text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in done.stdout, done.stdout + done.stderr
    # The same PKCS#7 the client parsed, read by openssl.
    ctx = ssl.create_default_context(cafile=str(est.root))
    conn = http.client.HTTPSConnection(host_port.split(":")[0], int(host_port.split(":")[1]), context=ctx)
    conn.request("GET", "/.well-known/est/cacerts")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "application/pkcs7-mime"
    p7 = est.work / "cacerts.p7"
    p7.write_bytes(base64.b64decode(response.read()))
    conn.close()
    printed = openssl("pkcs7", "-inform", "DER", "-in", p7, "-print_certs", "-noout")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.count("subject=") == 2 and "Issuing CA" in printed.stdout


def test_enrol_then_every_refusal_of_a_used_token(est: Est) -> None:
    token = est.token("gw-happy", "SN-HAPPY", profile="node")
    csr, key = make_csr("gw-happy", serial="SN-HAPPY")
    cert = est.client().enroll(csr, "gw-happy", token)
    cert_file, _ = save(est.work / "gw-happy", cert, key)
    done = openssl("verify", "-CAfile", est.root, "-untrusted", est.issuing, "-purpose", "sslclient", cert_file)
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout + done.stderr
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-happy"
    # The profile is the token's: the index records "node", whatever the request said.
    entry = est.index().index.find(cert.serial_number)
    assert entry is not None and entry.profile == "node"
    record = next(r for r in est.tokens.list() if token.startswith(f"uet1.{r.id}."))
    assert record.used_at is not None and record.cert_serial == entry.serial

    before = len(est.index().index.certs)
    err = refused(lambda: est.client().enroll(make_csr("gw-happy", serial="SN-HAPPY")[0], "gw-happy", token),
                  "token_used")
    assert record.id in err.detail
    assert len(est.index().index.certs) == before
    log = est.log.read_text()
    assert re.search(r"event=est_enrolled device=gw-happy serial=SN-HAPPY .*profile=node", log)
    assert re.search(r"event=est_refused reason=token_used device=gw-happy", log)


def test_expired_and_unknown_tokens(est: Est) -> None:
    expired = est.token("gw-late", "SN-LATE", ttl=timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2))
    csr, _ = make_csr("gw-late", serial="SN-LATE")
    refused(lambda: est.client().enroll(csr, "gw-late", expired), "token_expired")
    # Right id, wrong secret: unknown, like an id that does not exist.
    tid = expired.split(".")[1]
    forged = f"uet1.{tid}.{'A' * 43}"
    refused(lambda: est.client().enroll(csr, "gw-late", forged), "token_unknown")
    refused(lambda: est.client().enroll(csr, "gw-late", "not-a-token"), "token_unknown")


def test_refused_requests_leave_the_token_unused(est: Est) -> None:
    token = est.token("gw-care", "SN-CARE")
    client = est.client()
    cases: list[tuple[bytes, str, str]] = [
        # A token handed to the wrong device: that device's id and its own CSR.
        (make_csr("gw-other", serial="SN-CARE")[0], "gw-other", "token_wrong_device"),
        # The right device id, but another hardware serial in the request.
        (make_csr("gw-care", serial="SN-ELSE")[0], "gw-care", "token_wrong_device"),
        # ... or for another site than the token's.
        (make_csr("gw-care", serial="SN-CARE", site="Pump 9")[0], "gw-care", "token_wrong_device"),
        # The right device, asking for a certificate of another subject.
        (make_csr("gw-victim", serial="SN-CARE")[0], "gw-care", "csr_subject"),
        (make_csr(None, serial="SN-CARE")[0], "gw-care", "csr_subject"),
        # CA rights, asked for in two ways.
        (make_csr("gw-care", extensions=(x509.BasicConstraints(ca=True, path_length=None),))[0], "gw-care",
         "csr_ca"),
        (make_csr("gw-care", extensions=(x509.KeyUsage(False, False, False, False, False, True, False, False,
                                                        False),))[0], "gw-care", "csr_ca"),
        (make_csr("gw-care", key=ec.generate_private_key(ec.SECP384R1()))[0], "gw-care", "key_unsupported"),
        (b"\x30\x03garbage", "gw-care", "csr_invalid"),
    ]
    for csr, device, reason in cases:
        refused(lambda csr=csr, device=device: client.enroll(csr, device, token), reason)
    # A signature that does not verify: one bit of the signature flipped.
    good, _ = make_csr("gw-care", serial="SN-CARE")
    tampered = good[:-3] + bytes([good[-3] ^ 1]) + good[-2:]
    refused(lambda: client.enroll(tampered, "gw-care", token), "csr_invalid")
    # Not base64 at all, and no credentials: straight HTTP, since the client never sends these.
    garbage = raw_post(est, "simpleenroll", b"%%% not base64 %%%", {
        "Content-Type": "application/pkcs10",
        "Authorization": "Basic " + base64.b64encode(f"gw-care:{token}".encode()).decode()})
    assert garbage.status == 400
    anonymous = raw_post(est, "simpleenroll", base64.encodebytes(good), {"Content-Type": "application/pkcs10"})
    assert anonymous.status == 401 and anonymous.getheader("WWW-Authenticate", "").startswith("Basic")

    record = est.tokens.check(token, datetime.now(UTC))
    assert record.used_at is None
    cert = client.enroll(good, "gw-care", token)
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-CARE"


def test_reenroll_with_the_current_certificate(est: Est) -> None:
    token = est.token("gw-renew", "SN-RENEW")
    csr, key = make_csr("gw-renew", serial="SN-RENEW")
    first = est.client().enroll(csr, "gw-renew", token)
    cert_file, key_file = save(est.work / "gw-renew", first, key)

    new_csr, new_key = make_csr("gw-renew", serial="SN-RENEW")
    second = est.client().reenroll(new_csr, cert_file, key_file)
    assert second.serial_number != first.serial_number
    assert second.subject == first.subject
    new_file, new_key_file = save(est.work / "gw-renew-2", second, new_key)
    for cert in (new_file, cert_file):  # the old one stays valid for the grace after its renewal
        done = openssl("verify", "-CAfile", est.root, "-untrusted", est.issuing, "-purpose", "sslclient", cert)
        assert done.returncode == 0, done.stdout + done.stderr
    old = CaDir.open(est.ca_dir).index.find(first.serial_number)
    assert old is not None and int(old.superseded_by or "0", 16) == second.serial_number

    refused(lambda: est.client().reenroll(make_csr("gw-someone")[0], cert_file, key_file), "csr_subject")
    refused(lambda: est.client().reenroll(make_csr("gw-renew", serial="SN-X")[0], cert_file, key_file),
            "csr_subject")
    # Without a client certificate, simplereenroll is not authorised.
    response = raw_post(est, "simplereenroll", base64.encodebytes(new_csr), {"Content-Type": "application/pkcs10"})
    assert response.status == 401

    # Eight days later (the index says the renewal was then): the old certificate no longer renews,
    # and the next `pki crl` revokes it as superseded, which openssl then sees.
    index_file = est.ca_dir / "index.json"
    raw = json.loads(index_file.read_text())
    for e in raw["certs"]:
        if int(e["serial"], 16) == first.serial_number:
            e["superseded_at"] = (datetime.now(UTC) - timedelta(days=8)).isoformat(timespec="seconds")
    index_file.write_text(json.dumps(raw))
    err = refused(lambda: est.client().reenroll(make_csr("gw-renew", serial="SN-RENEW")[0], cert_file, key_file),
                  "not_authorized")
    assert "was renewed" in err.detail
    done = subprocess.run([sys.executable, "-m", "pki", "crl", "--ca-dir", str(est.ca_dir), "--passphrase-file",
                           str(est.passfile)], env=_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    chain = est.work / "chain.pem"
    chain.write_bytes(est.root.read_bytes() + est.issuing.read_bytes())
    crl_all = est.work / "crls.pem"
    crl_all.write_bytes((est.ca_dir / "crl.pem").read_bytes())
    gone = openssl("verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_all, cert_file)
    assert gone.returncode != 0 and "revoked" in gone.stdout + gone.stderr
    kept = openssl("verify", "-crl_check", "-CAfile", chain, "-CRLfile", crl_all, new_file)
    assert kept.returncode == 0, kept.stdout + kept.stderr

    # Revoked with the CLI while the server runs: the server sees it at once (the successor here).
    done = subprocess.run([sys.executable, "-m", "pki", "revoke", "--ca-dir", str(est.ca_dir), "--cert",
                           str(new_file), "--reason", "keyCompromise"], env=_env(), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    err = refused(lambda: est.client().reenroll(make_csr("gw-renew")[0], new_file, new_key_file), "not_authorized")
    assert "revoked" in err.detail


def test_reenroll_refuses_expired_and_foreign_certificates(est: Est, tmp_path: Path) -> None:
    ca = CaDir.open(est.ca_dir).unlock(est.passfile.read_bytes().strip())
    csr_der, key = make_csr("gw-old", serial="SN-OLD")
    long_ago = datetime.now(UTC) - timedelta(days=30)
    old = ca.issue(x509.load_der_x509_csr(csr_der), end_entity_profile("gateway"), now=long_ago,
                   not_before=long_ago, days=1)
    cert_file, key_file = save(tmp_path / "old", old, key)
    err = refused(lambda: est.client().reenroll(make_csr("gw-old")[0], cert_file, key_file), "not_authorized")
    assert "expired" in err.detail

    other = build_throwaway_pki(tmp_path / "other", ["gw-foreign"])
    creds = other.devices["gw-foreign"]
    # Turned down in the TLS handshake already (unknown CA): still "not authorised", not "untrusted server".
    err = refused(lambda: est.client().reenroll(make_csr("gw-foreign")[0], creds.chain, creds.key), "not_authorized")
    assert str(creds.chain) in err.detail


def test_client_failures_name_their_cause(est: Est, tmp_path: Path) -> None:
    port = free_port()
    err = refused(lambda: EstClient(f"https://127.0.0.1:{port}/.well-known/est", est.root, timeout=5).cacerts(),
                  "unreachable")
    assert str(port) in err.detail
    other = build_throwaway_pki(tmp_path / "other", [])
    refused(lambda: est.client(other.root_cert).cacerts(), "tls_untrusted")
    # A server name the certificate does not carry is untrusted too (localhost vs 127.0.0.1).
    refused(lambda: EstClient(est.url.replace("127.0.0.1", "localhost"), est.root).cacerts(), "tls_untrusted")


def test_server_certificate_outside_the_local_clock(est: Est) -> None:
    """A server whose certificate starts in three days (its clock, or ours, is wrong): "clock"."""
    from pki.enroll.est import EstService
    from pki.enroll.server import EstHttpsServer, SelfIssuedTls

    passphrase = est.passfile.read_bytes().strip()
    root, issuing = load_cert(est.root), load_cert(est.issuing)
    ahead = SelfIssuedTls(est.ca_dir, passphrase, "127.0.0.1", cert_pem(root, issuing), lock=est.tokens.locked,
                          clock=lambda: datetime.now(UTC) + timedelta(days=3))
    with EstHttpsServer(EstService(est.ca_dir, passphrase, root, est.tokens), ahead, "127.0.0.1", 0) as server:
        err = refused(lambda: EstClient(server.url, est.root).cacerts(), "clock")
    assert "not yet valid" in err.detail and "valid from" in err.detail
