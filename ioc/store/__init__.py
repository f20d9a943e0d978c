"""The IOC's store of verified readings: exactly once per (source, seq), gaps tracked.

``open_store(url)`` gives the backend the URL names: ``sqlite:PATH`` or a plain path (the
default, one file), or ``postgresql://...`` (several receivers sharing one database).
"""

from __future__ import annotations

from ioc.gaps import Gap
from ioc.store.base import (
    AcceptResult,
    InvalidRecordError,
    ReadingStore,
    SchemaError,
    SourceStats,
    StoreClosedError,
    StoreConfigError,
    StoreConnectError,
    StoreError,
    StoreUnavailableError,
)
from ioc.store.sqlite import SqliteReadingStore, parse_path

__all__ = [
    "AcceptResult", "Gap", "InvalidRecordError", "ReadingStore", "SchemaError", "SourceStats",
    "SqliteReadingStore", "StoreClosedError", "StoreConfigError", "StoreConnectError", "StoreError",
    "StoreUnavailableError", "open_store",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> ReadingStore:
    """Open (creating if needed) the store at ``url``; raises a :class:`StoreError`."""
    if not url:
        raise StoreConfigError("empty store URL: give a path, sqlite:PATH or postgresql://...")
    if url.startswith(_POSTGRES_SCHEMES):
        try:
            from ioc.store.postgres import PostgresReadingStore
        except ImportError as exc:
            raise StoreConfigError(
                "a PostgreSQL store needs psycopg: pip install 'urbanedge[postgres]'") from exc
        return PostgresReadingStore(url)
    scheme, sep, _ = url.partition("://")
    if sep and scheme != "sqlite":
        raise StoreConfigError(f"unsupported store URL scheme {scheme!r}: use sqlite:PATH or postgresql://...")
    path = parse_path(url)
    if not str(path) or str(path) == ".":
        raise StoreConfigError(f"store URL {url!r} names no file")
    return SqliteReadingStore(path)
