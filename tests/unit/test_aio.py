"""A stop is never lost (agent/aio.py): Python 3.11 swallows a cancellation that races with a
``wait_for`` result, or that meets a failing child in a TaskGroup handled by ``except*``; the
loops of the agent then ran on and the agent did not exit on SIGTERM (seen: an orphaned
agent of a test, stuck in its reconnect loop; a demo that did not end)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest

from agent import aio
from agent.buffer.async_store import AsyncOutbox
from agent.uplink.forwarder import Forwarder, UplinkSettings
from agent.uplink.topics import Topics
from tests.support import testpki


async def _race(wait: object) -> str:
    """Cancel a task in the same loop iteration as the result it waits for arrives."""
    fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def waiter() -> str:
        return await wait(fut, 10)  # type: ignore[operator, no-any-return]

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # the task now waits inside wait_for
    fut.set_result("value")
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's wait_for no longer drops the cancellation")
def test_python_3_11_wait_for_drops_a_racing_cancellation() -> None:
    assert asyncio.run(_race(asyncio.wait_for)) == "value"  # why agent/aio.py exists


def test_our_wait_for_keeps_it() -> None:
    assert asyncio.run(_race(aio.wait_for)) == "cancelled"


def test_a_stop_the_uplink_swallowed_is_repeated_until_the_agent_ends(tmp_path: Path) -> None:
    """As when the broker goes away at the moment the agent is stopped: the session's TaskGroup
    raises only the connection error, its except* handles it, the CancelledError is gone and the
    uplink reconnects for ever. A plain cancel of the agent then never ends; cancel_firmly does."""

    async def scenario() -> tuple[bool, bool]:
        outbox = await AsyncOutbox.open(tmp_path / "outbox.db", max_bytes=16 << 20)
        try:
            fwd = Forwarder(outbox, UplinkSettings(host="127.0.0.1", port=1, client_id="gw-aio",
                                                   topics=Topics("urbanedge/v1", "s", "gw-aio"), source="gw-aio",
                                                   sealer=testpki.batch_sealer("gw-aio"), reconnect_min=0.01,
                                                   reconnect_max=0.02))
            swallowed = asyncio.Event()

            async def session() -> tuple[bool, str]:
                if not swallowed.is_set():
                    with contextlib.suppress(asyncio.CancelledError):  # the one stop, eaten
                        await asyncio.sleep(3600)
                    swallowed.set()
                    return True, "connection lost"
                await asyncio.sleep(0)
                return False, "connection refused"

            fwd._session = session  # type: ignore[method-assign]

            async def agent() -> None:  # the agent's TaskGroup around its uplink
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(fwd.run(), name="uplink")

            plain = asyncio.create_task(agent())
            await asyncio.sleep(0.05)
            plain.cancel()
            await swallowed.wait()
            done_plain, _ = await asyncio.wait([plain], timeout=1.0)
            # ...and the same agent, stopped firmly (the stuck uplink is told again).
            aio.cancel_firmly(plain, grace=0.2, every=0.1)
            done_firm, _ = await asyncio.wait([plain], timeout=5.0)
            return bool(done_plain), bool(done_firm) and plain.cancelled()
        finally:
            await outbox.close()

    ended_on_plain_cancel, ended_firmly = asyncio.run(scenario())
    assert not ended_on_plain_cancel  # the hang the agent and the demo showed
    assert ended_firmly
