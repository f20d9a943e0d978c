"""`urbanedge run` loads only what a gateway runs: the other commands' code (IOC, OTA
repository, PKI and provisioning tooling, TUF, the web page, the metrics server) would stay
resident for the agent's whole life (bench/bench_rss.py). Each check in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NOT_FOR_RUN = ("ioc", "ota", "provisioning", "tuf", "securesystemslib", "agent.web", "agent.update.updater",
               "agent.ops.metrics_server", "http.server", "drivers.sim", "agent.demo", "pki.cli", "pki.ca")


def loaded_after(argv: list[str]) -> set[str]:
    code = (f"import json, sys\nfrom urbanedge import cli\ncli.build_parser({argv!r})\nimport agent.app\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout))


def test_run_imports_none_of_the_other_commands_code() -> None:
    mods = loaded_after(["run", "-c", "agent.toml"])
    assert "agent.commands" in mods
    unwanted = sorted(m for m in mods if m.startswith(NOT_FOR_RUN))
    assert unwanted == []


def test_without_a_known_command_every_command_is_there() -> None:
    # --help, a typo and an @file first: argparse must know them all.
    assert {"ioc", "ota", "provisioning.cli", "pki.cli"} <= loaded_after(["--help"])
    assert "ioc.cli" in loaded_after(["@args.txt"])


def urbanedge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_help_lists_every_command_and_a_typo_is_a_usage_error() -> None:
    helped = urbanedge("--help")
    assert helped.returncode == 0
    for name in ("run", "config", "status", "launch", "demo", "sim", "pki", "ioc", "provision", "ota", "service",
                 "web"):
        assert name in helped.stdout
    typo = urbanedge("rnu", "-c", "x.toml")
    assert typo.returncode == 2 and "invalid choice: 'rnu'" in typo.stderr and "'ioc'" in typo.stderr


@pytest.mark.parametrize("argv", [["ioc", "verify", "--help"], ["pki", "--help"], ["config", "schema"]])
def test_each_command_still_parses(argv: list[str]) -> None:
    assert urbanedge(*argv).returncode == 0


def test_an_argument_file_may_hold_the_command(tmp_path: Path) -> None:
    (tmp_path / "args.txt").write_text("config\nschema\n")
    res = urbanedge("@args.txt", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["title"]
