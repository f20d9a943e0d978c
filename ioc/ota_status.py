"""``urbanedge ioc ota``: where each device is with a release, from its own signed reports.

Reads the verified ``ota_status`` events in the IOC store (docs/ota.md). ``--wait-for`` makes
it a watch for operators and scripts: it returns once every named device has reached the
state for the release (exit 0), or at the timeout (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ota.rollout import tally


def add_parser(isub: Any) -> None:
    p = isub.add_parser("ota", help="update status per device, from the devices' signed reports")
    p.add_argument("--store", required=True, help="the reading store: sqlite:PATH or postgresql://…")
    p.add_argument("--release", required=True, help="release version, e.g. 0.2.0")
    p.add_argument("--device", action="append", default=[], help="only these devices (repeatable)")
    p.add_argument("--wait-for", metavar="STATE", help="wait until every --device reports STATE (e.g. success)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (with --wait-for)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ota)


def _events(store_url: str) -> list[dict[str, Any]]:
    from ioc.store import open_store

    out: list[dict[str, Any]] = []
    with open_store(store_url) as store:
        for source in store.stats():
            after = -1
            while page := store.records(source, after_seq=after, limit=5000):
                out.extend(r for r in page if r.get("type") == "event" and r.get("event") == "ota_status")
                after = int(page[-1]["seq"])
    return out


def _history(events: list[dict[str, Any]], release: str) -> dict[str, list[str]]:
    h: dict[str, list[str]] = {}
    for r in events:
        if r.get("release") == release and isinstance(r.get("device_id"), str):
            h.setdefault(r["device_id"], []).append(str(r.get("state")))
    return h


def cmd_ota(args: argparse.Namespace) -> int:
    from ioc.store import StoreError
    from ioc.store.sqlite import parse_path

    if args.wait_for and not args.device:
        print("error: --wait-for needs --device (which devices to wait for)", file=sys.stderr)
        return 2
    deadline = time.monotonic() + (args.timeout if args.wait_for else 0)
    while True:
        try:
            ready = args.store.startswith(("postgresql://", "postgres://")) or parse_path(args.store).is_file()
            events = _events(args.store) if ready else []
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        t = tally(events, args.release)
        wanted = args.device or sorted(t.latest)
        done = bool(args.wait_for) and all(t.latest.get(d) == args.wait_for for d in wanted)
        if done or not args.wait_for or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    hist = _history(events, args.release)
    rows = [{"device": d, "release": args.release, "state": t.latest.get(d, "-"), "reason": t.reasons.get(d, ""),
             "history": hist.get(d, [])} for d in wanted]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            line = f"{r['device']:<20} {r['release']:<10} {r['state']:<12} {' > '.join(r['history'])}"
            print(line + (f"  ({r['reason']})" if r["reason"] else ""))
    if args.wait_for and not done:
        print(f"timed out after {args.timeout:g} s waiting for {args.wait_for}", file=sys.stderr)
        return 1
    return 0
