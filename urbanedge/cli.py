"""``urbanedge`` — one command, a subcommand per job.

Exit codes: 0 success, 1 runtime failure, 2 bad input (usage, config), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import urbanedge

# Which module adds each top-level command, in the order `--help` lists them. Only the
# module of the command being run is imported: a gateway's `urbanedge run` then does not load
# the IOC, OTA repository, PKI or provisioning tooling, which it never uses and which would
# stay resident for the agent's whole life (bench/bench_rss.py).
_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("agent.commands", ("run", "config", "status")),
    ("agent.update.launcher", ("launch",)),
    ("agent.demo", ("demo",)),
    ("drivers.sim.cli", ("sim",)),
    ("pki.cli", ("pki",)),
    ("ioc.cli", ("ioc",)),
    ("provisioning.cli", ("provision",)),
    ("ota.cli", ("ota",)),
    ("agent.ops.service", ("service",)),
    ("agent.web.passwords", ("web",)),
)


def _command_of(argv: Sequence[str]) -> str | None:
    """The top-level command named in ``argv``; None for none (``--help``, ``--version``) or
    an argument file first (``@file`` may hold the command itself)."""
    for arg in argv:
        if arg.startswith("@"):
            return None
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv``, only the subcommand it names (every one if it names none
    known, so ``--help`` and a mistyped command list them all)."""
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
    wanted = _command_of(argv) if argv is not None else None
    modules = [m for m, names in _MODULES if wanted in names] or [m for m, _ in _MODULES]
    for name in modules:
        module = importlib.import_module(name)
        adder = getattr(module, "add_parsers", None) or module.add_parser
        adder(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
