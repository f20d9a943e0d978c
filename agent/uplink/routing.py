"""[pure] Which channel (topic) an outbox row goes out on: by priority, and by kind for events.

Priority decides *when* a row is sent (alarms, then events, then telemetry); the channel
decides *where*. They coincide except for security events (``event: "security"``): they keep
EVENT priority, so they still overtake any telemetry backlog, but go to their own
``<prefix>/<site>/<gateway>/security`` topic, which a SOC can subscribe to alone.

The kind is read from the stored body, not from a column: it survives restarts with the
outbox as it is (no schema change), and costs one anchored regex per *event* row only
(telemetry, the bulk, is never looked at). :func:`agent.buffer.records.event` writes ``ts``
then ``event`` as the first two keys of every event body; :data:`_EVENT_NAME` relies on that.
A batch carries rows of one channel only (:func:`same_channel_run`), because one sealed
message goes to one topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.buffer.records import Priority, StoredRecord

SECURITY_EVENT = "security"
_BY_PRIORITY: dict[Priority, str] = {
    Priority.ALARM: "alarm",
    Priority.EVENT: "event",
    Priority.TELEMETRY: "telemetry",
}
# '{"ts":<number>,"event":"<name>"' at the very start: the name as records.event() wrote it.
_EVENT_NAME = re.compile(rb'\{"ts":[-+0-9.eE]+,"event":"([^"\\]*)"')


def event_name(body: bytes) -> str | None:
    """The ``event`` of an event body written by :func:`agent.buffer.records.event`, else None."""
    m = _EVENT_NAME.match(body)
    return m.group(1).decode("utf-8", "replace") if m else None


def channel_of(prio: Priority, body: bytes) -> str:
    """The channel a row of priority ``prio`` with ``body`` is published on."""
    if prio == Priority.EVENT and event_name(body) == SECURITY_EVENT:
        return "security"
    return _BY_PRIORITY[prio]


def same_channel_run(records: Sequence[StoredRecord]) -> tuple[str, list[StoredRecord]]:
    """The channel of the first record and the leading records that share it (at least one).

    The rest are left for the next batch: the caller's cursor moves only past what it takes,
    so seq order within a priority is kept across channels."""
    if not records:
        raise ValueError("no records")
    first = channel_of(records[0].prio, records[0].body)
    if records[0].prio != Priority.EVENT:
        return first, list(records)  # one priority, one channel: nothing to split
    run = [records[0]]
    for rec in records[1:]:
        if channel_of(rec.prio, rec.body) != first:
            break
        run.append(rec)
    return first, run
