"""The ``[commands]`` section: defaults, resolved paths, and a missing root named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from tests.support import testpki
from tests.support.config_errors import assert_config_error

BASE = """
[identity]
gateway_id = "gw-1"
site = "site-1"
[buffer]
path = "data/outbox.db"
"""


def test_commands_are_off_by_default_and_state_sits_next_to_the_outbox(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(BASE)
    c = load_config(tmp_path / "agent.toml").config.commands
    assert not c.enabled and c.state == tmp_path / "data" / "commands.db"
    assert (c.replay_window, c.max_skew, c.ioc_id) == (3600.0, 30.0, "ioc-command")


def test_enabled_with_a_root_and_groups(tmp_path: Path) -> None:
    root = testpki.shared_pki().root_cert
    (tmp_path / "agent.toml").write_text(BASE + f'[commands]\nenabled = true\nroot = "{root}"\n'
                                         'groups = ["district-1"]\nstate = "cmds.db"\n')
    c = load_config(tmp_path / "agent.toml").config.commands
    assert c.enabled and c.root == root and c.groups == ["district-1"] and c.state == tmp_path / "cmds.db"


@pytest.mark.parametrize(("section", "field", "problem"), [
    ('enabled = true\nroot = "nope.pem"', "commands.root", "no such file"),
    ("replay_window = 5", "commands.replay_window", "greater than or equal to 60"),
    ('groups = ["bad group"]', "commands.groups[0]", "match pattern"),
])
def test_bad_commands_section_names_field_and_problem(tmp_path: Path, section: str, field: str,
                                                      problem: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + "[commands]\n" + section + "\n")
    assert_config_error(path, field, problem)
