"""The technician's inventory: one row per provisioning, replacement, renewal or decommission.

A local SQLite file (WAL, 0600) the technician exports as CSV or JSON and hands to the utility.
Rows are appended, never rewritten, except that a row written as ``in_progress`` when a flow
starts gets its final result (and the certificate, once known) when the flow ends: a row still
``in_progress`` afterwards is a run that was interrupted, and the next run for that device
finds it with :meth:`Inventory.in_progress` and resumes it instead of starting over.

Each method opens its own short connection, so an ``Inventory`` can be made and dropped
freely (the flows do) and two tools can write the same file at once.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

ACTIONS = ("provision", "replace", "decommission", "renew")
KINDS = ("gateway", "node")
RESULTS = ("ok", "failed", "in_progress")
# Successful actions after which the device holds the certificate named in the row.
CERTIFYING = ("provision", "replace", "renew")

APPLICATION_ID = 0x55454956  # "UEIV": not an outbox ("UEOB") nor an IOC store ("UEIR")
SCHEMA_VERSION = 1
_BUSY_S = 5.0  # how long to wait for another tool writing the same file

EXPORT_FIELDS = ("id", "at", "action", "kind", "device_id", "serial", "site", "cert_serial", "cert_sha256",
                 "technician", "result", "detail")

_HEX = re.compile(r"[0-9A-F]+")


class InventoryError(Exception):
    """``reason`` is one of ``invalid`` (a field the inventory refuses), ``not_found`` (no such
    row), ``storage`` (the file cannot be opened or is not an inventory)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def default_inventory_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "urbanedge" / "inventory.db"


def normalize_cert_serial(text: str) -> str:
    """The serial as ``openssl x509 -serial`` prints it: upper-case hex, an even number of
    digits. Accepts that output itself (``serial=0A1B``) and colon-separated bytes."""
    s = text.strip()
    if s.lower().startswith("serial="):
        s = s[len("serial="):]
    s = s.replace(":", "").upper()
    if s.startswith("0X"):
        s = s[2:]
    if not s:
        return ""
    if not _HEX.fullmatch(s):
        raise InventoryError("invalid", f"certificate serial {text!r} is not hex")
    return s if len(s) % 2 == 0 else "0" + s


def normalize_fingerprint(text: str) -> str:
    """SHA-256 of the certificate's DER as 64 lower-case hex digits (colons, as ``openssl x509
    -fingerprint -sha256`` prints them, are dropped)."""
    s = text.strip()
    if "=" in s:  # "sha256 Fingerprint=AB:CD:..."
        s = s.split("=", 1)[1]
    s = s.replace(":", "").lower()
    if not s:
        return ""
    if len(s) != 64 or not _HEX.fullmatch(s.upper()):
        raise InventoryError("invalid", f"certificate fingerprint {text!r} is not 64 hex digits (SHA-256)")
    return s


