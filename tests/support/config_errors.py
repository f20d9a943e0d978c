"""The one check of a bad agent config: load_config names the field and the problem, and
`urbanedge config check` exits 2 naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config


def assert_config_error(path: Path, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field and problem in info.value.problem, str(info.value)
    res = subprocess.run([sys.executable, "-m", "urbanedge", "config", "check", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and field in res.stderr
