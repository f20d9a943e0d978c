"""[pure] What a gateway says about a command: a sealed ``command_result`` event, and for a
refused command also a ``security`` event (a SOC watches those: someone may be probing)."""

from __future__ import annotations

from typing import Any, Literal

from agent.buffer.records import NewRecord, event
from agent.security import events

State = Literal["accepted", "done", "rejected", "failed"]


def command_result(source: str, ts: float, *, command_id: str, cmd: str, state: State,
                   reason: str | None = None, **details: Any) -> NewRecord:
    return event(source, ts, "command_result", id=command_id, cmd=cmd, state=state, reason=reason, **details)


def security_event(source: str, ts: float, *, reason: str, detail: str, command_id: str | None,
                   signer: str | None = None) -> NewRecord:
    return events.security_event(source, ts, category="command_rejected", reason=reason, detail=detail,
                                 id=command_id, signer=signer)


def crl_event(source: str, ts: float, reason: str, detail: str) -> NewRecord:
    """A configured CRL that is not used (unreadable, unknown issuer, bad signature)."""
    return events.security_event(source, ts, category="crl", reason=reason, detail=detail)
