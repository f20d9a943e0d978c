"""[pure] What a gateway says about a command: a sealed ``command_result`` event, and for a
refused command also a ``security`` event (a SOC watches those: someone may be probing)."""

from __future__ import annotations

from typing import Any, Literal

from agent.buffer.records import NewRecord, event

State = Literal["accepted", "done", "rejected", "failed"]


def command_result(source: str, ts: float, *, command_id: str, cmd: str, state: State,
                   reason: str | None = None, **details: Any) -> NewRecord:
    return event(source, ts, "command_result", id=command_id, cmd=cmd, state=state, reason=reason, **details)


def security_event(source: str, ts: float, *, reason: str, detail: str, command_id: str | None,
                   signer: str | None = None) -> NewRecord:
    return event(source, ts, "security", category="command_rejected", reason=reason, detail=detail[:300],
                 id=command_id, signer=signer)
