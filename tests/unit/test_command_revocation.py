"""Revocation of the IOC command certificate, with certificates issued and revoked by the
project's own CA code (pki/castore.py) and the CRL cross-checked with openssl: the verdict
(revoked), which CRL files are used (last good kept), and when commands stop (stale, never read)."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.control.crl_watch import CrlWatch
from agent.control.revocation import CrlFile, check_crl, verdict
from agent.control.verify import Policy, verify
from pki import certs
from pki.castore import CaDir
from pki.command import CommandError, new_command, sign_command
from pki.keys import load_cert, load_certs, load_crls, load_private_key
from pki.throwaway import ThrowawayPki, build_throwaway_pki

GW = "gw-rev"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayPki:
    return build_throwaway_pki(tmp_path_factory.mktemp("rev") / "pki", [GW])


def issuing(pki: ThrowawayPki) -> CaDir:
    return CaDir.open(pki.dir / "issuing").unlock((pki.dir / "ca-passphrase").read_bytes().strip())


def signed(key: Path, chain: Path, now: float) -> bytes:
    return sign_command(new_command("on", device=GW, now=now), load_private_key(key),  # type: ignore[arg-type]
                        load_certs(chain))


def test_a_command_signed_by_a_revoked_command_certificate_is_refused(pki: ThrowawayPki, tmp_path: Path) -> None:
    spare = pki.issue_device("ioc-command", profile="ioc-command")  # a second IOC command certificate
    now = time.time()
    policy = Policy(gateway_id=GW, root=load_cert(pki.root_cert), crls=tuple(load_crls(pki.crl)))
    cmd = signed(spare.key, spare.chain, now)
    assert verify(cmd, policy, now).signer == "ioc-command"
    pki.revoke("ioc-command")
    serial = load_cert(spare.cert).serial_number
    text = subprocess.run(["openssl", "crl", "-in", str(pki.crl), "-noout", "-text"], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert f"{serial:X}" in text.replace(":", "").upper()  # openssl sees the same revocation
    ok = subprocess.run(["openssl", "crl", "-in", str(pki.crl), "-noout", "-CAfile", str(pki.issuing_cert)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "verify OK" in ok.stdout + ok.stderr
    revoked = Policy(gateway_id=GW, root=load_cert(pki.root_cert), crls=tuple(load_crls(pki.crl)))
    with pytest.raises(CommandError) as err:
        verify(cmd, revoked, now)
    assert err.value.reason == "revoked"
    # The IOC's other command certificate is not on the CRL: still obeyed.
    assert verify(signed(pki.ioc_command_key, pki.ioc_command_key.with_name("command.chain.pem"), now),
                  revoked, now).cmd == "on"


def test_the_watch_keeps_the_last_good_crl_and_reports_each_bad_one_once(pki: ThrowawayPki, tmp_path: Path) -> None:
    crl_file = tmp_path / "crl.pem"
    shutil.copy(pki.crl, crl_file)
    cas = [load_cert(pki.root_cert), load_cert(pki.issuing_cert)]
    watch = CrlWatch([crl_file], cas, grace=3600)
    assert watch.refresh() == [] and len(watch.crls) == 1
    assert watch.refresh() == []  # unchanged: not read again
    good = watch.crls
    crl_file.write_text("-----BEGIN X509 CRL-----\ntruncated")
    problems = watch.refresh()
    assert [p[0] for p in problems] == ["crl_unreadable"]
    assert watch.crls == good and watch.verdict(time.time()) is None  # the last good copy stays in force
    assert watch.refresh() == []  # the same bad file is reported once
    # A CRL of another province's CA: not ours to trust.
    other = build_throwaway_pki(tmp_path / "other", [])
    shutil.copy(other.crl, crl_file)
    assert [p[0] for p in watch.refresh()] == ["crl_unknown_issuer"]
    # Our issuing CA's name, another key: a forgery.
    forged_key = issuing(other).key
    forged = certs.make_crl(load_cert(pki.issuing_cert), forged_key, [], number=99, now=datetime.now(UTC), days=1)
    assert check_crl(forged, cas) is not None and check_crl(forged, cas)[0] == "crl_bad_signature"  # type: ignore[index]
    crl_file.unlink()
    assert [p[0] for p in watch.refresh()] == ["crl_unreadable"]
    assert watch.crls == good
    shutil.copy(pki.crl, crl_file)
    assert watch.refresh() == [] and watch.files[str(crl_file)].problem is None


def test_a_file_never_read_refuses_every_command(tmp_path: Path, pki: ThrowawayPki) -> None:
    watch = CrlWatch([tmp_path / "missing.pem"], [load_cert(pki.root_cert)], grace=0)
    assert [p[0] for p in watch.refresh()] == ["crl_unreadable"]
    err = watch.verdict(time.time())
    assert err is not None and err.reason == "crl_unavailable"
    assert verdict({}, time.time(), 0) is None  # no CRL configured: nothing to refuse for


def test_a_crl_past_next_update_is_used_within_the_grace_and_refused_after(pki: ThrowawayPki) -> None:
    ca = issuing(pki)
    issued = datetime(2030, 1, 1, tzinfo=UTC)
    crl = certs.make_crl(ca.cert, ca.key, [], number=7, now=issued, days=1)
    files = {"crl.pem": CrlFile((crl,), None, True)}
    next_update = (issued + timedelta(days=1)).timestamp()
    assert verdict(files, next_update - 10, grace=600) is None
    assert verdict(files, next_update + 600, grace=600) is None
    err = verdict(files, next_update + 601, grace=600)
    assert err is not None and err.reason == "crl_stale"
    # A bad newer file leaves the stale one in force: still refused.
    stale_with_problem = {"crl.pem": CrlFile((crl,), "crl_unreadable: x", True)}
    assert verdict(stale_with_problem, next_update + 601, grace=600) is not None
