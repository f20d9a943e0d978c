"""The enrolment commands of ``urbanedge pki`` (``serve``, ``token ...``, ``issue --token``),
behind the thin wrappers in ``pki.cli``: argument parsing of their values, the server's
assembly, and the token table. Every bad value is a PkiError naming the option or file."""

from __future__ import annotations

import re
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pki.castore import CaDir
from pki.enroll.est import EstService
from pki.enroll.policy import EnrolRefused, enroll_with_token
from pki.enroll.server import EstHttpsServer, FileTls, SelfIssuedTls, TlsSource
from pki.enroll.tokens import TOKEN_PREFIX, TokenError, TokenRecord, TokenStore
from pki.errors import CertFileError, PkiError
from pki.keys import cert_pem, load_cert
from pki.profiles import Profile, end_entity_profile

_TTL = re.compile(r"(\d+)([smhd])")
_TTL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def token_store(ca_dir: Path, tokens_file: Path | None) -> TokenStore:
    CaDir.open(ca_dir)  # a typo in --ca-dir must not start a token file somewhere else
    return TokenStore(tokens_file) if tokens_file else TokenStore.for_ca(ca_dir)


def parse_ttl(text: str) -> timedelta:
    match = _TTL.fullmatch(text.strip())
    if match is None:
        raise PkiError(f"--ttl {text!r}: expected a number followed by s, m, h or d (e.g. 24h, 7d)")
    return timedelta(**{_TTL_UNITS[match.group(2)]: int(match.group(1))})


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or ":" in host or not port.isdigit() or int(port) > 65535:
        raise PkiError(f"--listen {text!r}: expected HOST:PORT with an IPv4 address or host name")
    return host, int(port)


def record_of(store: TokenStore, token: str) -> TokenRecord:
    return next(r for r in store.list() if token.startswith(f"{TOKEN_PREFIX}.{r.id}."))


def used_text(record: TokenRecord, now: datetime) -> str:
    if record.used_at is not None:
        return f"used {record.used_at.isoformat()} cert={record.cert_serial}"
    if record.revoked_at is not None:
        return f"revoked {record.revoked_at.isoformat()}"
    return "expired" if now >= record.expires else "no"


def token_table(records: list[TokenRecord], now: datetime) -> list[str]:
    rows = [("ID", "DEVICE", "SERIAL", "SITE", "PROFILE", "EXPIRES", "USED")]
    rows += [(r.id, r.device_id, r.serial, r.site or "-", r.profile, r.expires.isoformat(), used_text(r, now))
             for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in rows]


def token_json(records: list[TokenRecord], now: datetime) -> list[dict[str, Any]]:
    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment is not None else None

    return [{"id": r.id, "device_id": r.device_id, "serial": r.serial, "site": r.site, "profile": r.profile,
             "technician": r.technician, "created": iso(r.created), "expires": iso(r.expires),
             "used_at": iso(r.used_at), "cert_serial": r.cert_serial, "revoked_at": iso(r.revoked_at),
             "state": "expired" if r.state == "unused" and now >= r.expires else r.state} for r in records]


def issue_with_token(ca_dir: Path, passphrase: bytes | None, store: TokenStore, csr: x509.CertificateSigningRequest,
                     *, csr_name: str, token: str, profile: str | None, days: int | None,
                     now: datetime) -> tuple[x509.Certificate, Profile]:
    """The offline path: the checks and the code of EST simpleenroll, the CSR's CN as the device id."""
    try:
        record = store.check(token, now)
    except TokenError as exc:
        raise PkiError(f"--token: token_{exc.reason}: {exc.detail}") from None
    if profile is not None and profile != record.profile:
        raise PkiError(f"--profile {profile}: the token is for profile {record.profile}; leave --profile out")
    try:
        enrolled = enroll_with_token(lambda: CaDir.open(ca_dir).unlock(passphrase), store, csr, token,
                                     username=None, now=now, days=days, via="offline")
    except EnrolRefused as exc:
        where = "--token" if exc.reason.startswith("token_") else csr_name
        raise PkiError(f"{where}: {exc.reason}: {exc.detail}") from None
    return enrolled.cert, end_entity_profile(enrolled.token.profile)


def find_root(explicit: Path | None, ca: CaDir) -> x509.Certificate:
    """The root that signed the issuing CA: --root, else CA_DIR/root.pem, else ``../*/ca.pem``
    (init-root and issue-ca lay the two CA directories side by side)."""
    candidates = [explicit] if explicit is not None else \
        [ca.path / "root.pem", *sorted(p for p in ca.path.parent.glob("*/ca.pem") if p.parent != ca.path)]
    for path in candidates:
        if explicit is None and not path.is_file():
            continue
        cert = load_cert(path)
        if cert.subject == ca.cert.issuer and cert.subject == cert.issuer:
            try:
                ca.cert.verify_directly_issued_by(cert)
                return cert
            except (ValueError, TypeError, InvalidSignature):
                pass
        if explicit is not None:
            raise CertFileError(path, f"is not the root that signed {ca.path / 'ca.pem'}")
    raise CertFileError(ca.path / "ca.pem", "its root certificate was not found (CA_DIR/root.pem or a root CA "
                                            "directory beside it): give --root FILE")


@dataclass(frozen=True)
class ServeOptions:
    ca_dir: Path
    passphrase: bytes | None
    listen: str
    server_name: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_key_passphrase: bytes | None = None
    root: Path | None = None
    tokens: Path | None = None


def build_server(opts: ServeOptions) -> EstHttpsServer:
    """Everything checked and listening (not yet serving): a bad option fails here, exit 2."""
    host, port = parse_listen(opts.listen)
    if (opts.tls_cert is None) != (opts.tls_key is None):
        raise PkiError("--tls-cert and --tls-key go together")
    ca = CaDir.open(opts.ca_dir).unlock(opts.passphrase)  # a wrong passphrase fails now, not at the first enrolment
    root = find_root(opts.root, ca)
    tokens = TokenStore(opts.tokens) if opts.tokens else TokenStore.for_ca(opts.ca_dir)
    client_cas = cert_pem(root, ca.cert)
    name = opts.server_name or host
    tls: TlsSource
    if opts.tls_cert is not None and opts.tls_key is not None:
        tls = FileTls(opts.tls_cert, opts.tls_key, client_cas, opts.tls_key_passphrase)
    else:
        tls = SelfIssuedTls(opts.ca_dir, opts.passphrase, name, client_cas, lock=tokens.locked)
    service = EstService(opts.ca_dir, opts.passphrase, root, tokens)
    return EstHttpsServer(service, tls, host, port, url_host=name)


def serve_until_signalled(server: EstHttpsServer) -> None:
    """Serve, print the URL line (flushed: a parent process waits for it), stop on SIGTERM/SIGINT."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    try:
        print(f"event=est_listening url={server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("event=est_stopped", file=sys.stderr, flush=True)
