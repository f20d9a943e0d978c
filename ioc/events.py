"""``urbanedge ioc events``: what gateways reported about themselves, from the store.

    urbanedge ioc events --store sqlite:ioc.db --event config_status --last 5
    urbanedge ioc events --store sqlite:ioc.db --event config_status --wait-for state=applied
    urbanedge ioc events --store sqlite:ioc.db --event security --follow

Events are sealed records like readings (``type: "event"``): command results, configuration
trials (``config_status``), local lighting changes, security events, update statuses. This is
the operator's view of them; ``--wait-for FIELD=VALUE`` returns once a new event matches
(exit 0) or at the timeout (exit 1), for scripts that push a change and wait for its outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ioc.store_tail import StoreTail

BACKLOG = 5000
SKIP = ("type", "ts", "seq", "event", "device_id", "source")


def add_parser(isub: Any) -> None:
    p = isub.add_parser("events", help="events the gateways reported (config_status, security, lighting, ...)")
    p.add_argument("--store", required=True, help="the reading store: sqlite:PATH or postgresql://…")
    p.add_argument("--event", action="append", default=[], help="only events of this name (repeatable)")
    p.add_argument("--source", action="append", default=[], help="only from these gateways/nodes (repeatable)")
    p.add_argument("--last", type=int, default=20, metavar="N", help="the last N matching events (default 20)")
    p.add_argument("--follow", action="store_true", help="then keep printing new ones until Ctrl-C")
    p.add_argument("--wait-for", metavar="FIELD=VALUE", help="wait for a new matching event with FIELD equal to VALUE")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait with --wait-for (default 300)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(func=cmd_events)


def wanted(args: argparse.Namespace, rec: dict[str, Any]) -> bool:
    return (rec.get("type") == "event" and (not args.event or rec.get("event") in args.event)
            and (not args.source or rec.get("source") in args.source))


def field_matches(rec: dict[str, Any], expect: tuple[str, str]) -> bool:
    key, value = expect
    got = rec.get(key)
    if isinstance(got, bool):
        return str(got).lower() == value.lower()
    return got is not None and str(got) == value


def line(rec: dict[str, Any]) -> str:
    t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec.get("ts", 0))))
    rest = " ".join(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
                    for k, v in rec.items() if k not in SKIP and v not in (None, ""))
    return f"{t} {rec.get('source')} {rec.get('device_id')} {rec.get('event')} {rest}"


def _show(args: argparse.Namespace, rec: dict[str, Any]) -> None:
    print(json.dumps(rec, default=str) if args.json else line(rec), flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    from ioc.store import StoreError

    try:
        if args.last < 0:
            raise ValueError(f"--last {args.last}: must not be negative")
        expect = None
        if args.wait_for is not None:
            key, sep, value = args.wait_for.partition("=")
            if not sep or not key:
                raise ValueError(f"--wait-for {args.wait_for!r}: expected FIELD=VALUE")
            expect = (key, value)
        tail = StoreTail(args.store, from_now=True, backlog=BACKLOG)
        past = [rec for rec in tail.new() if wanted(args, rec)]
        if expect is None:
            for rec in past[-args.last:] if args.last else []:
                _show(args, rec)
            if not args.follow:
                return 0
        # --follow alone runs until Ctrl-C; --wait-for until a match or the timeout.
        for rec in tail.follow(args.timeout if expect is not None else float("inf")):
            if not wanted(args, rec):
                continue
            if expect is None:
                _show(args, rec)
            elif field_matches(rec, expect):
                _show(args, rec)
                return 0
        print(f"error: no {'/'.join(args.event) or 'event'} with {args.wait_for} within {args.timeout:g} s",
              file=sys.stderr)
        return 1
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
