"""Follow a reading store as it grows: the records of every source stored since the last look.

Used by the operator tools that wait for something the devices will say (a command's result,
a reading with a value). The store is opened for each look and closed again, so a tool can
watch the store of a running receiver (SQLite in WAL mode, or PostgreSQL) without holding it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from ioc.store import open_store
from ioc.store.sqlite import parse_path

PAGE = 5000


def store_exists(url: str) -> bool:
    """False for a SQLite store the receiver has not created yet (nothing to read so far)."""
    return url.startswith(("postgresql://", "postgres://")) or parse_path(url).is_file()


class StoreTail:
    """Yields each stored record once, source by source in seq order.

    ``from_now=True`` skips what is already stored when the tail starts: a tool that has just
    sent a command only cares about what comes back after it.
    """

    def __init__(self, url: str, *, from_now: bool = False, backlog: int = 0) -> None:
        self.url = url
        self._after: dict[str, int] = {}
        if from_now and store_exists(url):
            with open_store(url) as store:
                for source, st in store.stats().items():
                    top = st["highest_seq"]
                    self._after[source] = (top if top is not None else -1) - backlog

    def new(self) -> Iterator[dict[str, Any]]:
        if not store_exists(self.url):
            return
        with open_store(self.url) as store:
            for source in store.stats():
                after = self._after.get(source, -1)
                while page := store.records(source, after_seq=after, limit=PAGE):
                    for rec in page:
                        yield {"source": source, **rec}
                    after = int(page[-1]["seq"])
                    self._after[source] = after

    def follow(self, timeout: float, *, poll: float = 0.5) -> Iterator[dict[str, Any]]:
        """New records as they are stored, for ``timeout`` seconds (then the iterator ends);
        the store is looked at once more after the deadline, so a zero timeout still looks once."""
        deadline = time.monotonic() + timeout
        while True:
            yield from self.new()
            if time.monotonic() >= deadline:
                return
            time.sleep(poll)
