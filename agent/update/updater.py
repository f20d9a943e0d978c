"""The gateway's update loop: check, download, install into the inactive slot, restart, verify.

Runs as one task of the agent's TaskGroup. Every step is reported to the IOC as an
``ota_status`` event through the normal outbox (sealed, durable, acknowledged like readings):
queued → downloading → installing → restarting → verifying → success | failed | rolled-back |
rejected. The network-facing work (TUF refresh, download, unpack) runs in a worker thread;
cancelling the agent during it leaves the slot store consistent because a slot only becomes
bootable by the state-file rename, which happens last.

A check starts on a schedule (``update.check_interval`` with jitter, and once shortly after
start) and when the IOC asks over MQTT (``<prefix>/<site>/<gateway>/command`` payload
``{"cmd": "update-check"}``). That request is not trusted for anything: it only makes the
gateway look now, and what it finds is verified against its provisioned TUF root; requests
closer together than ``MIN_CHECK_GAP`` are coalesced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import aio
from agent.restart import RestartRequested
from agent.update.bootstate import BootState, abandon, begin_trial, commit, inactive, status, without_pending
from agent.update.health import HealthSample, evaluate
from agent.update.slotstore import InstallError, SlotStore

log = logging.getLogger("urbanedge.update")

MIN_CHECK_GAP = 30.0
FIRST_CHECK_DELAY = 5.0
HEALTH_POLL = 1.0


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    repository: str
    root: Path
    state_dir: Path
    slots: Path
    hardware: str
    check_interval: float
    health_deadline: float
    gateway_id: str
    site: str
    running_slot: str  # from the launcher (UE_SLOT)
    agent_version: str


Report = Callable[[dict[str, Any]], Awaitable[None]]


class Updater:
    def __init__(self, settings: UpdateSettings, report: Report, sample: Callable[[], HealthSample]) -> None:
        self.s = settings
        self._report = report
        self._sample = sample
        self.store = SlotStore(settings.slots)
        self._check_now = asyncio.Event()
        self._last_check = 0.0
        self._rejected: set[tuple[str, str]] = set()  # (target, reason) already reported

    def request_check(self) -> None:
        self._check_now.set()

    async def run(self) -> None:
        state = await asyncio.to_thread(self.store.load)
        state = await self._flush_pending(state)
        t = state.trial
        if t is not None and t.slot == self.s.running_slot:
            await self._verify_trial(state)
        await self._check_loop()

    # -- reports -----------------------------------------------------------------------

    async def _flush_pending(self, state: BootState) -> BootState:
        # Written by the launcher (fall-back) while nothing could send them. Into the outbox
        # first, then cleared: a crash in between reports twice, never not at all.
        if not state.pending:
            return state
        for body in state.pending:
            await self._report(body)
        state = without_pending(state, len(state.pending))
        await asyncio.to_thread(self.store.save, state)
        return state

    async def _status(self, st: str, release: str, counter: int, reason: str | None = None, **extra: Any) -> None:
        log.info("event=ota_status state=%s release=%s counter=%d reason=%r", st, release, counter, reason or "")
        await self._report(status(st, release, counter, reason, **extra))

    # -- trial ------------------------------------------------------------------------

    async def _verify_trial(self, state: BootState) -> None:
        t = state.trial
        assert t is not None
        await self._status("verifying", t.version, t.counter, tries=t.tries)
        deadline = time.monotonic() + self.s.health_deadline
        verdict = evaluate(self._sample())
        while not verdict.ok and time.monotonic() < deadline:
            await asyncio.sleep(HEALTH_POLL)
            verdict = evaluate(self._sample())
        if verdict.ok:
            await asyncio.to_thread(self.store.save, commit(state))
            log.info("event=update_committed release=%s slot=%s", t.version, t.slot)
            await self._status("success", t.version, t.counter, slot=t.slot)
            return
        reason = f"health check failed after {self.s.health_deadline:g} s: {verdict.reason}"
        log.warning("event=update_health_failed release=%s reason=%r", t.version, reason)
        await self._status("failed", t.version, t.counter, reason)
        # The launcher boots the committed slot next and that agent sends "rolled-back".
        await asyncio.to_thread(self.store.save, abandon(state, reason))
        raise RestartRequested(reason)

    # -- checks -----------------------------------------------------------------------

    async def _check_loop(self) -> None:
        delay = FIRST_CHECK_DELAY
        while True:
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._check_now.wait(), delay)
            self._check_now.clear()
            gap = time.monotonic() - self._last_check
            min_gap = min(MIN_CHECK_GAP, self.s.check_interval)
            if self._last_check and gap < min_gap:
                delay = min_gap - gap
                continue
            self._last_check = time.monotonic()
            await self.check_once()
            # Jitter spreads a fleet's checks so the repository is not hit all at once.
            delay = self.s.check_interval * random.uniform(0.8, 1.2)

    async def check_once(self) -> None:
        """One check; installs and raises RestartRequested when there is a release to boot."""
        from agent.update.errors import InsufficientSpace, UpdateRejected, UpdateUnavailable
        from agent.update.tuf_client import ReleaseClient
        from ota.release_meta import ReleaseRejected, Verdict, check_release, in_cohort

        state = await asyncio.to_thread(self.store.load)
        if state.trial is not None:
            return  # a release is on trial already; the launcher decides what runs
        release, counter, target = "", 0, ""
        try:
            client = await asyncio.to_thread(self._client, ReleaseClient)
            await asyncio.to_thread(client.refresh)
            rollout = await asyncio.to_thread(client.rollout, "gateway")
            if rollout is None or rollout.state != "active":
                log.info("event=update_none reason=%s", "no rollout" if rollout is None else "rollout halted")
                return
            if not in_cohort(rollout, self.s.gateway_id, self.s.site):
                log.info("event=update_none reason=not_in_cohort rollout=%s", rollout.id)
                return
            target = rollout.release
            if target in state.failed:
                log.info("event=update_none reason=failed_before target=%s", target)
                return
            info = await asyncio.to_thread(client.release, target)
            release, counter = info.version, info.release_counter
            verdict = check_release(info, committed_counter=state.counter, hw=self.s.hardware,
                                    agent_version=self.s.agent_version)
            if verdict is Verdict.ALREADY_INSTALLED:
                log.info("event=update_none reason=already_installed release=%s", release)
                return
            await self._status("queued", release, counter, target=target, rollout=rollout.id)
            await self._status("downloading", release, counter, bytes=info.length)
            path = await asyncio.to_thread(client.download, info)
            await self._status("installing", release, counter)
            slot = inactive(state)
            await asyncio.to_thread(self.store.install, slot, Path(path), version=release, counter=counter)
        except (UpdateRejected, ReleaseRejected) as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            key = (target, str(reason))
            if key not in self._rejected:  # a refused release is reported once, not every check
                self._rejected.add(key)
                detail = getattr(exc, "detail", "") or str(exc)
                await self._status("rejected", release, counter, f"{reason}: {detail}", target=target)
            return
        except (UpdateUnavailable, InsufficientSpace, InstallError) as exc:
            await self._status("failed", release, counter, f"{type(exc).__name__}: {exc}", target=target)
            return
        except Exception as exc:  # a bug or an unforeseen input: report it, keep the agent running
            log.exception("event=update_check_crashed")
            await self._status("failed", release, counter, f"internal error: {type(exc).__name__}: {exc}",
                               target=target)
            return
        await asyncio.to_thread(self.store.save, begin_trial(state, slot, release, counter, target))
        await self._status("restarting", release, counter, slot=slot)
        raise RestartRequested(f"release {release} installed in slot {slot}")

    def _client(self, factory: Any) -> Any:
        meta = self.s.state_dir / "metadata"
        meta.mkdir(parents=True, exist_ok=True)
        # The provisioned root bootstraps trust only on the first run; after that the cached
        # (and possibly rotated) root in metadata/ is what is trusted.
        bootstrap = None if (meta / "root.json").exists() else self.s.root.read_bytes()
        return factory(meta, self.s.repository, bootstrap_root=bootstrap, download_dir=self.s.state_dir / "downloads")
