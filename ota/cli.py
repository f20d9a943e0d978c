"""``urbanedge ota …``: publish releases, per-node manifests, rollouts and SBOMs.

Each part registers its own subcommands so the release tooling stays in small modules.
"""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    from ota import lab, node_cli, repo_cli, rollout_cli, sbom_cli

    ota = sub.add_parser("ota", help="software releases: TUF repository, node manifests, rollouts, SBOMs")
    osub = ota.add_subparsers(dest="ota_command", metavar="SUBCOMMAND", required=True)
    repo_cli.add_parsers(osub)
    node_cli.add_parsers(osub)
    rollout_cli.add_parsers(osub)
    sbom_cli.add_parsers(osub)
    lab.add_parser(osub)
