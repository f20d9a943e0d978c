"""``urbanedge pki …`` (also ``python -m pki …``): the provincial PKI from a shell.

Exit codes: 0 success, 2 bad input (missing or malformed file, wrong passphrase, CSR unfit
for the profile, unknown profile, a key that would be overwritten) with a one-line message
naming the file and the problem; 1 an unexpected runtime failure.

CA passphrases come from ``--passphrase-file FILE`` or ``UE_CA_PASSPHRASE`` (the root's, for
``issue-ca``, from ``--root-passphrase-file`` or ``UE_ROOT_PASSPHRASE``, else the same as the
new CA's), never from the command line, where any user could read it in the process list.

Enrolment (``pki/enroll``): ``serve`` runs the issuing CA's EST service; ``token create|list|
revoke`` manage one-time enrolment tokens; ``issue --token`` is the offline path, with the
same checks as EST ``simpleenroll``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki import show as show_mod
from pki.castore import CRL_FILE, KEY_FILE, REASONS, CaDir, parse_serial
from pki.errors import CertFileError, FileProblem, PkiError
from pki.keys import KEY_TYPES, cert_pem, load_cert, load_csr, read_input, write_public_file
from pki.profiles import (
    END_ENTITY_PROFILES,
    ISSUING_CA,
    ROOT,
    SubjectFields,
    end_entity_profile,
    name_text,
)
from pki.request import create_request
from pki.show import serial_hex

MIN_CA_PASSPHRASE = 12
CA_PASS_ENV, ROOT_PASS_ENV, KEY_PASS_ENV = "UE_CA_PASSPHRASE", "UE_ROOT_PASSPHRASE", "UE_KEY_PASSPHRASE"
Command = Callable[[argparse.Namespace], int]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``pki`` and its subcommands to ``sub``; each sets ``func`` (returns an exit code)."""
    pki = sub.add_parser("pki", help="provincial PKI: root and issuing CAs, device certificates, CRLs",
                         description="Provincial PKI: root CA, issuing CAs, device and IOC certificates, CRLs.")
    pki.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="level of the audit log on stderr (info: every CA operation; default warning, "
                          "info for serve)")
    cmds = pki.add_subparsers(dest="pki_command", metavar="ACTION", required=True)

    p = cmds.add_parser("init-root", help="create the provincial root CA (keep it offline)")
    p.add_argument("--dir", required=True, type=Path, help="new CA directory (created 0700)")
    _subject_args(p, cn_help="default: '<org> Root CA'")
    p.add_argument("--days", type=int, default=ROOT.days, help=f"validity (default {ROOT.days})")
    p.add_argument("--crl-url", help="CRL distribution point written into certificates this CA issues")
    _passphrase_arg(p, CA_PASS_ENV, "the new root key's passphrase")
    p.set_defaults(func=cmd_init_root)

    p = cmds.add_parser("issue-ca", help="create an issuing CA signed by the root")
    p.add_argument("--root-dir", required=True, type=Path, help="the root CA directory")
    p.add_argument("--dir", required=True, type=Path, help="new issuing CA directory (created 0700)")
    _subject_args(p, cn_help="default: '<org> Issuing CA'")
    p.add_argument("--days", type=int, default=ISSUING_CA.days, help=f"validity (default {ISSUING_CA.days})")
    p.add_argument("--crl-url", help="CRL distribution point written into certificates this CA issues")
    _passphrase_arg(p, CA_PASS_ENV, "the new issuing CA key's passphrase")
    p.add_argument("--root-passphrase-file", type=Path,
                   help=f"the root key's passphrase (else ${ROOT_PASS_ENV}, else the new CA's passphrase)")
    p.set_defaults(func=cmd_issue_ca)

    p = cmds.add_parser("request", help="on the device: create a key pair (0600) and a CSR")
    p.add_argument("--key", required=True, type=Path, help="new private key file (never overwritten)")
    p.add_argument("--csr", required=True, type=Path, help="CSR file to write (send this to the CA)")
    p.add_argument("--device-id", required=True, help="device id: the CN and urn:urbanedge:device:<id>")
    p.add_argument("--province", default="", help="ST")
    p.add_argument("--org", default="", help="O: utility or organisation")
    p.add_argument("--site", default="", help="OU: site")
    p.add_argument("--serial", default="", help="serialNumber: the device's hardware serial")
    p.add_argument("--country", default="VN", help="C (default VN)")
    p.add_argument("--key-type", choices=KEY_TYPES, default="p256",
                   help="p256 (default) or ed25519 (gateway, node, ioc-command only)")
    _passphrase_arg(p, KEY_PASS_ENV, "encrypt the key with this passphrase (optional)")
    p.set_defaults(func=cmd_request)

    p = cmds.add_parser("issue", help="sign a CSR with a profile (or as an enrolment token allows)")
    p.add_argument("--ca-dir", required=True, type=Path, help="the issuing CA directory")
    p.add_argument("--csr", required=True, type=Path)
    p.add_argument("--profile", choices=list(END_ENTITY_PROFILES),
                   help="required unless --token is given (the token then names it)")
    p.add_argument("--out", required=True, type=Path, help="certificate file to write (PEM)")
    p.add_argument("--chain-out", type=Path, help="also write certificate + issuing CA (PEM bundle)")
    p.add_argument("--days", type=int, help="validity (default: the profile's)")
    p.add_argument("--token", help="offline enrolment: consume this one-time token, with the checks of EST "
                                   "simpleenroll (device, serial, site, no CA rights)")
    _tokens_arg(p)
    _passphrase_arg(p, CA_PASS_ENV, "the CA key's passphrase")
    p.set_defaults(func=cmd_issue)

    p = cmds.add_parser("revoke", help="mark a certificate revoked (then run `crl`)")
    p.add_argument("--ca-dir", required=True, type=Path, help="the CA that issued it")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="serial in hex, as `show` prints it")
    which.add_argument("--cert", type=Path, help="the certificate file")
    p.add_argument("--reason", choices=list(REASONS), default="unspecified")
    p.set_defaults(func=cmd_revoke)

    p = cmds.add_parser("crl", help="sign a new CRL (written to CA_DIR/crl.pem)")
    p.add_argument("--ca-dir", required=True, type=Path)
    p.add_argument("--out", type=Path, help="also write the CRL here")
    p.add_argument("--days", type=int, default=30, help="days until nextUpdate (default 30)")
    _passphrase_arg(p, CA_PASS_ENV, "the CA key's passphrase")
    p.set_defaults(func=cmd_crl)

    p = cmds.add_parser("show", help="print certificates, CSRs or CRLs")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON array of objects")
    p.set_defaults(func=cmd_show)

    p = cmds.add_parser("serve", help="run the issuing CA's EST enrolment service (HTTPS)",
                        description="EST (RFC 7030) at https://HOST:PORT/.well-known/est: cacerts, simpleenroll "
                                    "(device id + one-time token), simplereenroll (current certificate). "
                                    "Stops on SIGTERM or SIGINT.")
    p.add_argument("--ca-dir", required=True, type=Path, help="the issuing CA directory")
    p.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (default 127.0.0.1:8443; port 0: any free)")
    p.add_argument("--server-name", help="host name or IPv4 address clients use (the self-issued TLS "
                                         "certificate's SAN and the printed URL; default: the listen host)")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate chain to use instead of a self-issued one")
    p.add_argument("--tls-key", type=Path, help="its private key (unencrypted, or $UE_KEY_PASSPHRASE)")
    p.add_argument("--root", type=Path, help="the provincial root certificate (default: CA_DIR/root.pem, else the "
                                             "root CA directory beside CA_DIR)")
    _tokens_arg(p)
    _passphrase_arg(p, CA_PASS_ENV, "the CA key's passphrase")
    p.set_defaults(func=cmd_serve, default_log_level="info")

    p = cmds.add_parser("token", help="one-time enrolment tokens: create, list, revoke")
    tok = p.add_subparsers(dest="token_command", metavar="TOKEN_ACTION", required=True)
    t = tok.add_parser("create", help="a token for one device; printed once on stdout")
    t.add_argument("--ca-dir", required=True, type=Path, help="the issuing CA directory")
    t.add_argument("--device-id", required=True, help="the device id (certificate CN) it may enrol")
    t.add_argument("--serial", required=True, help="the device's hardware serial")
    t.add_argument("--site", default="", help="the site (certificate OU) it is for")
    t.add_argument("--profile", required=True, choices=["node", "gateway"])
    t.add_argument("--ttl", default="24h", help="lifetime: N followed by s, m, h or d (default 24h)")
    t.add_argument("--technician", default="", help="who it is handed to (recorded)")
    _tokens_arg(t)
    t.set_defaults(func=cmd_token_create)
    t = tok.add_parser("list", help="every token: id, device, serial, site, expiry, use")
    t.add_argument("--ca-dir", required=True, type=Path, help="the issuing CA directory")
    t.add_argument("--json", action="store_true", help="one JSON array of objects")
    _tokens_arg(t)
    t.set_defaults(func=cmd_token_list)
    t = tok.add_parser("revoke", help="withdraw an unused token")
    t.add_argument("--ca-dir", required=True, type=Path, help="the issuing CA directory")
    t.add_argument("--id", required=True, help="the token id (the part after 'uet1.')")
    _tokens_arg(t)
    t.set_defaults(func=cmd_token_revoke)
    return pki


