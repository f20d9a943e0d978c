"""Waiting for what a gateway says about a command: its sealed ``command_result`` events,
as the IOC receiver stored them (``urbanedge ioc command --store S --wait-for STATE``).

A gateway reports ``accepted`` and then one final state (``done``, ``failed``) or only
``rejected``. The tool prints each result as it arrives and ends at the first final one;
the exit code says whether it is the state the operator expected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ioc.store_tail import StoreTail
from pki.command import Command, CommandError, parse_body
from pki.envelope import EnvelopeError, parse_sign1

FINAL = ("done", "failed", "rejected")
STATES = ("accepted", *FINAL)
# A `config` command is "done" once the new file is on trial; the gateway reports how the trial
# ended in a `config_status` event with the command's id (docs/remote-config.md).
CONFIG_OUTCOMES = ("applied", "rolled-back", "abandoned")


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
                poll: float = 0.5, config_outcome: bool = False) -> str | None:
    """The final state of ``command_id`` as stored (printing each result seen), None at the timeout.

    ``config_outcome``: for a ``config`` command, go on past ``done`` to the trial's outcome."""
    for rec in tail.follow(timeout, poll=poll):
        if rec.get("type") != "event" or rec.get("id") != command_id:
            continue
        if rec.get("event") == "command_result":
            say(describe(rec))
            if rec.get("state") in FINAL and not (config_outcome and rec.get("state") == "done"):
                return str(rec["state"])
        elif rec.get("event") == "config_status" and config_outcome:
            say(f"{rec['source']}: config {rec.get('state')}" + (f" ({rec['reason']})" if rec.get("reason") else "")
                + (f" {rec['detail']}" if rec.get("detail") else ""))
            if rec.get("state") in CONFIG_OUTCOMES:
                return str(rec["state"])
    return None
