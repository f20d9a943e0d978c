"""Waiting for what a gateway says about a command: its sealed ``command_result`` events,
as the IOC receiver stored them (``urbanedge ioc command --store S --wait-for STATE``).

A gateway reports ``accepted`` and then one final state (``done``, ``failed``) or only
``rejected``. The tool prints each result as it arrives and ends at the first final one;
the exit code says whether it is the state the operator expected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ioc.store_tail import StoreTail
from pki.command import Command, CommandError, parse_body
from pki.envelope import EnvelopeError, parse_sign1

FINAL = ("done", "failed", "rejected")
STATES = ("accepted", *FINAL)


def command_in(data: bytes) -> Command:
    """The command inside signed bytes, unverified: only to know which id to wait for."""
    try:
        return parse_body(parse_sign1(data).payload)
    except (EnvelopeError, CommandError) as exc:
        raise ValueError(f"not a signed command: {exc}") from None


def describe(rec: dict[str, Any]) -> str:
    line = f"{rec['source']}: {rec.get('cmd')} {rec.get('state')}"
    if rec.get("reason"):
        line += f" ({rec['reason']})"
    for key in ("devices", "values", "detail"):
        if rec.get(key):
            line += f" {key}={rec[key]}"
    return line


def wait_result(tail: StoreTail, command_id: str, *, timeout: float, say: Callable[[str], None],
                poll: float = 0.5) -> str | None:
    """The final state of ``command_id`` as stored (printing each result seen), None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for rec in tail.new():
            if rec.get("type") == "event" and rec.get("event") == "command_result" and rec.get("id") == command_id:
                say(describe(rec))
                if rec.get("state") in FINAL:
                    return str(rec["state"])
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
