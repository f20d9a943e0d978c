"""Config validation: valid files pass, every broken one names file, field and problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_size

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"

MINIMAL = """
[identity]
gateway_id = "gw-1"
site = "site-1"
[[buses]]
name = "tcp"
type = "modbus-tcp"
host = "127.0.0.1"
[[buses.devices]]
id = "sl-1"
profile = "streetlight"
unit = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_example_config_is_valid() -> None:
    loaded = load_config(EXAMPLE)
    assert {d.id for _, d, _ in loaded.devices()} >= {"flood-canal-07", "sl-le-loi-001"}
    assert loaded.config.buffer.max_bytes == 300 * 1024 * 1024


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, MINIMAL + '\n[buffer]\npath = "data/o.db"\n'))
    assert loaded.config.buffer.path == tmp_path / "data" / "o.db"


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda t: t.replace("unit = 1", "unit = 300"), "buses[0].devices[0].unit", "less than or equal"),
        (lambda t: t.replace('profile = "streetlight"', 'profile = "lamp"'),
         "buses[0].devices[0].profile", "unknown profile 'lamp'"),
        (lambda t: t.replace('type = "modbus-tcp"', 'type = "canbus"'), "buses[0]", "canbus"),
        (lambda t: t.replace('gateway_id = "gw-1"\n', ""), "identity.gateway_id", "required"),
        (lambda t: "foo = 1\n" + t, "foo", "unknown field"),
        (lambda t: t.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nbaudrate = 9600'),
         "buses[0].baudrate", "unknown field"),
        (lambda t: t + '\n[buffer]\nmax_bytes = "lots"\n', "buffer.max_bytes", "not a size"),
        (lambda t: t + '[[buses.devices]]\nid = "sl-1"\nprofile = "streetlight"\nunit = 2\n',
         "buses[0].devices[1].id", "already used"),
        (lambda t: t + '[[buses.devices]]\nid = "sl-2"\nprofile = "streetlight"\nunit = 1\n',
         "buses[0].devices[1].unit", "used twice"),
        (lambda t: t.replace('unit = 1', 'unit = 1\nalarms = { nope = 3 }'),
         "buses[0].devices[0].alarms.nope", "no alarm rule"),
        (lambda t: t.replace('profile = "streetlight"', 'profile = "rain-gauge"'),
         "buses[0].devices[0].profile", "speaks line"),
        (lambda t: t + '\n[broker]\ntls = true\ncert_file = "c.pem"\n', "broker",
         "go together"),
        (lambda t: t + "[identity\n", "(syntax)", "invalid TOML"),
        (lambda t: t + '\n[update]\nenabled = true\nroot = "missing.json"\n', "update.root", "no such file"),
        (lambda t: t + '\n[update]\nenabled = true\nroot = "agent.toml"\n', "update.root", "not TUF root metadata"),
        (lambda t: t + '\n[update]\nrepository = "ftp://x/"\n', "update.repository", "should match"),
        (lambda t: t + '\n[update]\ncheck_interval = 1\n', "update.check_interval", "greater than or equal"),
    ],
)
def test_broken_config_names_field_and_problem(tmp_path: Path, mutate, field: str, problem: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, mutate(MINIMAL))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.field == field
    assert problem in err.problem
    assert str(path) in str(err) and field in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_parse_size() -> None:
    assert parse_size("300MB") == 300 * 1024**2
    assert parse_size("64 MiB") == 64 * 1024**2
    assert parse_size("512k") == 512 * 1024
    assert parse_size(1000) == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_size("3 bananas")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_config_check_ok_and_broken(tmp_path: Path) -> None:
    ok = run_cli("config", "check", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = write(tmp_path, MINIMAL.replace("unit = 1", 'unit = "one"'))
    res = run_cli("config", "check", str(bad))
    assert res.returncode == 2
    assert f"{bad}: buses[0].devices[0].unit:" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_run_with_broken_config_exits_2(tmp_path: Path) -> None:
    bad = write(tmp_path, "[identity]\n")
    res = run_cli("run", "--config", str(bad))
    assert res.returncode == 2
    assert "identity.gateway_id" in res.stderr


def test_schema_export_matches_models() -> None:
    """The committed JSON schema must be the one the models produce (regenerate if not)."""
    import json

    from agent.config import json_schema

    committed = json.loads((ROOT / "config" / "schemas" / "agent-config.schema.json").read_text())
    assert committed == json_schema(), "run: urbanedge config schema > config/schemas/agent-config.schema.json"
