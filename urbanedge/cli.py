"""``urbanedge`` — one command, a subcommand per job.

Exit codes: 0 success, 1 runtime failure, 2 bad input (usage, config), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import urbanedge


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="urbanedge",
        # `urbanedge ioc command @ioc-command.args dim 40`: options kept in a file, one per line
        # (the demo writes one; operators keep their broker/key/cert that way too).
        fromfile_prefix_chars="@",
        description="Edge IoT gateway agent (Modbus/serial polling, durable outbox, sealed MQTT uplink), "
                    "provincial PKI and IOC receiver.",
    )
    parser.add_argument("--version", action="version", version=f"urbanedge {urbanedge.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from agent import commands, demo
    from agent.ops import service
    from agent.update import launcher
    from agent.web import passwords as web_passwords
    from drivers.sim import cli as sim_cli
    from ioc import cli as ioc_cli
    from ota import cli as ota_cli
    from pki import cli as pki_cli
    from provisioning import cli as provision_cli

    commands.add_parsers(sub)
    launcher.add_parser(sub)
    demo.add_parser(sub)
    sim_cli.add_parser(sub)
    pki_cli.add_parser(sub)
    ioc_cli.add_parser(sub)
    provision_cli.add_parser(sub)
    ota_cli.add_parser(sub)
    service.add_parser(sub)
    web_passwords.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
