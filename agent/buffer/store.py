"""The durable outbox: SQLite (WAL) is the queue between polling and the uplink.

One row per record. ``seq`` is an ``INTEGER PRIMARY KEY AUTOINCREMENT`` rowid, so a
sequence number is never handed out twice, even after every row was deleted and the
file reopened. A row leaves the table in one of two ways only: ``delete`` after the
broker acknowledged it, or eviction when the outbox is over its byte limit (or the disk
is full), which is counted in the ``meta`` table so the counters survive restarts.

Rows are kept compact because the outbox must hold 48 h of a city's telemetry
(1.44 M rows) in ≈300 MB: device ids are interned in a small ``device`` table, and the
priority index is *partial* (alarms and events only). Telemetry, the bulk, is read in
rowid order straight from the table, where it already sits oldest first; indexing it
would cost ≈11 B per row for nothing.

Depth per priority lives in ``meta`` too, updated in the same transaction as the rows,
so ``stats()`` never counts a million rows and another process can read it.

The caller guarantees one thread (``async_store.AsyncOutbox`` provides it).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from agent.buffer import policy
from agent.buffer.outbox_types import (
    AppendResult,
    OutboxClosed,
    OutboxCorrupt,
    OutboxError,
    OutboxFull,
    OutboxReadOnly,
    OutboxStats,
)
from agent.buffer.records import NewRecord, Priority, StoredRecord

__all__ = [
    "AppendResult", "Outbox", "OutboxClosed", "OutboxCorrupt", "OutboxError", "OutboxFull",
    "OutboxReadOnly", "OutboxStats",
]

log = logging.getLogger(__name__)

APPLICATION_ID = 0x55454F42  # "UEOB": tells our file from any other SQLite database
SCHEMA_VERSION = 1
MIN_MAX_BYTES = 64 * 1024
_URGENT = f"prio < {int(Priority.TELEMETRY)}"  # must match the partial index, word for word
_SCHEMA = (
    "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL,"
    " dev INTEGER NOT NULL, ts REAL NOT NULL, body BLOB NOT NULL)",
    f"CREATE INDEX outbox_urgent ON outbox (prio) WHERE {_URGENT}",
    "CREATE TABLE device (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE health (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
)
_COUNTERS = tuple(f"{kind}.{int(p)}" for kind in ("depth", "evicted", "dropped") for p in Priority)
_MAX_ROOM_EVICTIONS = 3
_MAX_LIMIT_ROUNDS = 4
_DELETE_CHUNK = 5000
_DEVICE_CACHE_MAX = 4096


def _translate(path: Path, exc: sqlite3.Error) -> OutboxError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return OutboxCorrupt(path, f"not a usable outbox database ({exc})")
    if code == sqlite3.SQLITE_FULL:
        return OutboxFull(path, str(exc))
    return OutboxError(path, str(exc))


@contextmanager
def _errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _translate(path, exc) from exc


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    with _errors(path):
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            # Created 0600 before SQLite sees it (SQLite gives its -wal/-shm files the same
            # mode): the outbox holds readings in plaintext until they are sealed and sent.
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise OutboxError(path, f"cannot create: {exc.strerror or exc}") from exc
            conn = sqlite3.connect(path, isolation_level=None)
        # A status reader or a checkpoint can hold a lock for a moment; wait, don't fail.
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Outbox:
    """Durable, byte-bounded queue of records; see the module docstring."""

    path: Path
    max_bytes: int
    _conn: sqlite3.Connection
    _readonly: bool
    _closed: bool
    _counters: dict[str, int]
    _pending_dropped: dict[Priority, int]
    _devices: dict[str, int]
    _page_size: int

    def __init__(
        self, path: Path, *, max_bytes: int, durability: Literal["full", "normal"] = "full"
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, got {max_bytes}")
        self.max_bytes = max_bytes
        self.durability = durability
        self._attach(Path(path), readonly=False)
        try:
            with _errors(self.path):
                self._setup_writer(durability)
        except BaseException:
            self._conn.close()
            raise
        log.info(
            "event=outbox_open path=%s records=%d used_bytes=%d max_bytes=%d last_seq=%d "
            "durability=%s", self.path, self._records(), self._used_bytes(), max_bytes,
            self._last_seq(), durability,
        )

    @classmethod
    def open_readonly(cls, path: Path) -> Outbox | None:
        """Open for reading stats and health from another process; None if no outbox yet."""
        path = Path(path)
        if _file_size(path) == 0:
            return None
        self = cls.__new__(cls)
        self._attach(path, readonly=True)
        try:
            with _errors(path):
                self._conn.execute("PRAGMA query_only = 1")
                if not self._has_schema():
                    self._conn.close()
                    return None
                self._check_schema()
                self._load_counters()
                self.max_bytes = self._counters.get("max_bytes", 0)
        except BaseException:
            self._conn.close()
            raise
        return self

    def _attach(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        self._readonly = readonly
        self._closed = False
        self._pending_dropped = {}
        self._devices = {}
        self._conn = _connect(path, readonly=readonly)

    # -- schema --------------------------------------------------------------

    def _has_schema(self) -> bool:
        # The first read of the file: a non-SQLite file fails here with SQLITE_NOTADB.
        row = self._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'"
        ).fetchone()
        return bool(row[0])

    def _setup_writer(self, durability: str) -> None:
        conn = self._conn
        fresh = not self._has_schema()
        if fresh:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise OutboxCorrupt(self.path, "an SQLite database that is not an outbox")
            # Only possible before the first table exists; lets compact() give space back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(self.path, f"cannot switch to WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous = {durability.upper()}")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        # Keep the WAL small next to the limit: it is disk the byte bound doesn't see.
        wal_pages = max(16, min(1000, self.max_bytes // self._page_size // 16))
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {wal_pages * self._page_size}")
        if fresh:
            self._create_schema()
        self._check_schema()
        self._load_counters()
        if self._counters.get("max_bytes") != self.max_bytes:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'max_bytes'", (self.max_bytes,))
            self._counters["max_bytes"] = self.max_bytes

    def _create_schema(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        for ddl in _SCHEMA:
            conn.execute(ddl)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        keys = [*_COUNTERS, "max_bytes"]
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, 0)", [(k,) for k in keys])
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        conn.execute("COMMIT")

    def _check_schema(self) -> None:
        app = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            raise OutboxCorrupt(self.path, f"not an urbanedge outbox (application_id={app})")
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise OutboxError(self.path, f"unsupported outbox schema {row and row[0]}")

    def _load_counters(self) -> None:
        rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        self._counters = {str(k): int(v) for k, v in rows}

    # -- small reads ---------------------------------------------------------

    def _used_bytes(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * page_size)

    def _last_seq(self) -> int:
        row = self._conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()
        return int(row[0]) if row else 0

    def _depth(self, delta: dict[str, int] | None = None) -> dict[Priority, int]:
        d = delta or {}
        return {
            p: self._counters[f"depth.{int(p)}"] + d.get(f"depth.{int(p)}", 0) for p in Priority
        }

    def _records(self) -> int:
        return sum(self._depth().values())

    def _check_open(self, *, write: bool) -> None:
        if self._closed:
            raise OutboxClosed(self.path, "outbox is closed")
        if write and self._readonly:
            raise OutboxReadOnly(self.path, "opened read-only")

    # -- transactions --------------------------------------------------------

    @contextmanager
    def _txn(self) -> Iterator[dict[str, int]]:
        """One write transaction; yields the counter deltas it will commit with."""
        delta: dict[str, int] = {}
        conn = self._conn
        with _errors(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield delta
                changes = [(v, k) for k, v in delta.items() if v]
                conn.executemany("UPDATE meta SET value = value + ? WHERE key = ?", changes)
                conn.execute("COMMIT")
            except BaseException:
                # SQLITE_FULL may already have rolled back; the device ids cached during
                # this transaction are gone with it.
                if conn.in_transaction:
                    conn.rollback()
                self._devices.clear()
                raise
        for k, v in delta.items():
            self._counters[k] = self._counters.get(k, 0) + v

    @contextmanager
    def _relaxed_sync(self) -> Iterator[None]:
        """No fsync of its own for this transaction. For deletes after PUBACK: if power is
        lost before the next durable commit, the rows come back and are sent again — a
        duplicate the receiver drops by (source, seq), never a loss. The next append's
        fsync makes the delete durable too (WAL frames are synced in order)."""
        if self.durability != "full":
            yield
            return
        self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            yield
        finally:
            self._conn.execute("PRAGMA synchronous = FULL")

    def _device_id(self, name: str) -> int:
        dev = self._devices.get(name)
        if dev is not None:
            return dev
        row = self._conn.execute("SELECT id FROM device WHERE name = ?", (name,)).fetchone()
        if row is None:
            cur = self._conn.execute("INSERT INTO device (name) VALUES (?)", (name,))
            dev = int(cur.lastrowid or 0)
        else:
            dev = int(row[0])
        if len(self._devices) >= _DEVICE_CACHE_MAX:
            self._devices.clear()
        self._devices[name] = dev
        return dev

    def _evict(self, plan: policy.Eviction, delta: dict[str, int]) -> int:
        total = 0
        for prio, rows in plan.rows.items():
            where = "prio = ?" if prio == Priority.TELEMETRY else f"prio = ? AND {_URGENT}"
            cur = self._conn.execute(
                "DELETE FROM outbox WHERE seq IN"
                f" (SELECT seq FROM outbox WHERE {where} ORDER BY seq LIMIT ?)",
                (int(prio), rows),
            )
            n = max(0, cur.rowcount)
            delta[f"depth.{int(prio)}"] = delta.get(f"depth.{int(prio)}", 0) - n
            delta[f"evicted.{int(prio)}"] = delta.get(f"evicted.{int(prio)}", 0) + n
            total += n
        return total

    def _enforce_limit(self, delta: dict[str, int]) -> int:
        evicted = 0
        for _ in range(_MAX_LIMIT_ROUNDS):
            plan = policy.plan_eviction(self._used_bytes(), self.max_bytes, self._depth(delta))
            n = self._evict(plan, delta) if plan else 0
            if n == 0:
                break
            evicted += n
        return evicted

    # -- append --------------------------------------------------------------

    def _append_once(self, records: Sequence[NewRecord]) -> tuple[list[int], dict[str, int]]:
        with self._txn() as delta:
            rows = [(int(r.prio), self._device_id(r.device_id), r.ts, r.body) for r in records]
            self._conn.executemany(
                "INSERT INTO outbox (prio, dev, ts, body) VALUES (?, ?, ?, ?)", rows
            )
            # One writer holds the write lock, so AUTOINCREMENT hands out a contiguous run.
            last = self._last_seq()
            for r in records:
                key = f"depth.{int(r.prio)}"
                delta[key] = delta.get(key, 0) + 1
            for prio, n in self._pending_dropped.items():
                delta[f"dropped.{int(prio)}"] = delta.get(f"dropped.{int(prio)}", 0) + n
            self._enforce_limit(delta)
        self._pending_dropped = {}
        return list(range(last - len(records) + 1, last + 1)), delta

    def _make_room(self, records: Sequence[NewRecord]) -> int:
        plan = policy.plan_room(
            policy.record_bytes(records), self._used_bytes(), self._depth()
        )
        if not plan:
            return 0
        try:
            with self._txn() as delta:
                n = self._evict(plan, delta)
        except OutboxFull:
            return 0
        log.warning(
            "event=outbox_disk_full action=evict rows=%d %s", n, _by_prio(delta, "evicted")
        )
        return n

    def _shed(self, records: Sequence[NewRecord]) -> tuple[list[NewRecord], int]:
        kept, lost = policy.shed(records)
        for r in lost:
            self._pending_dropped[r.prio] = self._pending_dropped.get(r.prio, 0) + 1
        if lost:
            log.error(
                "event=outbox_dropped reason=disk_full prio=%s rows=%d kept=%d",
                lost[0].prio.name.lower(), len(lost), len(kept),
            )
        return kept, len(lost)

    def append(self, records: Sequence[NewRecord]) -> AppendResult:
        """Commit the batch in one transaction (one fsync). Never raises for a full
        disk: evicts stored telemetry (then events) and retries, then drops the batch's
        least important records first; stored alarms are never evicted for room."""
        self._check_open(write=True)
        kept = list(records)
        evicted = dropped = 0
        room_left = _MAX_ROOM_EVICTIONS
        # Ends: each failure either spends one of a few evictions or sheds a class.
        while kept:
            try:
                seqs, delta = self._append_once(kept)
            except OutboxFull:
                freed = self._make_room(kept) if room_left > 0 else 0
                room_left -= 1
                if freed:
                    evicted += freed
                else:
                    kept, lost = self._shed(kept)
                    dropped += lost
                continue
            n = sum(v for k, v in delta.items() if k.startswith("evicted."))
            if n:
                log.warning(
                    "event=outbox_evicted reason=limit rows=%d %s used_bytes=%d max_bytes=%d",
                    n, _by_prio(delta, "evicted"), self._used_bytes(), self.max_bytes,
                )
            return AppendResult(seqs, evicted + n, dropped)
        self._flush_dropped()
        return AppendResult([], evicted, dropped)

    def _flush_dropped(self) -> None:
        """Persist drop counts on their own: updating existing meta rows needs no new
        page, so this usually succeeds on a full disk; if not, the next commit has them."""
        if not self._pending_dropped:
            return
        try:
            with self._txn() as delta:
                for prio, n in self._pending_dropped.items():
                    delta[f"dropped.{int(prio)}"] = n
        except OutboxFull:
            return
        self._pending_dropped = {}

    # -- read / ack ------------------------------------------------------------

    def fetch(
        self, prio: Priority, after_seq: int, limit: int, max_body_bytes: int | None = None
    ) -> list[StoredRecord]:
        """Up to ``limit`` rows of ``prio`` with seq > ``after_seq``, in seq order; stops
        before the bodies pass ``max_body_bytes`` (but always returns one row if any)."""
        self._check_open(write=False)
        prio = Priority(prio)
        if limit <= 0:
            return []
        where = "o.prio = ?" if prio == Priority.TELEMETRY else f"o.prio = ? AND o.{_URGENT}"
        out: list[StoredRecord] = []
        size = 0
        with _errors(self.path):
            cur = self._conn.execute(
                "SELECT o.seq, d.name, o.ts, o.body FROM outbox o JOIN device d ON d.id = o.dev"
                f" WHERE {where} AND o.seq > ? ORDER BY o.seq LIMIT ?",
                (int(prio), after_seq, limit),
            )
            for seq, name, ts, body in cur:
                size += len(body)
                if out and max_body_bytes is not None and size > max_body_bytes:
                    break
                out.append(StoredRecord(seq, prio, name, ts, bytes(body)))
            cur.close()
        return out

    def delete(self, seqs: Sequence[int]) -> int:
        """Remove acknowledged rows; returns how many existed (evicted ones don't)."""
        self._check_open(write=True)
        ids = [int(s) for s in seqs]
        if not ids:
            return 0
        deleted = 0
        with self._relaxed_sync(), self._txn() as delta:
            for i in range(0, len(ids), _DELETE_CHUNK):
                rows = self._conn.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))"
                    " RETURNING prio",
                    (json.dumps(ids[i : i + _DELETE_CHUNK]),),
                ).fetchall()
                for (p,) in rows:
                    delta[f"depth.{p}"] = delta.get(f"depth.{p}", 0) - 1
                deleted += len(rows)
        return deleted

    def pending(self, seqs: Sequence[int]) -> int:
        """How many of these rows are still here, i.e. not yet acknowledged (nor evicted)."""
        self._check_open(write=False)
        ids = [int(s) for s in seqs]
        if not ids:
            return 0
        with _errors(self.path):
            (n,) = self._conn.execute(
                "SELECT count(*) FROM outbox WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
            ).fetchone()
        return int(n)

    # -- status ----------------------------------------------------------------

    def stats(self) -> OutboxStats:
        self._check_open(write=False)
        with _errors(self.path):
            if self._readonly:
                self._conn.execute("BEGIN")  # one snapshot for every figure
            try:
                if self._readonly:
                    self._load_counters()
                    self.max_bytes = self._counters.get("max_bytes", 0)
                row = self._conn.execute("SELECT ts FROM outbox ORDER BY seq LIMIT 1").fetchone()
                used, last = self._used_bytes(), self._last_seq()
            finally:
                if self._readonly:
                    self._conn.execute("COMMIT")
        c = self._counters
        depth = self._depth()
        evicted = {p: c.get(f"evicted.{int(p)}", 0) for p in Priority}
        dropped = sum(c.get(f"dropped.{int(p)}", 0) for p in Priority)
        dropped += sum(self._pending_dropped.values())
        files = _file_size(self.path) + _file_size(self.path.with_name(self.path.name + "-wal"))
        return OutboxStats(
            depth=depth, records=sum(depth.values()), used_bytes=used, file_bytes=files,
            max_bytes=self.max_bytes, oldest_ts=None if row is None else float(row[0]),
            evicted_total=sum(evicted.values()), evicted_by_prio=evicted,
            dropped_total=dropped, last_seq=last,
        )

    def put_health(self, key: str, value: str) -> None:
        """Save one health entry (JSON text); a full disk only loses the update."""
        self._check_open(write=True)
        try:
            with self._txn():
                self._conn.execute(
                    "INSERT INTO health (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        except OutboxFull:
            log.warning("event=outbox_health_not_saved key=%s reason=disk_full", key)

    def health(self) -> dict[str, str]:
        self._check_open(write=False)
        with _errors(self.path):
            rows = self._conn.execute("SELECT key, value FROM health ORDER BY key").fetchall()
        return {str(k): str(v) for k, v in rows}

    def compact(self, max_pages: int = 1000) -> int:
        """Give free pages back to the filesystem once at least half the file is free
        (below that, appends will reuse them soon). Returns pages freed."""
        self._check_open(write=True)
        if max_pages < 1:
            raise ValueError("max_pages must be >= 1 (0 would mean 'all')")
        with _errors(self.path):
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            before = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            if before == 0 or before * 2 < pages:
                return 0
            # executescript steps the pragma to completion; execute() frees one page only.
            self._conn.executescript(f"PRAGMA incremental_vacuum({int(max_pages)})")
            freed = int(before - self._conn.execute("PRAGMA freelist_count").fetchone()[0])
            # The file only shrinks when the WAL is checkpointed into it.
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        log.info("event=outbox_compacted pages=%d free_pages_left=%d", freed, before - freed)
        return freed

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self._readonly:
                self._flush_dropped()
        finally:
            self._closed = True
            with _errors(self.path):
                self._conn.close()


def _by_prio(delta: dict[str, int], kind: str) -> str:
    return " ".join(
        f"{p.name.lower()}={delta.get(f'{kind}.{int(p)}', 0)}" for p in Priority
    )
