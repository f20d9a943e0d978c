"""Subcommands of the gateway runtime: ``run``, ``config check``, ``config schema``, ``status``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import ConfigError, LoadedConfig, json_schema, load_config


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the gateway agent",
                         description="Poll the configured buses, buffer to the outbox, forward over MQTT.")
    run.add_argument("-c", "--config", required=True, type=Path, help="agent config (TOML)")
    run.set_defaults(func=cmd_run)

    cfg = sub.add_parser("config", help="check a config file or print its schema")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file (exit 0 valid, 2 invalid)")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_config_check)
    schema = cfg_sub.add_parser("schema", help="print the JSON schema of the agent config")
    schema.set_defaults(func=cmd_config_schema)

    st = sub.add_parser("status", help="outbox depth, devices and uplink state of an agent")
    st.add_argument("-c", "--config", required=True, type=Path, help="agent config (TOML)")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.add_argument("--watch", type=float, metavar="SECONDS",
                    help="a live view for the technician on site: refresh every SECONDS until Ctrl-C")
    st.set_defaults(func=cmd_status)


def _load_or_exit(path: Path) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_config_check(args: argparse.Namespace) -> int:
    loaded = _load_or_exit(args.file)
    if loaded is None:
        return 2
    n_dev = len(loaded.devices())
    print(f"{args.file}: ok ({len(loaded.config.buses)} buses, {n_dev} devices)")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.reconfig.remote import prepare_start

    # A remote configuration (agent/reconfig) switches or restores the live file, then the agent
    # starts again on it here, in this process: the same under `launch`, systemd or a bare `run`.
    while True:
        try:
            prepare_start(args.config)
        except OSError as exc:
            print(f"error: {args.config}: finishing a configuration trial: {exc}", file=sys.stderr)
        code = _run_once(args.config)
        if code is not None:
            return code


def _run_once(config: Path) -> int | None:
    """Run the agent on ``config``; None: start again (the config changed, or the one on trial
    could not start and was rolled back)."""
    from agent.reconfig.remote import fail_start

    loaded = _load_or_exit(config)
    if loaded is None:
        return None if fail_start(config, "the configuration does not load") else 2
    from agent.app import Agent
    from agent.log import setup_logging
    from agent.seal.credentials import SealSetupError
    from agent.uplink.tls import TlsConfigError

    setup_logging(loaded.config.log_level, loaded.config.log_format)
    try:
        agent = Agent(loaded)
    except TlsConfigError as exc:
        print(f"error: {config}: broker: {exc}", file=sys.stderr)
        return None if fail_start(config, f"broker: {exc}") else 2
    except SealSetupError as exc:
        print(f"error: {config}: {exc}", file=sys.stderr)
        return None if fail_start(config, str(exc)) else 2
    try:
        code = asyncio.run(_run_until_signal(agent))
    except Exception as exc:
        if fail_start(config, f"the agent crashed: {exc!r}"[:300]):
            return None
        raise
    return None if agent.remote_config.reload else code


async def _run_until_signal(agent: Any) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    from agent import aio

    for sig in (signal.SIGTERM, signal.SIGINT):
        # Firmly: Python 3.11 can swallow a cancellation on the way (agent/aio.py), which left
        # an agent running after SIGTERM.
        loop.add_signal_handler(sig, aio.cancel_firmly, task)
    try:
        await agent.run()
    except asyncio.CancelledError:
        return 0
    if getattr(agent, "restart_requested", False):
        from agent.update.launcher import EXIT_RESTART

        return EXIT_RESTART
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    loaded = _load_or_exit(args.config)
    if loaded is None:
        return 2
    from agent.buffer.store import Outbox

    if args.watch is not None and args.watch <= 0:
        print("error: --watch: seconds must be > 0", file=sys.stderr)
        return 2
    path = loaded.config.buffer.path
    while True:
        outbox = Outbox.open_readonly(path)
        if outbox is None:
            print(f"error: no outbox at {path}: has the agent run with this config?", file=sys.stderr)
            return 1
        try:
            report = status_report(outbox)
        finally:
            outbox.close()
        report["update"] = update_report(loaded.config.update.slots)
        if args.json:
            print(json.dumps(report, indent=2, default=str), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")  # clear the terminal: one screen, refreshed
            print(format_status(report), flush=True)
        if args.watch is None:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def update_report(slots: Path) -> dict[str, Any]:
    """What runs and what is on trial (agent/update), from the launcher's state file."""
    from agent.update.bootstate import BadBootState
    from agent.update.slotstore import SlotStore

    try:
        st = SlotStore(slots).load()
    except (BadBootState, OSError) as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"committed": st.committed, "release": st.version or "factory", "counter": st.counter}
    if st.trial is not None:
        out["trial"] = {"slot": st.trial.slot, "release": st.trial.version, "tries": st.trial.tries}
    if st.failed:
        out["failed_releases"] = list(st.failed)
    return out


