"""asyncio helpers for a stop that must never be lost.

Python 3.11 can swallow a task's cancellation (fixed in part in 3.12):

* ``asyncio.wait_for`` returns the awaited result when the cancellation arrives in the same
  loop iteration as that result (``except CancelledError: if fut.done(): return fut.result()``);
* a ``TaskGroup`` whose parent is cancelled while a child fails raises only the child's error
  in an ``ExceptionGroup``; an ``except*`` that handles it leaves no ``CancelledError``.

Either way the task goes on although it was told to stop: a loop (the uplink's reconnects, the
command queue) then runs for ever and the agent's TaskGroup waits on it for ever (an agent that
does not exit on SIGTERM, a demo that does not end). Two defences: :func:`wait_for` asks
``Task.cancelling()`` after the await (sound in tasks without a TaskGroup of their own: 3.11's
TaskGroup also leaves a count behind when a child fails, so a forwarder that lost its broker
would look stopped); and :func:`cancel_firmly`, which stops the agent and, if it has not ended
after a grace, cancels again every task that was told to stop and still runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("urbanedge.agent")

STOP_GRACE = 10.0  # s a stop may take before the stuck tasks are told again
STOP_REPEAT = 2.0  # s between repeats


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was told to stop and that got lost."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def wait_for(aw: Awaitable[T], seconds: float | None) -> T:
    """``asyncio.wait_for`` that never swallows a cancellation."""
    try:
        return await asyncio.wait_for(aw, seconds)
    finally:
        raise_if_cancelling()


def cancel_firmly(task: asyncio.Task[Any], *, grace: float = STOP_GRACE, every: float = STOP_REPEAT) -> None:
    """Cancel ``task``; if it has not ended ``grace`` s later, cancel again each task that was
    told to stop (``cancelling()``) and still runs, every ``every`` s, until ``task`` ends.
    Tasks never told to stop (a shielded outbox close) are left alone."""
    loop = task.get_loop()
    task.cancel()

    def again() -> None:
        if task.done():
            return
        stuck = [t for t in asyncio.all_tasks(loop) if not t.done() and t.cancelling()]
        log.warning("event=stop_repeated after=%.0fs tasks=%s", grace, ",".join(t.get_name() for t in stuck))
        for t in stuck:
            t.cancel()
        loop.call_later(every, again)

    loop.call_later(grace, again)
