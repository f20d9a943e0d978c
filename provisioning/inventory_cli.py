"""``urbanedge provision inventory export|show``: the technician's record, for the utility.

Exit codes: 0 done, 1 no record of that device, 2 bad arguments or no inventory file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from provisioning.i18n import Messages, pick_language
from provisioning.inventory import Inventory, InventoryEntry, InventoryError, default_inventory_path

EXIT_NO_RECORD, EXIT_USAGE = 1, 2


def add_inventory_parser(sub: Any) -> None:
    inv = sub.add_parser("inventory", help="the record of provisioned devices: export it, look one up")
    isub = inv.add_subparsers(dest="inventory_command", metavar="SUBCOMMAND", required=True)

    ex = isub.add_parser("export", help="write every record as CSV or JSON (to hand to the utility)")
    ex.add_argument("--format", choices=("csv", "json"), default="csv")
    ex.add_argument("--out", type=Path, help="file to write (default: standard output)")
    _common(ex)
    ex.set_defaults(func=cmd_export)

    show = isub.add_parser("show", help="one device's records, oldest first, and its active certificate")
    show.add_argument("device_id", metavar="DEVICE_ID")
    _common(show)
    show.set_defaults(func=cmd_show)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inventory", type=Path, help="inventory database (default: $XDG_DATA_HOME/urbanedge/"
                                                  "inventory.db, else ~/.local/share/urbanedge/inventory.db)")
    p.add_argument("--lang", choices=("vi", "en"), help="language of the messages (default: from the locale)")


def _open(args: argparse.Namespace, m: Messages) -> Inventory | None:
    path: Path = args.inventory or default_inventory_path()
    # Reading must not leave an empty inventory behind where the technician mistyped a path.
    if not path.is_file():
        print(m.t("inv.missing", path=path), file=sys.stderr)
        return None
    return Inventory(path)


def cmd_export(args: argparse.Namespace) -> int:
    m = Messages(pick_language(args.lang, os.environ))
    try:
        inv = _open(args, m)
        if inv is None:
            return EXIT_USAGE
        if args.out is None:
            inv.export(args.format, sys.stdout)
            sys.stdout.flush()
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        # The BOM lets Excel, where the utility opens it, read Vietnamese names as UTF-8; the
        # csv module wants newline="" so its CRLF line ends are written as they are.
        encoding = "utf-8-sig" if args.format == "csv" else "utf-8"
        with open(tmp, "w", encoding=encoding, newline="") as f:
            count = inv.export(args.format, f)
        os.replace(tmp, args.out)
    except (InventoryError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(m.t("done.inventory", path=args.out), file=sys.stderr)
    print(f"event=inventory_exported format={args.format} records={count} path={args.out}", file=sys.stderr)
    return 0


def _line(e: InventoryEntry) -> str:
    at = e.at.strftime("%Y-%m-%d %H:%M:%SZ")
    cert = f" cert={e.cert_serial}" if e.cert_serial else ""
    parts = [at, f"{e.action:<12}", f"{e.result:<11}", f"kind={e.kind}"]
    if e.serial:
        parts.append(f"serial={e.serial}")
    if e.site:
        parts.append(f"site={e.site}")
    if e.technician:
        parts.append(f"by={e.technician}")
    line = " ".join(parts) + cert
    return f"{line}  {e.detail}" if e.detail else line


def cmd_show(args: argparse.Namespace) -> int:
    m = Messages(pick_language(args.lang, os.environ))
    try:
        inv = _open(args, m)
        if inv is None:
            return EXIT_USAGE
        history = inv.history(args.device_id)
        current = inv.current(args.device_id)
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not history:
        print(m.t("inv.none", device=args.device_id))
        return EXIT_NO_RECORD
    for e in history:
        print(_line(e))
    if current is None:
        print(m.t("inv.no_current", device=args.device_id))
    else:
        print(m.t("inv.current", device=args.device_id, cert_serial=current.cert_serial or "-",
                  cert_sha256=current.cert_sha256 or "-"))
    return 0