@dataclass(frozen=True)
class InventoryEntry:
    action: str
    kind: str
    device_id: str
    serial: str
    site: str
    cert_serial: str
    cert_sha256: str
    technician: str
    result: str
    detail: str
    at: datetime
    # The row number, set on entries read back (``record`` ignores it); pass it to update_result.
    id: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise InventoryError("invalid", f"action {self.action!r}: expected one of {', '.join(ACTIONS)}")
        if self.kind not in KINDS:
            raise InventoryError("invalid", f"kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.result not in RESULTS:
            raise InventoryError("invalid", f"result {self.result!r}: expected one of {', '.join(RESULTS)}")
        if not self.device_id:
            raise InventoryError("invalid", "device_id is empty")
        if self.at.tzinfo is None:
            # A naive time would be read back as whatever zone the reader assumes.
            raise InventoryError("invalid", f"time {self.at.isoformat()} has no time zone")
        object.__setattr__(self, "at", self.at.astimezone(UTC))
        object.__setattr__(self, "cert_serial", normalize_cert_serial(self.cert_serial))
        object.__setattr__(self, "cert_sha256", normalize_fingerprint(self.cert_sha256))

    def as_export(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": _iso(self.at), "action": self.action, "kind": self.kind,
            "device_id": self.device_id, "serial": self.serial, "site": self.site,
            "cert_serial": self.cert_serial, "cert_sha256": self.cert_sha256, "technician": self.technician,
            "result": self.result, "detail": self.detail,
        }


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ({", ".join(repr(a) for a in ACTIONS)})),
    kind TEXT NOT NULL CHECK (kind IN ({", ".join(repr(k) for k in KINDS)})),
    device_id TEXT NOT NULL,
    serial TEXT NOT NULL,
    site TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL,
    technician TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ({", ".join(repr(r) for r in RESULTS)})),
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_device ON entries (device_id, id);
"""

_COLUMNS = "id, at, action, kind, device_id, serial, site, cert_serial, cert_sha256, technician, result, detail"


def _row_entry(row: tuple[Any, ...]) -> InventoryEntry:
    (row_id, at, action, kind, device_id, serial, site, cert_serial, cert_sha256, technician, result,
     detail) = row
    return InventoryEntry(action=action, kind=kind, device_id=device_id, serial=serial, site=site,
                          cert_serial=cert_serial, cert_sha256=cert_sha256, technician=technician,
                          result=result, detail=detail, at=datetime.fromisoformat(at), id=row_id)


class Inventory:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect():
            pass

    # --- writing -------------------------------------------------------------------------

    def record(self, entry: InventoryEntry) -> int:
        """Append ``entry``; returns its row id."""
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO entries (at, action, kind, device_id, serial, site, cert_serial, cert_sha256, "
                "technician, result, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_iso(entry.at), entry.action, entry.kind, entry.device_id, entry.serial, entry.site,
                 entry.cert_serial, entry.cert_sha256, entry.technician, entry.result, entry.detail))
            row_id = cur.lastrowid
        assert row_id is not None
        return row_id

    def update_result(self, row_id: int, result: str, detail: str, *, cert_serial: str | None = None,
                      cert_sha256: str | None = None) -> None:
        """Close a row written as ``in_progress`` (or correct a result); the certificate can be
        filled in here, since a flow learns it only half-way."""
        if result not in RESULTS:
            raise InventoryError("invalid", f"result {result!r}: expected one of {', '.join(RESULTS)}")
        sets, params = ["result = ?", "detail = ?"], [result, detail]
        if cert_serial is not None:
            sets.append("cert_serial = ?")
            params.append(normalize_cert_serial(cert_serial))
        if cert_sha256 is not None:
            sets.append("cert_sha256 = ?")
            params.append(normalize_fingerprint(cert_sha256))
        with self._connect() as conn:
            cur = conn.execute(f"UPDATE entries SET {', '.join(sets)} WHERE id = ?", (*params, row_id))
            if cur.rowcount != 1:
                raise InventoryError("not_found", f"no inventory row {row_id} in {self.path}")

    # --- reading -------------------------------------------------------------------------

    def history(self, device_id: str) -> list[InventoryEntry]:
        """Every row for the device, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM entries WHERE device_id = ? ORDER BY id",
                                (device_id,)).fetchall()
        return [_row_entry(r) for r in rows]

    def current(self, device_id: str) -> InventoryEntry | None:
        """The row naming the certificate the device holds now: the latest successful provision,
        replace (or renew) with no successful decommission after it; None if there is none."""
        current: InventoryEntry | None = None
        for e in self.history(device_id):
            if e.result != "ok":
                continue
            if e.action in CERTIFYING:
                current = e
            elif e.action == "decommission":
                current = None
        return current

    def in_progress(self, device_id: str, action: str | None = None) -> InventoryEntry | None:
        """The latest interrupted run for the device (a row still ``in_progress`` with no
        successful row for the device after it), so a re-run resumes it; None if there is none."""
        found: InventoryEntry | None = None
        for e in self.history(device_id):
            if e.result == "in_progress" and (action is None or e.action == action):
                found = e
            elif e.result == "ok":
                found = None
        return found

    def entries(self) -> list[InventoryEntry]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY id").fetchall()
        return [_row_entry(r) for r in rows]

    def export(self, fmt: Literal["csv", "json"], out: TextIO) -> int:
        """Write every row, oldest first; returns how many. CSV: a header line, then one row per
        entry (RFC 4180). JSON: an array of objects with the same fields. Times are UTC, ISO 8601."""
        rows = [e.as_export() for e in self.entries()]
        if fmt == "csv":
            w = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
            w.writeheader()
            w.writerows(rows)
        elif fmt == "json":
            json.dump(rows, out, ensure_ascii=False, indent=1)
            out.write("\n")
        else:
            raise InventoryError("invalid", f"export format {fmt!r}: expected csv or json")
        return len(rows)

    # --- storage -------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite sees it (its -wal/-shm files take the same mode): the
            # inventory names every device, its site and its technician.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise InventoryError("storage", f"cannot open {self.path}: {exc.strerror or exc}") from exc
        try:
            with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
                conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_S * 1000)}")
                self._setup(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
        except sqlite3.DatabaseError as exc:
            raise InventoryError("storage", f"{self.path}: {exc}") from exc

    def _setup(self, conn: sqlite3.Connection) -> None:
        if not self._is_current(conn):
            self._create(conn)
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            self._switch_to_wal(conn)

    def _create(self, conn: sqlite3.Connection) -> None:
        # Decided under the write lock: two tools opening a new file at once must not both
        # judge it half-made.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._is_current(conn):
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                if app_id != APPLICATION_ID and (app_id != 0 or tables):
                    raise InventoryError("storage", f"{self.path} is another SQLite database, not an inventory")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise InventoryError("storage",
                                         f"{self.path} was written by a newer urbanedge (schema {version})")
                # Not executescript: it would commit the transaction that holds the lock.
                for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _switch_to_wal(self, conn: sqlite3.Connection) -> None:
        # Switching needs the file to itself, and SQLite answers "locked" at once instead of
        # waiting on busy_timeout while another tool has it open: poll for a while. Once one
        # switch succeeds the mode is stored in the file and every later open skips this.
        deadline = time.monotonic() + _BUSY_S
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise InventoryError("storage", f"{self.path}: cannot switch to WAL (journal_mode={mode})")
            return

    @staticmethod
    def _is_current(conn: sqlite3.Connection) -> bool:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        return bool(app_id == APPLICATION_ID and version == SCHEMA_VERSION)


def _rollback(conn: sqlite3.Connection) -> None:
    # Raises when no transaction is left open (the failing statement already ended it).
    with suppress(sqlite3.Error):
        conn.execute("ROLLBACK")
