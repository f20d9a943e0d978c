"""The only way records reach the outbox: a bounded queue drained in batches.

Pollers ``await writer.put(record)``. The queue is bounded, so when the disk (fsync) falls
behind, pollers wait, their cycles stretch and the overrun is counted: back-pressure, never
a growing backlog in RAM. One transaction (one fsync) per batch keeps the write cost per
record small.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent.buffer.async_store import AsyncOutbox
from agent.buffer.records import NewRecord, event

log = logging.getLogger("urbanedge.buffer")


class OutboxWriter:
    def __init__(self, outbox: AsyncOutbox, source: str, *, queue_records: int = 2000,
                 batch_records: int = 500) -> None:
        self.outbox = outbox
        self.source = source
        self.queue: asyncio.Queue[NewRecord] = asyncio.Queue(maxsize=queue_records)
        self.batch_records = batch_records
        self.written = 0
        self.evicted = 0
        self.dropped = 0
        self.queue_full_waits = 0
        self._eviction_reported = 0.0
        self._pending_evicted = 0
        self._pending_dropped = 0

    async def put(self, record: NewRecord) -> None:
        if self.queue.full():
            self.queue_full_waits += 1
        await self.queue.put(record)

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.batch_records and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            await self._write(batch)

    async def _write(self, batch: list[NewRecord]) -> None:
        # Shielded so a cancellation (shutdown) cannot drop a batch already taken off the queue.
        result = await asyncio.shield(self.outbox.append(batch))
        self.written += len(result.seqs)
        if result.evicted or result.dropped:
            self.evicted += result.evicted
            self.dropped += result.dropped
            self._pending_evicted += result.evicted
            self._pending_dropped += result.dropped
            await self._report_eviction()

    async def _report_eviction(self) -> None:
        now = time.time()
        # One summary event at most every 10 s: an outbox that is full stays full for hours.
        if now - self._eviction_reported < 10:
            return
        self._eviction_reported = now
        log.warning("event=outbox_eviction evicted=%d dropped=%d evicted_total=%d",
                    self._pending_evicted, self._pending_dropped, self.evicted)
        rec = event(self.source, now, "outbox_eviction", evicted=self._pending_evicted,
                    dropped=self._pending_dropped, evicted_total=self.evicted)
        self._pending_evicted = self._pending_dropped = 0
        await self.outbox.append([rec])

    async def flush(self) -> None:
        """Write whatever is queued (used on clean shutdown)."""
        batch: list[NewRecord] = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if batch:
            await self._write(batch)
