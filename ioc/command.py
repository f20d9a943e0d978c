"""``urbanedge ioc command``: sign a command with the IOC command key and publish it.

    urbanedge ioc command --broker HOST:PORT --key IOC_COMMAND_KEY --cert IOC_COMMAND_CHAIN \\
        --gateway GW --site SITE [--device D ...] dim 40 | on | off | write POINT VALUE
    urbanedge ioc command ... --encrypt-to GATEWAY_CERT config AGENT_TOML [DEADLINE_S]

The command goes to ``<prefix>/<site>/<gateway>/command`` (QoS 1, not retained: a retained
command would be replayed to every reconnect, and the gateway would rightly refuse it); a
``--group G`` command without ``--gateway`` goes once to ``<prefix>/group/G/command``, which
every gateway configured in G subscribes to (each still checks the signed target).
``--out FILE`` also saves the signed bytes; ``--publish FILE`` sends saved bytes unchanged
(a replay, for tests and drills). The gateway's answer is a sealed ``command_result``
event that only the IOC receiver can open.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ioc.command_wait import CONFIG_OUTCOMES, STATES, command_in, wait_result
from ioc.store_tail import StoreTail
from pki.command import Command, new_command, sign_command

PUBLISH_TIMEOUT = 15.0


class CommandUsageError(Exception):
    """Bad arguments or files (exit code 2)."""


def add_parser(isub: Any) -> None:
    p = isub.add_parser("command", help="sign and send a command to a gateway (dim, on, off, write)",
                        description="Sign a command with the IOC command key and publish it to a gateway.")
    p.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    p.add_argument("--key", type=Path, help="the IOC command private key")
    p.add_argument("--cert", type=Path, help="the IOC command certificate chain (leaf first, PEM)")
    p.add_argument("--key-passphrase-file", type=Path, help="file holding the key's passphrase")
    p.add_argument("--gateway", help="gateway id the command is for (not needed with --group)")
    p.add_argument("--site", help="site of the gateway (topic level; with --gateway)")
    p.add_argument("--prefix", default="urbanedge/v1", help="topic prefix of the gateways")
    p.add_argument("--device", action="append", default=[], help="field device of the gateway (repeatable; "
                   "default: every device that has the point)")
    p.add_argument("--group", help="send to every gateway of a group, once, on <prefix>/group/<GROUP>/command "
                   "(with --gateway/--site: only to that member, on its own topic)")
    p.add_argument("--ttl", type=float, default=60.0, help="seconds the command stays valid (default 60)")
    p.add_argument("--out", type=Path, help="also save the signed bytes to this file")
    p.add_argument("--encrypt-to", type=Path, metavar="GATEWAY_CERT",
                   help="encrypt the args to the gateway's seal certificate (required for config)")
    p.add_argument("--publish", type=Path, help="send the saved signed bytes of FILE as they are")
    p.add_argument("--store", help="the IOC reading store (sqlite:PATH or postgresql://...) to watch for "
                   "the gateway's result")
    p.add_argument("--wait-for", choices=(*STATES, *CONFIG_OUTCOMES), metavar="STATE",
                   help="with --store: wait for the gateway's final result; exit 0 if it is STATE, else 1 "
                        "(config: applied / rolled-back wait for the end of the trial)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait-for (default 60)")
    p.add_argument("action", nargs="?", help="one of: " + ", ".join(ACTIONS))
    p.add_argument("params", nargs="*", help="what the action takes: " + usage())
    p.set_defaults(func=cmd_command)


def parse_value(text: str) -> bool | int | float:
    low = text.lower()
    if low in ("true", "on"):
        return True
    if low in ("false", "off"):
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CommandUsageError(f"value {text!r} is not a number or true/false") from None


def _dim_args(params: list[str]) -> dict[str, Any]:
    # Range checks are the gateway's (it refuses and reports); here only the type.
    level = parse_value(params[0])
    if isinstance(level, bool):
        raise CommandUsageError("dim LEVEL must be a number")
    return {"level": level}


def _valve_args(params: list[str]) -> dict[str, Any]:
    level = parse_value(params[0])
    if isinstance(level, bool):
        raise CommandUsageError("valve PERCENT must be a number (0 closes, 100 fully open)")
    return {"level": level}


def _threshold_args(params: list[str]) -> dict[str, Any]:
    # "default" drops the override: the gateway goes back to its configured threshold.
    if params[1].lower() == "default":
        return {"alarm": params[0], "value": None}
    value = parse_value(params[1])
    if isinstance(value, bool):
        raise CommandUsageError("threshold VALUE must be a number or 'default'")
    return {"alarm": params[0], "value": value}


def _no_args(_params: list[str]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Action:
    """One ``ACTION PARAMS...`` of the command line and how it becomes the signed ``args``."""

    usage: str  # the PARAMS part of the usage line
    nargs: int  # exactly this many PARAMS (at least, with ``more``)
    args: Callable[[list[str]], dict[str, Any]] = _no_args
    more: bool = False  # any number of PARAMS from ``nargs`` on (schedule steps)
    sealed: bool = False  # args carry secrets: only sent encrypted (--encrypt-to)


def _config_args(params: list[str]) -> dict[str, Any]:
    from ioc.config_command import config_args

    try:
        return config_args(params)
    except ValueError as exc:
        raise CommandUsageError(str(exc)) from None


# Every action the IOC can sign. The gateway decides what it runs (and refuses the rest).
ACTIONS: dict[str, Action] = {
    "on": Action("", 0),
    "off": Action("", 0),
    "dim": Action("LEVEL", 1, _dim_args),
    "write": Action("POINT VALUE", 2, lambda p: {"point": p[0], "value": parse_value(p[1])}),
    "update-check": Action("", 0),
    "valve": Action("PERCENT", 1, _valve_args),
    "read-now": Action("", 0),
    "threshold": Action("ALARM VALUE|default", 2, _threshold_args),
    "rebirth": Action("", 0),
    "restart": Action("", 0),
    "reboot": Action("", 0),
    # Local lighting control (docs/lighting.md): steps are checked by the gateway (bad_args).
    "schedule": Action("HH:MM=LEVEL|off ...", 1, lambda p: {"steps": p}, more=True),
    "lighting": Action("auto|manual", 1, lambda p: {"mode": p[0]}),
    # The gateway's whole new agent.toml, applied on trial (docs/remote-config.md).
    "config": Action("FILE [DEADLINE_S]", 1, _config_args, more=True, sealed=True),
}


def usage() -> str:
    return " | ".join(f"{name} {a.usage}".strip() for name, a in ACTIONS.items())


def build(args: argparse.Namespace, now: float) -> Command:
    action, params = args.action, list(args.params)
    spec = ACTIONS.get(action)
    if spec is None:
        raise CommandUsageError(f"action {action!r}: one of {', '.join(ACTIONS)}")
    if len(params) != spec.nargs and not (spec.more and len(params) > spec.nargs):
        raise CommandUsageError(f"{action} takes {spec.nargs} argument(s) ({spec.usage or 'none'}), "
                                f"got {len(params)}")
    cmd_args = spec.args(params)
    if spec.sealed and args.encrypt_to is None:
        raise CommandUsageError(f"{action} carries secrets: --encrypt-to GATEWAY_CERT is required")
    if args.encrypt_to is not None:
        from ioc.config_command import encrypt_args

        try:
            cmd_args = encrypt_args(cmd_args, args.encrypt_to, args.gateway)
        except ValueError as exc:
            raise CommandUsageError(str(exc)) from None
    if args.group is None and args.gateway is None:
        raise CommandUsageError("--gateway (with --site) or --group says who the command is for")
    if args.ttl <= 0:
        raise CommandUsageError(f"--ttl must be positive, got {args.ttl}")
    return new_command(action, cmd_args, device=None if args.group else args.gateway, points=args.device,
                       group=args.group, now=now, ttl=args.ttl)


def sign(args: argparse.Namespace, cmd: Command) -> bytes:
    from pki.errors import PkiError
    from pki.keys import load_certs, load_private_key

    if args.key is None or args.cert is None:
        raise CommandUsageError("--key and --cert are needed to sign a command")
    try:
        passphrase = args.key_passphrase_file.read_bytes().strip() if args.key_passphrase_file else None
        key = load_private_key(args.key, passphrase)
        chain = load_certs(args.cert)
    except (OSError, ValueError, PkiError) as exc:
        raise CommandUsageError(f"cannot load the command key/certificate: {exc}") from None
    try:
        return sign_command(cmd, key, chain)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CommandUsageError(f"{args.key}: cannot sign with this key: {exc}") from None


def target_topic(args: argparse.Namespace) -> str:
    """Where the command is published: the gateway's own command topic, or the group's (which
    every member subscribes to) when only ``--group`` is given."""
    from agent.uplink.topics import TopicError, Topics, group_command_topic

    try:
        if args.gateway is None and args.site is None and args.group is not None:
            return group_command_topic(args.prefix, args.group)
        if args.gateway is None or args.site is None:
            raise CommandUsageError("--gateway and --site name the gateway (or give only --group)")
        return Topics(args.prefix, args.site, args.gateway).command
    except TopicError as exc:
        raise CommandUsageError(str(exc)) from None


def publish(host: str, port: int, topic: str, data: bytes, *, timeout: float = PUBLISH_TIMEOUT) -> None:
    """Publish once with QoS 1 and wait for the broker's PUBACK; raise OSError if that fails."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ioc-command-{time.time_ns()}")
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise OSError(f"no CONNACK from {host}:{port} within {timeout:g}s")
        info = client.publish(topic, data, qos=1, retain=False)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise OSError(f"broker did not acknowledge the command within {timeout:g}s")
    finally:
        client.disconnect()
        client.loop_stop()


