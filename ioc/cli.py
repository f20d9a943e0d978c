"""``urbanedge ioc receive`` and ``urbanedge ioc verify``: the operations centre's side."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives.asymmetric import ec

from ioc.pipeline import DATA_CHANNELS, Pipeline, RecordSink
from ioc.verify import Opener
from pki.envelope import DEFAULT_MAX_BYTES

log = logging.getLogger("urbanedge.ioc")


class IocSetupError(Exception):
    """A file or option the receiver cannot start with (exit code 2)."""


def _add_trust_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="the provincial root certificate (the only trust anchor)")
    p.add_argument("--key", type=Path, required=True, help="the IOC recipient private key (P-256)")
    p.add_argument("--cert", type=Path, required=True, help="the IOC recipient certificate")
    p.add_argument("--key-passphrase-file", type=Path, help="file holding the key's passphrase")
    p.add_argument("--crl", type=Path, action="append", default=[], help="a CRL to check signers against (repeatable)")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest message accepted")


def add_parser(sub: Any) -> None:
    ioc = sub.add_parser("ioc", help="the operations centre: receive and verify sealed telemetry")
    isub = ioc.add_subparsers(dest="ioc_command", metavar="SUBCOMMAND", required=True)

    rx = isub.add_parser("receive", help="subscribe, decrypt, verify, store and print readings")
    rx.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    _add_trust_args(rx)
    rx.add_argument("--store", default="sqlite:ioc-readings.db",
                    help="sqlite:PATH (default) or postgresql://… shared by several receivers")
    rx.add_argument("--out", default="-", help="where verified readings go, one per line ('-' = stdout)")
    rx.add_argument("--format", choices=("json", "ngsi-ld"), default="json")
    rx.add_argument("--prefix", default="urbanedge/v1", help="topic prefix of the gateways")
    rx.add_argument("--group", default="ioc", help="shared-subscription group (MQTT v5)")
    rx.add_argument("--channels", default=",".join(DATA_CHANNELS),
                    help="data channels to subscribe to, comma-separated (a SOC: --channels security --group soc)")
    rx.add_argument("--no-share", action="store_true", help="plain subscription: this receiver gets everything")
    rx.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="MQTT protocol version")
    rx.add_argument("--client-id", default="", help="a fixed id gives a persistent session (v5: 1 h)")
    rx.add_argument("--tls-ca", type=Path, help="CA of the broker's certificate (enables TLS)")
    rx.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    rx.add_argument("--tls-key", type=Path, help="client key for mutual TLS")
    rx.add_argument("--duration", type=float, help="stop after this many seconds")
    rx.add_argument("--stats", type=Path, help="write the counters as JSON to this file when stopping")
    rx.add_argument("--receipt-key", type=Path,
                    help="the IOC command key: publish signed receipts for verified sources (installers wait for them)")
    rx.add_argument("--receipt-cert", type=Path, help="the IOC command certificate chain (PEM, leaf first)")
    rx.add_argument("--receipt-key-passphrase-file", type=Path, help="file holding the command key's passphrase")
    rx.set_defaults(func=cmd_receive)

    vf = isub.add_parser("verify", help="check captured messages offline")
    vf.add_argument("files", nargs="+", type=Path,
                    help="captured messages (sealed batches or certificate announcements)")
    _add_trust_args(vf)
    vf.add_argument("--chain", type=Path, action="append", default=[],
                    help="a signer's certificate chain PEM (leaf first), instead of announcements")
    vf.add_argument("--json", action="store_true", help="print verified records as JSON lines")
    vf.add_argument("--at", type=_when, help="check certificate validity at this time (Unix seconds or ISO 8601) "
                    "instead of now: for captures made in the past")
    vf.set_defaults(func=cmd_verify)

    sb = isub.add_parser("sbom", help="latest SBOM per device from the store, and drift from the release SBOMs")
    sb.add_argument("--store", required=True, help="the reading store: sqlite:PATH or postgresql://…")
    sb.add_argument("--releases", type=Path, help="directory of release SBOMs (*.cdx.json) to check drift against")
    sb.add_argument("--device", help="only this device")
    sb.add_argument("--out", type=Path, help="write each device's CycloneDX document as DIR/<device>.cdx.json")
    sb.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sb.set_defaults(func=cmd_sbom)

    from ioc import ota_status

    ota_status.add_parser(isub)

    from ioc import command

    command.add_parser(isub)

    from ioc import readings

    readings.add_parser(isub)

    from ioc import events

    events.add_parser(isub)


def _when(text: str) -> float:
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (Unix seconds or ISO 8601)") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def build_opener(args: argparse.Namespace) -> Opener:
    from pki.errors import PkiError
    from pki.keys import load_cert, load_crls, load_private_key

    try:
        passphrase = args.key_passphrase_file.read_bytes().strip() if args.key_passphrase_file else None
        key = load_private_key(args.key, passphrase)
        cert = load_cert(args.cert)
        root = load_cert(args.root)
        crls = [c for path in args.crl for c in load_crls(path)]
    except (PkiError, OSError) as exc:
        raise IocSetupError(str(exc)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IocSetupError(f"{args.key}: the IOC recipient key must be P-256")
    at = getattr(args, "at", None)
    if at is not None:
        return Opener(key, cert, root, crls=crls, max_bytes=args.max_bytes, clock=lambda: at)
    return Opener(key, cert, root, crls=crls, max_bytes=args.max_bytes)


def _receipt_signer(args: argparse.Namespace) -> tuple[Any, list[Any]] | None:
    if args.receipt_key is None and args.receipt_cert is None:
        return None
    if args.receipt_key is None or args.receipt_cert is None:
        raise IocSetupError("--receipt-key and --receipt-cert go together")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from pki.errors import PkiError
    from pki.keys import load_certs, load_private_key

    try:
        pw = args.receipt_key_passphrase_file.read_bytes().strip() if args.receipt_key_passphrase_file else None
        key = load_private_key(args.receipt_key, pw)
        chain = load_certs(args.receipt_cert)
    except (PkiError, OSError) as exc:
        raise IocSetupError(str(exc)) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise IocSetupError(f"{args.receipt_key}: the command key must be P-256 or Ed25519")
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def spki(k: Any) -> bytes:
        return bytes(k.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))

    if not chain or spki(chain[0].public_key()) != spki(key.public_key()):
        raise IocSetupError(f"{args.receipt_cert}: its first certificate is not the one of {args.receipt_key}")
    return key, chain


def _sink(fmt: str, stream: TextIO) -> RecordSink:
    from ioc.output import make_writer

    return make_writer(fmt, stream)


def _tls(args: argparse.Namespace) -> Any:
    if args.tls_ca is None:
        return None
    from agent.uplink.tls import client_context

    return client_context(args.tls_ca, args.tls_cert, args.tls_key)


class CrlWatcher:
    """Reloads the CRL files when they change (checked every few seconds while idle), so a
    revocation takes effect without restarting the receiver."""

    EVERY = 5.0

    def __init__(self, paths: list[Path], opener: Opener) -> None:
        self.paths, self.opener = paths, opener
        self._stamp = self._stamps()
        self._checked = time.monotonic()

    def _stamps(self) -> tuple[float, ...]:
        return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in self.paths)

    def __call__(self) -> None:
        if not self.paths or time.monotonic() - self._checked < self.EVERY:
            return
        self._checked = time.monotonic()
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        from pki.errors import PkiError
        from pki.keys import load_crls

        try:
            crls = [c for path in self.paths for c in load_crls(path)]
        except PkiError as exc:
            # Keep the CRLs we have: a half-written file must not lift revocations.
            log.warning("event=ioc_crl_reload_failed problem=%r", str(exc))
            return
        self._stamp = stamp
        self.opener.set_crls(crls)
        log.info("event=ioc_crl_reloaded files=%d revoked=%d", len(self.paths), sum(len(list(c)) for c in crls))


def cmd_receive(args: argparse.Namespace) -> int:
    from agent.log import setup_logging
    from ioc.receiver import Receiver, ReceiverSettings
    from ioc.store import StoreError, open_store

    setup_logging("info", "kv")
    host, _, port = args.broker.rpartition(":")
    try:
        opener = build_opener(args)
        if not host or not port.isdigit():
            raise IocSetupError(f"--broker {args.broker!r}: expected HOST:PORT")
        channels = tuple(c.strip() for c in args.channels.split(",") if c.strip())
        if not channels or not set(channels) <= set(DATA_CHANNELS):
            raise IocSetupError(f"--channels {args.channels!r}: some of {', '.join(DATA_CHANNELS)}")
        receipt_signer = _receipt_signer(args)
        store = open_store(args.store)
    except (IocSetupError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        stack.callback(store.close)
        out: TextIO = sys.stdout if args.out == "-" else stack.enter_context(
            open(args.out, "a", encoding="utf-8", buffering=1))
        sink = _sink(args.format, out)
        receipts = None
        if receipt_signer is not None:
            from ioc.receipting import ReceiptPublisher

            receipts = ReceiptPublisher(sink, receipt_signer[0], receipt_signer[1], lambda t, d: publish(t, d),
                                        prefix=args.prefix)
            sink = receipts
        pipeline = Pipeline(opener, store, sink)
        settings = ReceiverSettings(
            host=host, port=int(port), prefix=args.prefix, group=None if args.no_share else args.group,
            client_id=args.client_id, protocol=5 if args.mqtt == "5" else 4, tls=_tls(args),
            channels=channels,
        )
        crl_watch = CrlWatcher(args.crl, opener)

        def idle() -> None:
            crl_watch()
            if receipts is not None:
                receipts.flush()

        receiver = Receiver(settings, pipeline, on_idle=idle)

        def publish(topic: str, data: bytes) -> None:
            receiver.client.publish(topic, data, qos=1, retain=True)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        receiver.connect()
        stack.callback(receiver.close)
        log.info("event=ioc_receiving broker=%s store=%s format=%s", args.broker, args.store, args.format)
        receiver.run(duration=args.duration, stop=stop)
        pipeline.flush_parked()
        stats = pipeline.stats.as_dict()
        log.info("event=ioc_stats %s", " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                                                 for k, v in stats.items()))
        if args.stats:
            args.stats.write_text(json.dumps(stats, indent=2))
    return 0


class _MemoryStore:
    """``ioc verify`` checks files; dedupe within the run, store nothing."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()

    def accept(self, source: str, records: list[dict[str, Any]], *, received_at: float) -> Any:
        from ioc.store import AcceptResult

        new = [r for r in records if (source, r["seq"]) not in self.seen]
        self.seen.update((source, r["seq"]) for r in new)
        return AcceptResult(new=new, duplicates=len(records) - len(new), gaps=[])


