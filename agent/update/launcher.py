"""``urbanedge launch``: start the agent from the right application slot.

This code runs from the factory installation and is never replaced by an update: it is the
gateway's "bootloader". At every start it reads ``SLOTS/state.json``, counts a trial boot
(before the new code runs), falls back to the committed slot when a trial used up its tries,
and runs ``urbanedge run`` with the chosen slot first on ``PYTHONPATH``.

Two ways to run it:
- under systemd (``docs/operations.md``): it ``exec``s the agent, so systemd supervises the
  agent's PID and its ``Restart=always`` brings the launcher back after every exit, crash or
  update restart;
- ``--supervise`` (the demo, the lab, a machine without systemd): it stays as the parent and
  restarts the agent itself, with the same rules.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.update.bootstate import BadBootState, BootDecision, BootState, decide_boot
from agent.update.slotstore import SlotStore

log = logging.getLogger("urbanedge.launch")

# The agent exits with this code after installing a release (sysexits EX_TEMPFAIL): the
# launcher (or systemd) starts it again, which boots the new slot on trial.
EXIT_RESTART = 75
EXIT_CONFIG = 2


def add_parser(sub: Any) -> None:
    p = sub.add_parser("launch", help="run the agent from its active application slot (updates, rollback)",
                       description="Choose the application slot (A/B, trial boots, fall-back) and run the agent.")
    p.add_argument("-c", "--config", required=True, type=Path, help="agent config (TOML)")
    p.add_argument("--supervise", action="store_true",
                   help="stay as the parent and restart the agent (without systemd)")
    p.set_defaults(func=cmd_launch)


def agent_command(config: Path) -> list[str]:
    # -P: no current directory on sys.path, so a checkout the launcher happens to run in
    # cannot shadow the slot's packages.
    return [sys.executable, "-P", "-m", "urbanedge", "run", "-c", str(config)]


def agent_env(store: SlotStore, decision: BootDecision) -> dict[str, str]:
    env = dict(os.environ)
    slot_dir = store.slot_dir(decision.run)
    if slot_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(slot_dir), env.get("PYTHONPATH", "")) if p)
    env["UE_SLOT"] = decision.run
    env["UE_SLOTS"] = str(store.root)
    return env


def boot(store: SlotStore, max_tries: int) -> BootDecision:
    """Decide and persist one start. A corrupt state file boots factory, and says so."""
    try:
        state = store.load()
    except BadBootState as exc:
        log.error("event=boot_state_corrupt problem=%r action=factory", str(exc))
        state = BootState(pending=({"state": "failed", "release": "", "counter": 0,
                                    "reason": f"boot state unreadable, started factory: {exc}"},))
    store.cleanup()
    decision = decide_boot(state, max_tries)
    store.save(decision.state)
    if decision.fell_back:
        log.warning("event=update_fell_back slot=%s", decision.run)
    log.info("event=launch slot=%s trial=%s", decision.run, decision.trial)
    return decision


def cmd_launch(args: argparse.Namespace) -> int:
    from agent.commands import _load_or_exit
    from agent.log import setup_logging

    loaded = _load_or_exit(args.config)
    if loaded is None:
        return EXIT_CONFIG
    cfg = loaded.config
    setup_logging(cfg.log_level, cfg.log_format)
    store = SlotStore(cfg.update.slots)
    if not args.supervise:
        d = boot(store, cfg.update.max_tries)
        os.execve(sys.executable, agent_command(args.config), agent_env(store, d))
    return supervise(store, args.config, cfg.update.max_tries)


def supervise(store: SlotStore, config: Path, max_tries: int) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    quick_failures = 0
    while not stopping:
        d = boot(store, max_tries)
        started = time.monotonic()
        child = subprocess.Popen(agent_command(config), env=agent_env(store, d))
        if stopping:
            # The stop came while this agent was being started (right after an update's exit
            # 75, say): the handler saw the old one. Without this the new agent would run on,
            # orphaned once whoever stopped us gives up and kills us.
            child.send_signal(signal.SIGTERM)
        code = child.wait()
        log.info("event=agent_exited code=%d slot=%s", code, d.run)
        if stopping:
            return 0
        if code == EXIT_CONFIG and not d.trial:
            # The committed code rejects the config: restarting cannot help (systemd:
            # RestartPreventExitStatus=2).
            return EXIT_CONFIG
        # A crash loop must not spin the CPU; an update restart comes back at once.
        quick_failures = quick_failures + 1 if (code != EXIT_RESTART and time.monotonic() - started < 10) else 0
        time.sleep(0 if code == EXIT_RESTART else min(30.0, 0.5 * 2 ** min(quick_failures, 6)))
    return 0