def cmd_command(args: argparse.Namespace) -> int:
    if args.wait_for is not None and args.store is None:
        print("error: --wait-for needs --store (where the IOC receiver stores what gateways say)", file=sys.stderr)
        return 2
    host, _, port = args.broker.rpartition(":")
    try:
        if not host or not port.isdigit():
            raise CommandUsageError(f"--broker {args.broker!r}: expected HOST:PORT")
        if args.publish is not None:
            if args.action is not None:
                raise CommandUsageError("--publish sends saved bytes: give no action")
            try:
                data = args.publish.read_bytes()
            except OSError as exc:
                raise CommandUsageError(f"--publish {args.publish}: {exc}") from None
            label = f"saved {args.publish}"
        else:
            if args.action is None:
                raise CommandUsageError(f"an action is needed: {usage()}")
            cmd = build(args, time.time())
            data = sign(args, cmd)
            label = f"{cmd.cmd} id={cmd.id_hex}"
            if args.out is not None:
                args.out.write_bytes(data)
    except CommandUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        topic = target_topic(args)
    except CommandUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    waited, tail = "", None
    if args.wait_for is not None:
        from ioc.store import StoreError

        try:
            waited = command_in(data).id_hex
            tail = StoreTail(args.store, from_now=True)  # results stored from now on
        except (ValueError, StoreError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        publish(host, int(port), topic, data)
    except OSError as exc:
        print(f"error: publishing to {args.broker}: {exc}", file=sys.stderr)
        return 1
    print(f"sent {label} to {topic} ({len(data)} bytes)", flush=True)
    if args.wait_for is None:
        return 0
    assert tail is not None
    state = wait_result(tail, waited, config_outcome=args.wait_for in CONFIG_OUTCOMES, timeout=args.timeout,
                        say=lambda t: print(t, flush=True))
    if state is None:
        print(f"error: no final result within {args.timeout:g} s (is the IOC receiver running and storing "
              f"to {args.store}?)", file=sys.stderr)
        return 1
    return 0 if state == args.wait_for else 1