def cmd_verify(args: argparse.Namespace) -> int:
    from ioc.verify import Rejected
    from pki.errors import PkiError
    from pki.keys import load_certs

    logging.basicConfig(level=logging.ERROR)
    try:
        opener = build_opener(args)
        for path in args.chain:
            opener.learn_chain(load_certs(path))
    except (IocSetupError, PkiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Rejected as exc:
        print(f"error: --chain: {exc}", file=sys.stderr)
        return 2
    pipeline = Pipeline(opener, _MemoryStore(), _sink("json", sys.stdout) if args.json else None, max_parked=0)
    messages: list[tuple[Path, bytes]] = []
    for path in args.files:
        try:
            messages.append((path, path.read_bytes()))
        except OSError as exc:
            print(f"error: {path}: {exc.strerror}", file=sys.stderr)
            return 2
    # Announcements (COSE_Sign1, tag 18 = 0xd2) first, whatever order the files came in.
    messages.sort(key=lambda m: 0 if m[1][:1] == b"\xd2" else 1)
    failed = 0
    for path, data in messages:
        channel = "cert" if data[:1] == b"\xd2" else "telemetry"
        outcome = pipeline.handle(channel, data, where=str(path))
        if outcome.status == "accepted":
            what = "certificate announcement" if channel == "cert" else f"records={outcome.new}"
            print(f"{path}: ok {what}", file=sys.stderr)
        else:
            failed += 1
            print(f"{path}: rejected reason={outcome.reason}", file=sys.stderr)
    return 1 if failed else 0


def cmd_sbom(args: argparse.Namespace) -> int:
    """Exit 0 all fine, 1 a device in drift or invalid (or --device never reported), 2 bad input."""
    from ioc.sbom import ReleaseSetError, check_drift, latest_sboms, load_releases, out_name, render_table
    from ioc.store import StoreError, open_store
    from ioc.store.sqlite import parse_path

    logging.basicConfig(level=logging.ERROR)
    if not args.store.startswith(("postgresql://", "postgres://")) and not parse_path(args.store).is_file():
        # Opening would create an empty store and report nothing wrong.
        print(f"error: --store {args.store}: no such store file", file=sys.stderr)
        return 2
    try:
        releases = load_releases(args.releases) if args.releases is not None else {}
    except ReleaseSetError as exc:
        print(f"error: --releases: {exc}", file=sys.stderr)
        return 2
    try:
        with open_store(args.store) as store:
            found = latest_sboms(store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.device is not None:
        found = {k: v for k, v in found.items() if k == args.device}
        if not found:
            print(f"error: no sbom event from device {args.device!r} in the store", file=sys.stderr)
            return 1
    devices = [check_drift(d, releases) for d in found.values()]
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            for d in devices:
                if d.bom is not None and d.status != "invalid":
                    (args.out / out_name(d.device_id)).write_text(json.dumps(d.bom, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: --out {args.out}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        sys.stdout.write(json.dumps([d.as_dict() for d in devices], indent=2) + "\n")
    else:
        sys.stdout.write(render_table(devices))
    bad = [d for d in devices if d.status in ("drift", "invalid")]
    if bad:
        log.warning("event=ioc_sbom_alarm devices=%s", ",".join(d.device_id for d in bad))
    return 1 if bad else 0
