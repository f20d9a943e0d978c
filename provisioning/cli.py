"""``urbanedge provision node|gateway|replace|decommission|inventory``: the technician's tool.

Every run prints its steps one per line in the technician's language (``--lang vi|en``,
else the locale), names what to check when a step fails, and writes an inventory record.
Exit codes: 0 done, 1 a step failed (the message says what to check), 2 bad arguments or
files, 3 offline enrolment pending (take the request file to the CA, then run again).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioning.errors import ProvisionError

EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 1, 2, 3


def add_parser(sub: Any) -> None:
    prov = sub.add_parser("provision", help="field provisioning: make a gateway or node a trusted device")
    psub = prov.add_subparsers(dest="provision_command", metavar="SUBCOMMAND", required=True)

    n = psub.add_parser("node", help="provision an ESP32 node over its USB serial line")
    _node_args(n)
    _common_args(n)
    n.set_defaults(func=cmd_node)

    g = psub.add_parser("gateway", help="provision this gateway (run on the gateway)")
    _gateway_args(g)
    _common_args(g)
    g.set_defaults(func=cmd_gateway)

    r = psub.add_parser("replace", help="new hardware in an old device's place: revoke the old certificate, "
                                        "then provision the new device under the same id")
    rsub = r.add_subparsers(dest="replace_kind", metavar="KIND", required=True)
    rn = rsub.add_parser("node", help="replace a node")
    _node_args(rn)
    _common_args(rn)
    _ca_args(rn)
    rn.set_defaults(func=cmd_replace_node)
    rg = rsub.add_parser("gateway", help="replace a gateway")
    _gateway_args(rg)
    _common_args(rg)
    _ca_args(rg)
    rg.set_defaults(func=cmd_replace_gateway)

    d = psub.add_parser("decommission", help="revoke a device, publish the CRL, wipe its keys if reachable")
    d.add_argument("--device-id", required=True)
    d.add_argument("--cert-serial", help="hex serial of the certificate to revoke (default: the inventory's)")
    d.add_argument("--port", help="the node's USB serial port, to wipe its keys")
    d.add_argument("--gateway-pki-dir", type=Path, help="on the gateway: its key folder, to wipe")
    d.add_argument("--gateway-config", type=Path, help="on the gateway: its agent config (the agent is stopped)")
    _ca_args(d)
    _common_args(d)
    d.set_defaults(func=cmd_decommission)

    from provisioning.inventory_cli import add_inventory_parser
    from provisioning.lab import add_lab_parser

    add_inventory_parser(psub)
    add_lab_parser(psub)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--technician", default=os.environ.get("UE_TECHNICIAN") or getpass.getuser(),
                   help="who does this (goes into the inventory)")
    p.add_argument("--lang", choices=("vi", "en"), help="language of the messages (default: from the locale)")
    p.add_argument("--inventory", type=Path, help="inventory database (default: ~/.local/share/urbanedge)")
    p.add_argument("--state-dir", type=Path, help="where a half-finished run is remembered (default: "
                                                  "~/.local/state/urbanedge/provisioning)")


def _enrol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="the provincial root certificate (trust anchor)")
    p.add_argument("--ioc-cert", type=Path, required=True, help="the IOC recipient certificate")
    p.add_argument("--est", help="enrolment service URL, e.g. https://ca.example.vn:8443/.well-known/est")
    p.add_argument("--token", help="the one-time enrolment token for this device")
    p.add_argument("--offline-dir", type=Path,
                   help="no link to the CA: the request is written here; the certificate is read from here")
    p.add_argument("--watch-broker", help="HOST:PORT where the IOC's receipts can be read (default: --broker)")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the IOC's confirmation (0: skip)")
    p.add_argument("--force", action="store_true", help="provision even if the device already holds a certificate")


def _node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", required=True, help="the node's USB serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--baudrate", type=int, default=115200)
    p.add_argument("--node-id", required=True)
    p.add_argument("--serial", required=True, help="the board's serial number (on its label)")
    p.add_argument("--site", required=True)
    p.add_argument("--device", action="append", default=[], metavar="ID:PROFILE[:UNIT[:INTERVAL_S]]",
                   help="a sensor wired to the node's RS-485 bus (repeatable)")
    p.add_argument("--bus-port", default="2", help="UART number on the ESP32 (or a device path on the unix port)")
    p.add_argument("--bus-baudrate", type=int, default=9600)
    p.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker (TLS) the node uses")
    p.add_argument("--broker-ca", type=Path, required=True, help="CA certificate of the broker's TLS certificate")
    p.add_argument("--wifi-ssid")
    p.add_argument("--wifi-password")
    p.add_argument("--node-json", type=Path, help="extra node.json settings merged in (batch, log, keepalive...)")
    _enrol_args(p)


def _gateway_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--serial", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--province", default="")
    p.add_argument("--template", type=Path, required=True, help="site template: the [[buses]] of this site (TOML)")
    p.add_argument("--config", type=Path, default=Path("/etc/urbanedge/agent.toml"), help="agent config to write")
    p.add_argument("--pki-dir", type=Path, default=Path("/etc/urbanedge/pki"), help="where the key is made (0700)")
    p.add_argument("--broker", required=True, help="HOST:PORT of the MQTT broker")
    p.add_argument("--broker-ca", type=Path, help="CA of the broker's certificate (enables mutual TLS)")
    p.add_argument("--no-start", action="store_true", help="write and check the config, do not start the agent")
    p.add_argument("--update-url", help="the release repository (signed updates, docs/ota.md)")
    p.add_argument("--update-root", type=Path, help="its TUF root metadata (REPO/metadata/1.root.json)")
    _enrol_args(p)


def _ca_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-dir", type=Path, required=True, help="the issuing CA (operator side)")
    p.add_argument("--passphrase-file", type=Path, help="the CA key's passphrase; else $UE_CA_PASSPHRASE")
    p.add_argument("--crl-publish", type=Path, action="append", default=[],
                   help="where the IOC reads the CRL from (repeatable)")


# --- shared plumbing -----------------------------------------------------------------------------

class _Ui:
    def __init__(self, args: argparse.Namespace, total: int) -> None:
        from provisioning.i18n import Messages, pick_language
        from provisioning.progress import Progress

        self.m = Messages(pick_language(args.lang, os.environ))
        self.progress = Progress(self.m, total, sys.stdout)

    def step(self, key: str) -> Any:
        return self.progress.step(key)


def _inventory(args: argparse.Namespace) -> Any:
    from provisioning.inventory import Inventory, default_inventory_path

    return Inventory(args.inventory or default_inventory_path())


def _state_dir(args: argparse.Namespace) -> Path:
    from provisioning.state import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProvisionError("usage", f"{what} {text!r}: expected HOST:PORT")
    return host, int(port)


def _enroller(args: argparse.Namespace) -> Any:
    from provisioning.enrol import OfflineEnroller, OnlineEnroller

    if args.offline_dir is not None:
        return OfflineEnroller(args.offline_dir)
    if not args.est or not args.token:
        raise ProvisionError("usage", "give --est URL and --token TOKEN, or --offline-dir DIR")
    return OnlineEnroller(args.est, args.root, args.token)


def _watch(args: argparse.Namespace, broker: tuple[str, int]) -> Any:
    from provisioning.receipt_watch import Watch

    if args.wait <= 0:
        return None
    host, port = _host_port(args.watch_broker, "--watch-broker") if args.watch_broker else broker
    return Watch(host, port, args.root, timeout=args.wait)


def _check_files(*paths: Path | None) -> None:
    for p in paths:
        if p is not None and not p.is_file():
            raise ProvisionError("usage", f"{p}: no such file")


def _record(args: argparse.Namespace, *, action: str, kind: str, device_id: str, serial: str, site: str,
            cert: Any, result: str, detail: str) -> None:
    from provisioning.inventory import InventoryEntry
    from provisioning.node import cert_serial_hex, fingerprint

    try:
        _inventory(args).record(InventoryEntry(
            action=action, kind=kind, device_id=device_id, serial=serial, site=site,
            cert_serial=cert_serial_hex(cert) if cert is not None else "",
            cert_sha256=fingerprint(cert) if cert is not None else "", technician=args.technician,
            result=result, detail=detail, at=datetime.now(UTC)))
    except Exception as exc:  # the inventory must never hide the outcome of the provisioning itself
        print(f"inventory: {exc}", file=sys.stderr)


def _failed(exc: Exception) -> int:
    reason = getattr(exc, "reason", "unknown")
    if reason == "usage":
        print(f"error: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return EXIT_USAGE
    if reason == "offline_pending":
        return EXIT_PENDING  # the progress display already said where the request went
    return EXIT_FAILED


# --- node ----------------------------------------------------------------------------------------

def _devices(specs: list[str]) -> list[dict[str, Any]]:
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise ProvisionError("usage", f"--device {spec!r}: expected ID:PROFILE[:UNIT[:INTERVAL_S]]")
        try:
            unit = int(parts[2]) if len(parts) > 2 and parts[2] else 1
            interval = float(parts[3]) if len(parts) > 3 else 60.0
        except ValueError:
            raise ProvisionError("usage", f"--device {spec!r}: UNIT and INTERVAL_S are numbers") from None
        out.append({"id": parts[0], "profile": parts[1], "unit": unit,
                    "interval_s": int(interval) if interval.is_integer() else interval})
    if not out:
        raise ProvisionError("usage", "name at least one sensor with --device ID:PROFILE[:UNIT[:INTERVAL_S]]")
    return out


def _node_plan(args: argparse.Namespace, *, force: bool) -> Any:
    from provisioning.node import NodePlan, node_json

    _check_files(args.root, args.ioc_cert, args.broker_ca, args.node_json)
    broker = _host_port(args.broker, "--broker")
    extra = json.loads(args.node_json.read_text()) if args.node_json else None
    bus_port: str | int = int(args.bus_port) if str(args.bus_port).isdigit() else args.bus_port
    cfg = node_json(node_id=args.node_id, site=args.site, serial=args.serial, broker_host=broker[0],
                    broker_port=broker[1], bus_port=bus_port, devices=_devices(args.device),
                    wifi_ssid=args.wifi_ssid, wifi_password=args.wifi_password, extra=extra)
    cfg["bus"]["baudrate"] = args.bus_baudrate
    return NodePlan(port=args.port, node_id=args.node_id, serial=args.serial, site=args.site, node_json=cfg,
                    enroller=_enroller(args), ioc_cert=args.ioc_cert, broker_ca=args.broker_ca,
                    technician=args.technician, state_dir=_state_dir(args), watch=_watch(args, broker),
                    force=force, baudrate=args.baudrate)


def cmd_node(args: argparse.Namespace, *, action: str = "provision", force: bool | None = None,
             ui: _Ui | None = None) -> int:
    from provisioning.node import provision_node

    try:
        plan = _node_plan(args, force=args.force if force is None else force)
    except (ProvisionError, ValueError) as exc:
        print(f"error: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        return EXIT_USAGE
    ui = ui or _Ui(args, 8 if plan.watch is not None else 7)
    try:
        result = provision_node(plan, ui.step)
    except Exception as exc:
        if getattr(exc, "reason", None) is None:
            raise
        _record(args, action=action, kind="node", device_id=args.node_id, serial=args.serial, site=args.site,
                cert=None, result="failed", detail=f"{exc.reason}: {getattr(exc, 'detail', '')}")  # type: ignore[attr-defined]
        return _failed(exc)
    detail = "" if result.receipt is None else f"ioc verified {result.receipt.telemetry} telemetry records"
    _record(args, action=action, kind="node", device_id=args.node_id, serial=args.serial, site=args.site,
            cert=result.cert, result="ok", detail=detail)
    print(ui.m.t("done.provisioned", device=args.node_id))
    return 0


# --- gateway -------------------------------------------------------------------------------------

def cmd_gateway(args: argparse.Namespace, *, action: str = "provision", force: bool | None = None,
                ui: _Ui | None = None) -> int:
    from provisioning.gateway import GatewayPlan, provision_gateway

    try:
        _check_files(args.root, args.ioc_cert, args.template, args.broker_ca)
        broker = _host_port(args.broker, "--broker")
        plan = GatewayPlan(
            gateway_id=args.gateway_id, serial=args.serial, site=args.site, province=args.province,
            config_path=args.config, pki_dir=args.pki_dir, template=args.template, enroller=_enroller(args),
            ioc_cert=args.ioc_cert, broker_host=broker[0], broker_port=broker[1], state_dir=_state_dir(args),
            technician=args.technician, broker_ca=args.broker_ca, start_agent=not args.no_start,
            watch=None if args.no_start else _watch(args, broker), force=args.force if force is None else force,
            update_url=args.update_url, update_root=args.update_root)
        if (args.update_url is None) != (args.update_root is None):
            raise ProvisionError("usage", "--update-url and --update-root go together")
    except ProvisionError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    ui = ui or _Ui(args, 4 + (0 if args.no_start else 1) + (1 if plan.watch is not None else 0))
    try:
        result = provision_gateway(plan, ui.step)
    except Exception as exc:
        if getattr(exc, "reason", None) is None:
            raise
        _record(args, action=action, kind="gateway", device_id=args.gateway_id, serial=args.serial,
                site=args.site, cert=None, result="failed",
                detail=f"{exc.reason}: {getattr(exc, 'detail', '')}")  # type: ignore[attr-defined]
        return _failed(exc)
    _record(args, action=action, kind="gateway", device_id=args.gateway_id, serial=args.serial, site=args.site,
            cert=result.cert, result="ok", detail=f"agent pid {result.pid}" if result.pid else "")
    print(ui.m.t("done.provisioned", device=args.gateway_id))
    return 0


# --- decommission and replace ---------------------------------------------------------------------

def _ca_passphrase(args: argparse.Namespace) -> bytes | None:
    if args.passphrase_file is not None:
        data: bytes = Path(args.passphrase_file).read_bytes()
        return data.removesuffix(b"\n").removesuffix(b"\r")
    env = os.environ.get("UE_CA_PASSPHRASE")
    return env.encode() if env else None


def _revoke_current(args: argparse.Namespace, device_id: str, ui: _Ui, *, serial_hex: str | None = None,
                    port: str | None = None, gateway_pki_dir: Path | None = None,
                    gateway_config: Path | None = None, kind: str = "node") -> Any:
    from provisioning.decommission import DecommissionPlan, decommission

    if serial_hex is None:
        current = _inventory(args).current(device_id)
        if current is None or not current.cert_serial:
            raise ProvisionError("not_in_inventory",
                                 f"{device_id}: no active certificate in the inventory; give --cert-serial")
        serial_hex = current.cert_serial
        kind = current.kind
    plan = DecommissionPlan(device_id=device_id, cert_serial=serial_hex, ca_dir=args.ca_dir,
                            passphrase=_ca_passphrase(args), crl_publish=list(args.crl_publish),
                            node_port=port, gateway_pki_dir=gateway_pki_dir, gateway_config=gateway_config)
    result = decommission(plan, ui.step)
    _record(args, action="decommission", kind=kind, device_id=device_id, serial="", site="", cert=None,
            result="ok", detail=f"revoked {result.revoked_serial}, CRL {result.crl_number}"
                                + (f", {result.wipe_note}" if result.wipe_note else ""))
    return result


def _revocation_failed(exc: Exception) -> int:
    """Exit code for a failed revocation step; anything that is not ours to explain propagates."""
    from pki.errors import PkiError

    if isinstance(exc, PkiError):  # a CA file or passphrase problem: bad input
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(exc, "reason", None) is None:
        raise exc
    return _failed(exc)


def cmd_decommission(args: argparse.Namespace) -> int:
    wipe = 1 if (args.port or args.gateway_pki_dir) else 0
    ui = _Ui(args, 2 + wipe)
    try:
        _revoke_current(args, args.device_id, ui, serial_hex=args.cert_serial, port=args.port,
                        gateway_pki_dir=args.gateway_pki_dir, gateway_config=args.gateway_config,
                        kind="gateway" if args.gateway_pki_dir else "node")
    except Exception as exc:
        return _revocation_failed(exc)
    print(ui.m.t("done.decommissioned", device=args.device_id))
    return 0


def cmd_replace_node(args: argparse.Namespace) -> int:
    ui = _Ui(args, 2 + 7 + (1 if args.wait > 0 else 0))
    try:
        _revoke_current(args, args.node_id, ui)
    except Exception as exc:
        return _revocation_failed(exc)
    return cmd_node(args, action="replace", force=True, ui=ui)


def cmd_replace_gateway(args: argparse.Namespace) -> int:
    ui = _Ui(args, 2 + 6)
    try:
        _revoke_current(args, args.gateway_id, ui, kind="gateway")
    except Exception as exc:
        return _revocation_failed(exc)
    return cmd_gateway(args, action="replace", force=True, ui=ui)