def _tokens_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=Path, help="token file (default CA_DIR/enrol-tokens.json)")


def _subject_args(p: argparse.ArgumentParser, cn_help: str) -> None:
    p.add_argument("--province", required=True, help="ST, e.g. 'Da Nang'")
    p.add_argument("--org", required=True, help="O: the province's or utility's name")
    p.add_argument("--cn", help=f"CN; {cn_help}")
    p.add_argument("--country", default="VN", help="C (default VN)")


def _passphrase_arg(p: argparse.ArgumentParser, env: str, what: str) -> None:
    p.add_argument("--passphrase-file", type=Path, help=f"{what}; else ${env}")


def _command(func: Command) -> Command:
    """Bad input becomes one line on stderr and exit 2, never a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        from agent.log import setup_logging

        setup_logging(str(getattr(args, "log_level", None) or getattr(args, "default_log_level", "warning")))
        try:
            return func(args)
        except PkiError as exc:
            action = " ".join(a for a in (args.pki_command, getattr(args, "token_command", None)) if a)
            print(f"urbanedge pki {action}: error: {exc}", file=sys.stderr)
            return 2

    return run


def _read_passphrase(file: Path | None, env: str, *, required: bool, what: str,
                     fallback: bytes | None = None) -> bytes | None:
    if file is not None:
        # One trailing newline is the editor's, not the passphrase's.
        value = read_input(file, FileProblem).removesuffix(b"\n").removesuffix(b"\r")
        if not value:
            raise FileProblem(file, "passphrase file is empty")
        return value
    from_env = os.environ.get(env)
    if from_env:
        return from_env.encode()
    if fallback is not None:
        return fallback
    if required:
        raise PkiError(f"{what}: no passphrase given; use --passphrase-file FILE or set ${env}")
    return None


def _ca_passphrase(args: argparse.Namespace, ca_dir: Path, *, new: bool = False) -> bytes | None:
    passphrase = _read_passphrase(args.passphrase_file, CA_PASS_ENV, required=True, what=str(ca_dir / KEY_FILE))
    # PKCS#8 encryption stretches the passphrase only lightly (PBKDF2, 2048 rounds): its
    # length is what protects a CA key that leaves the offline machine on a backup.
    if new and passphrase is not None and len(passphrase) < MIN_CA_PASSPHRASE:
        raise PkiError(f"{ca_dir / KEY_FILE}: a CA passphrase needs at least {MIN_CA_PASSPHRASE} characters")
    return passphrase


def _now() -> datetime:
    return datetime.now(UTC)


def _fields(args: argparse.Namespace, default_cn: str) -> SubjectFields:
    return SubjectFields(common_name=args.cn or default_cn, province=args.province, organization=args.org,
                         country=args.country)


@_command
def cmd_init_root(args: argparse.Namespace) -> int:
    passphrase = _ca_passphrase(args, args.dir, new=True)
    ca = CaDir.init_root(args.dir, _fields(args, f"{args.org} Root CA"), passphrase, now=_now(), days=args.days,
                         crl_url=args.crl_url)
    print(f"root CA {name_text(ca.cert.subject)} serial={serial_hex(ca.cert.serial_number)} "
          f"not_after={ca.cert.not_valid_after_utc.date()} -> {args.dir}")
    return 0


@_command
def cmd_issue_ca(args: argparse.Namespace) -> int:
    passphrase = _ca_passphrase(args, args.dir, new=True)
    root_pass = _read_passphrase(args.root_passphrase_file, ROOT_PASS_ENV, required=True,
                                 what=str(args.root_dir / KEY_FILE), fallback=passphrase)
    root = CaDir.open(args.root_dir).unlock(root_pass)
    ca = root.init_issuing(args.dir, _fields(args, f"{args.org} Issuing CA"), passphrase, now=_now(),
                           days=args.days, crl_url=args.crl_url)
    print(f"issuing CA {name_text(ca.cert.subject)} serial={serial_hex(ca.cert.serial_number)} "
          f"not_after={ca.cert.not_valid_after_utc.date()} -> {args.dir}")
    return 0


@_command
def cmd_request(args: argparse.Namespace) -> int:
    passphrase = _read_passphrase(args.passphrase_file, KEY_PASS_ENV, required=False, what=str(args.key))
    fields = SubjectFields(common_name=args.device_id, province=args.province, organization=args.org,
                           site=args.site, serial=args.serial, country=args.country)
    create_request(args.key, args.csr, fields, key_type=args.key_type, passphrase=passphrase)
    print(f"key {args.key} (0600{', encrypted' if passphrase else ''}); CSR {args.csr}")
    return 0


@_command
def cmd_issue(args: argparse.Namespace) -> int:
    if args.profile is None and args.token is None:
        raise PkiError("--profile is required (or --token, whose profile is used)")
    for out in (args.out, args.chain_out):
        if out is not None and not out.parent.is_dir():  # before signing: the index records every signature
            raise CertFileError(out, "its directory does not exist")
    ca = CaDir.open(args.ca_dir)
    csr = load_csr(args.csr)
    passphrase = _ca_passphrase(args, args.ca_dir)
    ca.unlock(passphrase)
    if args.token is not None:
        from pki.enroll.commands import issue_with_token, token_store

        cert, profile = issue_with_token(args.ca_dir, passphrase, token_store(args.ca_dir, args.tokens), csr,
                                         csr_name=str(args.csr), token=args.token, profile=args.profile,
                                         days=args.days, now=_now())
    else:
        profile = end_entity_profile(args.profile)
        cert = ca.issue(csr, profile, now=_now(), days=args.days, csr_name=str(args.csr))
    write_public_file(args.out, cert_pem(cert))
    if args.chain_out:
        write_public_file(args.chain_out, cert_pem(cert, ca.cert))
    print(f"{profile.name} certificate serial={serial_hex(cert.serial_number)} "
          f"not_after={cert.not_valid_after_utc.date()} -> {args.out}")
    return 0


@_command
def cmd_revoke(args: argparse.Namespace) -> int:
    ca = CaDir.open(args.ca_dir)
    serial = parse_serial(args.serial) if args.serial else load_cert(args.cert).serial_number
    entry = ca.revoke(serial, args.reason, now=_now())
    print(f"revoked serial={entry.serial} at={entry.revoked_at} reason={entry.reason}; "
          f"run `crl` to publish it")
    return 0


@_command
def cmd_crl(args: argparse.Namespace) -> int:
    ca = CaDir.open(args.ca_dir)
    ca.unlock(_ca_passphrase(args, args.ca_dir))
    crl = ca.make_crl(now=_now(), days=args.days)
    if args.out:
        write_public_file(args.out, crl.public_bytes(serialization.Encoding.PEM))
    print(f"CRL number={ca.index.crl_number} revoked={len(crl)} -> {args.out or args.ca_dir / CRL_FILE}")
    return 0


@_command
def cmd_show(args: argparse.Namespace) -> int:
    items: list[dict[str, Any]] = []
    for path in args.files:
        for item in _describe_file(path):
            items.append({"file": str(path), **item})
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print("\n\n".join(show_mod.format_text(item) for item in items))
    return 0


def _describe_file(path: Path) -> list[dict[str, Any]]:
    data = read_input(path, CertFileError)
    try:
        if b"-----BEGIN" in data:
            if b"-----BEGIN X509 CRL" in data:
                return [show_mod.describe_crl(x509.load_pem_x509_crl(data))]
            if b"-----BEGIN CERTIFICATE REQUEST" in data:
                return [show_mod.describe_csr(x509.load_pem_x509_csr(data))]
            return [show_mod.describe_certificate(c) for c in x509.load_pem_x509_certificates(data)]
        with contextlib.suppress(ValueError):
            return [show_mod.describe_certificate(x509.load_der_x509_certificate(data))]
        with contextlib.suppress(ValueError):
            return [show_mod.describe_csr(x509.load_der_x509_csr(data))]
        return [show_mod.describe_crl(x509.load_der_x509_crl(data))]
    except ValueError:
        pass
    raise CertFileError(path, "not a certificate, CSR or CRL (PEM or DER)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m")  # + " pki" from the subparser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_parser(sub)
    # `python -m pki init-root …` reads like `urbanedge pki init-root …`.
    args = parser.parse_args(["pki", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


# -- enrolment (pki/enroll) ---------------------------------------------------------------------
@_command
def cmd_token_create(args: argparse.Namespace) -> int:
    from pki.enroll.commands import parse_ttl, record_of, token_store
    from pki.enroll.policy import kv

    store = token_store(args.ca_dir, args.tokens)
    token = store.create(args.device_id, args.serial, args.site, args.profile, parse_ttl(args.ttl), _now(),
                         args.technician)
    record = record_of(store, token)
    print(token, flush=True)
    print("event=token_created " + kv(id=record.id, device=record.device_id, serial=record.serial, site=record.site,
                                      profile=record.profile, expires=record.expires.isoformat(),
                                      technician=record.technician, file=store.path), file=sys.stderr, flush=True)
    return 0


@_command
def cmd_token_list(args: argparse.Namespace) -> int:
    from pki.enroll.commands import token_json, token_store, token_table

    records = token_store(args.ca_dir, args.tokens).list()
    print(json.dumps(token_json(records, _now()), indent=2) if args.json else "\n".join(token_table(records, _now())))
    return 0


@_command
def cmd_token_revoke(args: argparse.Namespace) -> int:
    from pki.enroll.commands import token_store, used_text

    record = token_store(args.ca_dir, args.tokens).revoke_token(args.id, _now())
    print(f"token {record.id} ({record.device_id}): {used_text(record, _now())}")
    return 0


@_command
def cmd_serve(args: argparse.Namespace) -> int:
    from pki.enroll.commands import ServeOptions, build_server, serve_until_signalled

    key_pass = os.environ.get(KEY_PASS_ENV)
    server = build_server(ServeOptions(
        ca_dir=args.ca_dir, passphrase=_ca_passphrase(args, args.ca_dir), listen=args.listen,
        server_name=args.server_name, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_key_passphrase=key_pass.encode() if key_pass else None, root=args.root, tokens=args.tokens))
    serve_until_signalled(server)
    return 0
