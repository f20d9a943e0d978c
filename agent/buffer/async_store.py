"""The outbox for asyncio code: every call runs on one dedicated thread.

SQLite connections belong to the thread that made them, and a FULL-durability commit
waits for an fsync (milliseconds on an SD card). So the :class:`Outbox` is created on, and
only ever used from, a single worker thread; the event loop just awaits the results.
Calls are served in the order they were made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Literal, ParamSpec, TypeVar

from agent.buffer.records import NewRecord, Priority, StoredRecord
from agent.buffer.store import AppendResult, Outbox, OutboxClosed, OutboxStats

P = ParamSpec("P")
T = TypeVar("T")


def _new_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")


async def _open_on(executor: ThreadPoolExecutor, opener: Callable[[], T]) -> T:
    job = executor.submit(opener)
    try:
        return await asyncio.wrap_future(job)
    except asyncio.CancelledError:
        # The open may still finish on the thread; close what it made, on that thread
        # (the executor runs jobs in order, so this runs after the open).
        executor.submit(_close_result, job)
        executor.shutdown(wait=False)
        raise
    except BaseException:
        executor.shutdown(wait=False)
        raise


def _close_result(job: Future[T]) -> None:
    if job.cancelled() or job.exception() is not None:
        return
    made = job.result()
    if isinstance(made, Outbox):
        made.close()


class AsyncOutbox:
    """Async twin of :class:`Outbox`; create it with :meth:`open`.

    ``changed`` is set after every append that committed rows, so the forwarder can
    sleep until there is something to send (the forwarder clears it).
    """

    def __init__(
        self, outbox: Outbox, executor: ThreadPoolExecutor, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._outbox = outbox
        self._executor = executor
        self._loop = loop
        self._closed = False
        self.changed = asyncio.Event()

    @classmethod
    async def open(
        cls, path: Path, *, max_bytes: int, durability: Literal["full", "normal"] = "full"
    ) -> AsyncOutbox:
        executor = _new_executor()
        outbox = await _open_on(
            executor, lambda: Outbox(path, max_bytes=max_bytes, durability=durability)
        )
        return cls(outbox, executor, asyncio.get_running_loop())

    @classmethod
    async def open_readonly(cls, path: Path) -> AsyncOutbox | None:
        executor = _new_executor()
        outbox = await _open_on(executor, lambda: Outbox.open_readonly(path))
        if outbox is None:
            executor.shutdown(wait=False)
            return None
        return cls(outbox, executor, asyncio.get_running_loop())

    @property
    def path(self) -> Path:
        return self._outbox.path

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise OutboxClosed(self._outbox.path, "outbox is closed")
        return await asyncio.wrap_future(self._executor.submit(fn, *args, **kwargs))

    def _append_and_signal(self, records: list[NewRecord]) -> AppendResult:
        result = self._outbox.append(records)
        # Signalled from the worker, so the wake-up happens even if the awaiting task
        # was cancelled after the commit.
        if result.seqs:
            # A closed loop has nobody left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.changed.set)
        return result

    async def append(self, records: Sequence[NewRecord]) -> AppendResult:
        # A copy: the caller may reuse its list while the worker is still reading it.
        return await self._call(self._append_and_signal, list(records))

    async def fetch(
        self, prio: Priority, after_seq: int, limit: int, max_body_bytes: int | None = None
    ) -> list[StoredRecord]:
        return await self._call(self._outbox.fetch, prio, after_seq, limit, max_body_bytes)

    async def delete(self, seqs: Sequence[int]) -> int:
        return await self._call(self._outbox.delete, list(seqs))

    async def pending(self, seqs: Sequence[int]) -> int:
        return await self._call(self._outbox.pending, list(seqs))

    async def stats(self) -> OutboxStats:
        return await self._call(self._outbox.stats)

    async def put_health(self, key: str, value: str) -> None:
        await self._call(self._outbox.put_health, key, value)

    async def health(self) -> dict[str, str]:
        return await self._call(self._outbox.health)

    async def compact(self, max_pages: int = 1000) -> int:
        return await self._call(self._outbox.compact, max_pages)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._outbox.close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
