"""What the outbox answers with: its results, its statistics and its errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.buffer.records import Priority


class OutboxError(Exception):
    """The outbox cannot do what was asked; the message names the database file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class OutboxCorrupt(OutboxError):
    """The file is not an SQLite database, not an outbox, or damaged."""


class OutboxFull(OutboxError):
    """The disk is full and the operation (not ``append``, which sheds) could not complete."""


class OutboxReadOnly(OutboxError):
    """A write was attempted through ``Outbox.open_readonly``."""


class OutboxClosed(OutboxError):
    """The outbox was used after ``close()``."""


@dataclass(frozen=True)
class AppendResult:
    """``seqs`` of the committed rows, in order (a batch larger than the whole limit may
    see its own oldest rows evicted at once); rows ``evicted`` to make room for them;
    records of this batch ``dropped`` because the disk was full."""

    seqs: list[int]
    evicted: int
    dropped: int


@dataclass(frozen=True)
class OutboxStats:
    """A consistent snapshot for status and health. ``used_bytes`` counts live pages
    (what the limit applies to); ``file_bytes`` is the database plus its WAL on disk;
    ``oldest_ts`` is the ``ts`` of the oldest row still queued."""

    depth: dict[Priority, int]
    records: int
    used_bytes: int
    file_bytes: int
    max_bytes: int
    oldest_ts: float | None
    evicted_total: int
    evicted_by_prio: dict[Priority, int]
    dropped_total: int
    last_seq: int
