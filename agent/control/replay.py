"""The persisted replay window: ids of commands already taken, for ``window`` seconds.

SQLite in its own file (next to the outbox), WAL with ``synchronous=FULL``: an id is on disk
before the command runs, so a replay after a restart or a kill -9 is still refused. Ids are
kept until ``nbf + window + skew``; anything issued earlier is refused as ``too_old`` by
:func:`agent.control.verify.check_time`, so pruning never opens a replay hole.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class ReplayStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (id BLOB PRIMARY KEY, keep_until REAL NOT NULL, "
                         "cmd TEXT NOT NULL, seen_at REAL NOT NULL)")

    def remember(self, command_id: bytes, *, keep_until: float, cmd: str, now: float) -> bool:
        """Record ``command_id``; False if it was already there (a replay)."""
        with self._db:
            self._db.execute("DELETE FROM seen WHERE keep_until < ?", (now,))
            cur = self._db.execute("INSERT OR IGNORE INTO seen (id, keep_until, cmd, seen_at) VALUES (?, ?, ?, ?)",
                                   (command_id, keep_until, cmd, now))
            return cur.rowcount == 1

    def __contains__(self, command_id: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM seen WHERE id = ?", (command_id,)).fetchone() is not None

    def __len__(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._db.close()