def status_report(outbox: Any) -> dict[str, Any]:
    st = outbox.stats()
    health = outbox.health()
    now = time.time()
    agent = json.loads(health["agent"]) if "agent" in health else {}
    uplink = json.loads(health["uplink"]) if "uplink" in health else {}
    return {
        "outbox": {
            "records": st.records,
            "depth": {p.name.lower(): n for p, n in st.depth.items()},
            "used_bytes": st.used_bytes, "file_bytes": st.file_bytes, "max_bytes": st.max_bytes,
            "oldest_unsent_age_s": None if st.oldest_ts is None else round(now - st.oldest_ts, 1),
            "evicted_total": st.evicted_total, "dropped_total": st.dropped_total,
            "last_seq": st.last_seq,
        },
        "uplink": uplink,
        "agent": agent,
        "health_age_s": round(now - agent["ts"], 1) if "ts" in agent else None,
    }


def format_status(r: dict[str, Any]) -> str:
    o = r["outbox"]
    lines = [
        f"outbox: {o['records']} records ({', '.join(f'{k}={v}' for k, v in o['depth'].items())}), "
        f"{o['used_bytes'] / 1e6:.1f} of {o['max_bytes'] / 1e6:.0f} MB, "
        f"oldest unsent {o['oldest_unsent_age_s'] if o['oldest_unsent_age_s'] is not None else '-'} s, "
        f"evicted {o['evicted_total']}, dropped {o['dropped_total']}",
    ]
    up = r["uplink"]
    if up:
        lines.append("uplink: " + ", ".join(f"{k}={v}" for k, v in up.items()))
    else:
        lines.append("uplink: unknown (no report yet)")
    upd = r.get("update") or {}
    if "error" in upd:
        lines.append(f"update: state unreadable ({upd['error']})")
    elif upd:
        line = f"software: {upd['release']} (slot {upd['committed']}, release counter {upd['counter']})"
        if "trial" in upd:
            t = upd["trial"]
            line += f"; on trial: {t['release']} in slot {t['slot']} (boot {t['tries']})"
        lines.append(line)
    age = r["health_age_s"]
    if age is not None:
        lines.append(f"agent report: {age} s old")
    last = r["agent"].get("last_command")
    if last:
        when = time.strftime("%H:%M:%S", time.localtime(last["ts"])) if last.get("ts") else "?"
        lines.append(f"last command: {last['cmd'] or '?'} {last['state']}"
                     + (f" ({last['reason']})" if last.get("reason") else "") + f" at {when} id={last['id'] or '-'}")
    light = r["agent"].get("lighting")
    if light:
        lines.append(f"lighting: {light['mode']}, schedule {' '.join(light['schedule'])}, "
                     f"{light['changes']} changes, {light['failures']} failed writes")
    for bus_name, bus in r["agent"].get("buses", {}).items():
        lines.append(f"bus {bus_name} ({bus['type']}): utilisation {bus['utilisation']:.0%}"
                     + (" OVERLOADED" if bus.get("overloaded") else ""))
        for dev_id, d in bus["devices"].items():
            lp = d["last_poll"]
            ago = f"{time.time() - lp:.0f}s ago" if lp else "never"
            state = {True: "online", False: "OFFLINE", None: "unknown"}[d["online"]]
            lines.append(f"  {dev_id:<20} {d['kind']:<13} {state:<8} last poll {ago:<10} "
                         f"quality {d['last_quality'] or '-':<6} errors {d['errors'] or 0}")
    return "\n".join(lines)
