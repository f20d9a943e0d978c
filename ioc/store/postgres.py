"""The shared reading store: PostgreSQL (psycopg 3), for several receivers at once.

Exactly once across receivers: an accept first locks its source's bookkeeping row
(``SELECT ... FOR UPDATE``), then inserts the message's records with
``ON CONFLICT (source, seq) DO NOTHING RETURNING seq``. The database reports back only
the rows this transaction inserted, so a record two receivers both got (QoS 1 redelivery
to another member of a shared subscription, a replay) is stored and reported as new by
exactly one of them. Taking the source lock first also keeps the gap bookkeeping exact:
two receivers never compute a source's holes from each other's half-done work.
Accepts for different sources do not wait for each other.

A lost connection fails the accept (:class:`StoreUnavailableError`, nothing kept) and the
next call reconnects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo

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
    StoreConfigError,
    StoreConnectError,
    StoreUnavailableError,
    check_meta,
    settle,
)

log = logging.getLogger(__name__)

# Any constant will do: it only keeps two receivers from creating the schema at once.
_SETUP_LOCK = 0x55454952

_SCHEMA = (
    f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"CREATE TABLE {READINGS_TABLE} (source TEXT NOT NULL, seq BIGINT NOT NULL,"
    " type TEXT NOT NULL, device_id TEXT NOT NULL, kind TEXT, ts DOUBLE PRECISION NOT NULL,"
    " body JSONB NOT NULL, received_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (source, seq))",
    f"CREATE INDEX readings_device_ts ON {READINGS_TABLE} (device_id, ts)",
    f"CREATE TABLE {SOURCES_TABLE} (source TEXT PRIMARY KEY, first_seq BIGINT, highest_seq BIGINT,"
    " missing BIGINT NOT NULL DEFAULT 0, stored BIGINT NOT NULL DEFAULT 0,"
    " duplicates BIGINT NOT NULL DEFAULT 0)",
)

_LOCK_SOURCE = (
    f"SELECT first_seq, highest_seq, missing FROM {SOURCES_TABLE} WHERE source = %s FOR UPDATE"
)
_INSERT = (
    f"INSERT INTO {READINGS_TABLE} (source, seq, type, device_id, kind, ts, body, received_at)"
    " SELECT %s, u.seq, u.type, u.device_id, u.kind, u.ts, u.body, %s"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::jsonb[])"
    " AS u(seq, type, device_id, kind, ts, body)"
    " ON CONFLICT (source, seq) DO NOTHING RETURNING seq"
)
_UPDATE_SOURCE = (
    f"UPDATE {SOURCES_TABLE} SET first_seq = %s, highest_seq = %s, missing = %s,"
    " stored = stored + %s, duplicates = duplicates + %s WHERE source = %s"
)

Connection = psycopg.Connection[tuple[Any, ...]]


def describe(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise StoreConfigError(f"invalid PostgreSQL connection string: {exc}") from exc
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


class PostgresReadingStore(ReadingStore):
    """See the module docstring. Thread-safe (one connection, a lock); for parallel
    accepts open one store per thread or process."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self.where = describe(dsn)
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._conn: Connection | None = self._connect()
        try:
            self._setup(self._conn)
        except BaseException:
            self._conn.close()
            raise
        log.info("event=store_open backend=postgresql where=%s sources=%d", self.where, len(self.stats()))

    def _connect(self) -> Connection:
        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout)
        except psycopg.Error as exc:
            raise StoreConnectError(f"cannot connect to {self.where}: {str(exc).strip()}") from exc

    def _setup(self, conn: Connection) -> None:
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
                cur.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_name = ANY(%s)",
                    ([META_TABLE, READINGS_TABLE, SOURCES_TABLE],),
                )
                tables = {r[0] for r in cur.fetchall()}
                if META_TABLE in tables:
                    cur.execute(f"SELECT key, value FROM {META_TABLE}")
                    check_meta(self.where, {k: v for k, v in cur.fetchall()})
                    return
                if tables:
                    raise SchemaError(
                        f"{self.where} has table(s) {', '.join(sorted(tables))} but no {META_TABLE}:"
                        " not an urbanedge reading store; refusing to touch it")
                for stmt in _SCHEMA:
                    cur.execute(stmt)
                cur.executemany(
                    f"INSERT INTO {META_TABLE} (key, value) VALUES (%s, %s)",
                    [("schema", SCHEMA_NAME), ("version", str(SCHEMA_VERSION))],
                )
                log.info("event=store_created backend=postgresql where=%s version=%d",
                         self.where, SCHEMA_VERSION)
        except psycopg.Error as exc:
            raise StoreConnectError(f"cannot set up the reading store in {self.where}: {exc}") from exc

    @contextmanager
    def _use(self) -> Iterator[Connection]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"{self.where} is closed")
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                log.info("event=store_reconnected backend=postgresql where=%s", self.where)
            try:
                yield self._conn
            except psycopg.OperationalError as exc:
                # The connection is probably gone; the next call opens a new one.
                self._conn.close()
                self._conn = None
                raise StoreUnavailableError(f"{self.where}: {str(exc).strip()}") from exc
            except psycopg.Error as exc:
                raise StoreUnavailableError(f"{self.where}: {str(exc).strip()}") from exc

    def _accept(self, source: str, rows: list[Row], repeated: int, received_at: float) -> AcceptResult:
        with self._use() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(_LOCK_SOURCE, (source,))
            found = cur.fetchone()
            if found is None:
                # First message from this source: create its row, then lock it. A receiver
                # racing us blocks on our insert and then locks the row we created.
                cur.execute(
                    f"INSERT INTO {SOURCES_TABLE} (source) VALUES (%s) ON CONFLICT DO NOTHING", (source,))
                cur.execute(_LOCK_SOURCE, (source,))
                found = cur.fetchone()
            if found is None:
                raise StoreUnavailableError(f"{self.where}: source row for {source!r} vanished")
            state = SeqState(*found)
            cur.execute(_INSERT, (
                source, received_at,
                [r.seq for r in rows], [r.type for r in rows], [r.device_id for r in rows],
                [r.kind for r in rows], [r.ts for r in rows], [r.body for r in rows],
            ))
            inserted = {r[0] for r in cur.fetchall()}
            done = settle(source, state, rows, inserted, repeated)
            cur.execute(_UPDATE_SOURCE, (
                done.state.baseline, done.state.highest, done.state.missing,
                done.stored, done.duplicates, source,
            ))
        return done.result

    def stats(self) -> dict[str, SourceStats]:
        with self._use() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT source, stored, duplicates, first_seq, highest_seq, missing FROM {SOURCES_TABLE}"
                " WHERE highest_seq IS NOT NULL ORDER BY source"
            )
            rows = cur.fetchall()
        return {
            r[0]: SourceStats(stored=r[1], duplicates=r[2], first_seq=r[3], highest_seq=r[4], missing=r[5])
            for r in rows
        }

    def open_gaps(self, source: str) -> list[Gap]:
        with self._use() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT first_seq FROM {SOURCES_TABLE} WHERE source = %s", (source,))
            found = cur.fetchone()
            if found is None or found[0] is None:
                return []
            cur.execute(OPEN_GAPS_SQL.replace("?", "%s"), (source, found[0]))
            rows = cur.fetchall()
        return [Gap(source, first, last) for first, last in rows]

    def records(self, source: str, *, after_seq: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        with self._use() as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT body FROM {READINGS_TABLE} WHERE source = %s AND seq > %s ORDER BY seq LIMIT %s",
                (source, after_seq, limit),
            )
            return [r[0] for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
