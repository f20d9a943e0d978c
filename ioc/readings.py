"""``urbanedge ioc readings``: the latest verified readings of field devices, from the store.

    urbanedge ioc readings --store sqlite:ioc.db --device streetlight-1
    urbanedge ioc readings --store sqlite:ioc.db --device streetlight-1 --wait-for dim_level=40

``--wait-for POINT=VALUE`` watches readings stored from now on and returns once a device
reports the value (exit 0), or at the timeout (exit 1): how an operator (or a script)
confirms that a command took effect in the field, from the device's own signed reading
rather than from the gateway's word.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from ioc.store_tail import StoreTail

# How far back to look for "the latest" reading when not waiting: enough for many devices
# on one gateway, without reading a long history.
BACKLOG = 2000


def add_parser(isub: Any) -> None:
    p = isub.add_parser("readings", help="latest verified readings per device; wait for a value")
    p.add_argument("--store", required=True, help="the reading store: sqlite:PATH or postgresql://…")
    p.add_argument("--device", action="append", default=[], help="only these field devices (repeatable)")
    p.add_argument("--wait-for", metavar="POINT=VALUE",
                   help="wait for a reading stored from now on with POINT equal to VALUE (number or true/false)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait-for (default 60)")
    p.add_argument("--point", action="append", default=[], help="show only these points (repeatable)")
    p.add_argument("--last", type=int, default=1, metavar="N",
                   help="the last N readings of each device, oldest first (default 1)")
    p.add_argument("--json", action="store_true", help="print each reading as one JSON object")
    p.set_defaults(func=cmd_readings)


def parse_expect(text: str) -> tuple[str, bool | float]:
    point, sep, value = text.partition("=")
    if not sep or not point or not value:
        raise ValueError(f"--wait-for {text!r}: expected POINT=VALUE")
    low = value.lower()
    if low in ("true", "on", "false", "off"):
        return point, low in ("true", "on")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"--wait-for {text!r}: {value!r} is not a number or true/false") from None
    if not math.isfinite(number):
        raise ValueError(f"--wait-for {text!r}: the value must be finite")
    return point, number


def matches(values: dict[str, Any], point: str, want: bool | float) -> bool:
    got = values.get(point)
    if got is None:
        return False
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(got) == bool(want)
    try:
        # Scaled registers come back as decimals: equal to the resolution a register has.
        return abs(float(got) - want) < 1e-6 * max(1.0, abs(want))
    except (TypeError, ValueError):
        return False


def _line(rec: dict[str, Any]) -> str:
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec["ts"])))
    vals = " ".join(f"{k}={v}" for k, v in sorted(rec.get("values", {}).items()))
    return f"{rec.get('device_id', '?'):<18} {t} seq={rec['seq']} [{rec.get('quality', '?')}] {vals}"


def _show(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    if args.point:
        rec = {**rec, "values": {k: v for k, v in rec.get("values", {}).items() if k in args.point}}
    print(json.dumps(rec, default=str) if args.json else _line(rec), flush=True)


def _wanted(args: argparse.Namespace, rec: dict[str, Any]) -> bool:
    return rec.get("type") == "telemetry" and (not args.device or rec.get("device_id") in args.device)


def cmd_readings(args: argparse.Namespace) -> int:
    from ioc.store import StoreError

    try:
        expect = parse_expect(args.wait_for) if args.wait_for else None
        if args.last < 1:
            raise ValueError(f"--last {args.last}: must be at least 1")
        if expect is None:
            latest: dict[str, list[dict[str, Any]]] = {}
            for rec in StoreTail(args.store, from_now=True, backlog=max(BACKLOG, 20 * args.last)).new():
                if _wanted(args, rec):
                    latest.setdefault(str(rec.get("device_id")), []).append(rec)
            for device in sorted(latest):
                for rec in latest[device][-args.last:]:
                    _show(args, rec)
            missing = [d for d in args.device if d not in latest]
            if missing:
                print(f"no readings stored for {', '.join(missing)}", file=sys.stderr)
                return 1
            return 0
        for rec in StoreTail(args.store, from_now=True).follow(args.timeout):
            if _wanted(args, rec) and matches(rec.get("values", {}), *expect):
                _show(args, rec)
                return 0
        print(f"error: no reading with {args.wait_for} within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
