"""The default reading store: one SQLite file (WAL, ``synchronous=FULL``), created 0600.

``accept`` runs in ``BEGIN IMMEDIATE``: the write lock is taken before anything is read,
so receivers sharing the file (one host) serialise their accepts and the per-source
bookkeeping is read and written by one of them at a time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ioc.gaps import Gap, SeqState
from ioc.store.base import (
    META_TABLE,
    OPEN_GAPS_SQL,
    READINGS_TABLE,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SOURCES_TABLE,
    AcceptResult,
    ReadingStore,
    Row,
    SchemaError,
    SourceStats,
    StoreClosedError,
    StoreConnectError,
    StoreUnavailableError,
    check_meta,
    settle,
)

log = logging.getLogger(__name__)

APPLICATION_ID = 0x55454952  # "UEIR": an IOC reading store, not a gateway outbox ("UEOB")
OUTBOX_APPLICATION_ID = 0x55454F42

_SCHEMA = (
    f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    f"CREATE TABLE {READINGS_TABLE} (source TEXT NOT NULL, seq INTEGER NOT NULL,"
    " type TEXT NOT NULL, device_id TEXT NOT NULL, kind TEXT, ts REAL NOT NULL,"
    " body TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (source, seq)) WITHOUT ROWID",
    f"CREATE INDEX readings_device_ts ON {READINGS_TABLE} (device_id, ts)",
    f"CREATE TABLE {SOURCES_TABLE} (source TEXT PRIMARY KEY, first_seq INTEGER,"
    " highest_seq INTEGER, missing INTEGER NOT NULL, stored INTEGER NOT NULL,"
    " duplicates INTEGER NOT NULL) WITHOUT ROWID",
)


def parse_path(url: str) -> Path:
    """``sqlite:PATH``, ``sqlite:///ABS/PATH`` or a plain path."""
    path = url.removeprefix("sqlite:")
    if path.startswith("//"):
        path = path[2:]
    return Path(path)


class SqliteReadingStore(ReadingStore):
    """See the module docstring. Safe to share between threads (one connection, a lock)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.where = f"sqlite:{self.path}"
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._create_private()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise StoreConnectError(f"cannot open {self.where}: {exc}") from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        log.info("event=store_open backend=sqlite path=%s sources=%d", self.path, len(self.stats()))

    def _create_private(self) -> None:
        # Created here, not by SQLite, so the readings are never world-readable, not even
        # for the moment between creation and a chmod. The WAL and shm files take the
        # database file's mode.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreConnectError(f"cannot open {self.where}: {exc.strerror}") from exc
        os.close(fd)

    def _setup(self, conn: sqlite3.Connection) -> None:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                self._check_or_create(conn, app_id, tables)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise SchemaError(f"{self.where} is not an SQLite database ({exc})") from exc
            raise StoreConnectError(f"cannot open {self.where}: {exc}") from exc

    def _check_or_create(self, conn: sqlite3.Connection, app_id: int, tables: set[str]) -> None:
        if app_id == OUTBOX_APPLICATION_ID:
            raise SchemaError(f"{self.where} is a gateway outbox, not an IOC reading store")
        if META_TABLE in tables:
            meta = dict(conn.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())
            check_meta(self.where, meta)
            return
        if tables or app_id not in (0, APPLICATION_ID):
            raise SchemaError(
                f"{self.where} is an SQLite database of something else (tables: "
                f"{', '.join(sorted(tables)) or 'none'}); refusing to add a reading store to it")
        for stmt in _SCHEMA:
            conn.execute(stmt)
        conn.executemany(
            f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)",
            [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))],
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        log.info("event=store_created backend=sqlite path=%s version=%d", self.path, SCHEMA_VERSION)

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreClosedError(f"{self.where} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"{self.where}: {exc}") from exc

    def _accept(self, source: str, rows: list[Row], repeated: int, received_at: float) -> AcceptResult:
        with self._use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute(
                    f"SELECT first_seq, highest_seq, missing FROM {SOURCES_TABLE} WHERE source = ?",
                    (source,),
                ).fetchone()
                state = SeqState(*found) if found else SeqState()
                inserted: set[int] = set()
                for r in rows:
                    cur = conn.execute(
                        f"INSERT INTO {READINGS_TABLE} (source, seq, type, device_id, kind, ts, body,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (source, r.seq, r.type, r.device_id, r.kind, r.ts, r.body, received_at),
                    )
                    if cur.rowcount == 1:
                        inserted.add(r.seq)
                done = settle(source, state, rows, inserted, repeated)
                conn.execute(
                    f"INSERT INTO {SOURCES_TABLE} (source, first_seq, highest_seq, missing, stored,"
                    " duplicates) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET"
                    " first_seq = excluded.first_seq, highest_seq = excluded.highest_seq,"
                    " missing = excluded.missing, stored = stored + excluded.stored,"
                    " duplicates = duplicates + excluded.duplicates",
                    (source, done.state.baseline, done.state.highest, done.state.missing,
                     done.stored, done.duplicates),
                )
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return done.result

    def stats(self) -> dict[str, SourceStats]:
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT source, stored, duplicates, first_seq, highest_seq, missing FROM {SOURCES_TABLE}"
                " ORDER BY source"
            ).fetchall()
        return {
            r[0]: SourceStats(stored=r[1], duplicates=r[2], first_seq=r[3], highest_seq=r[4], missing=r[5])
            for r in rows
        }

    def open_gaps(self, source: str) -> list[Gap]:
        with self._use() as conn:
            found = conn.execute(
                f"SELECT first_seq FROM {SOURCES_TABLE} WHERE source = ?", (source,)).fetchone()
            if not found or found[0] is None:
                return []
            rows = conn.execute(OPEN_GAPS_SQL, (source, found[0])).fetchall()
        return [Gap(source, first, last) for first, last in rows]

    def records(self, source: str, *, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT body FROM {READINGS_TABLE} WHERE source = ? AND seq > ? ORDER BY seq LIMIT ?",
                (source, after_seq, limit),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (SQLITE_FULL, an I/O error): a second
    # ROLLBACK would fail and hide the error that matters.
    if conn.in_transaction:
        conn.execute("ROLLBACK")
