"""`urbanedge service install` writes a unit that systemd's own checker accepts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops.service import ServiceError, render_unit, template_text

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
EXE = Path(sys.executable).parent / "urbanedge"


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "etc" / "agent.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'[identity]\ngateway_id = "gw-1"\nsite = "s"\n[buffer]\npath = "{tmp_path}/state/outbox.db"\n'
                   + extra)
    return cfg


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "urbanedge", "service", "install", *args],
                          capture_output=True, text=True, timeout=60)


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


@needs_systemd
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = cli("--prefix", str(tmp_path / "root"), "--config", str(cfg), "--user", "urbanedge")
    assert res.returncode == 0, res.stderr
    unit = tmp_path / "root" / "etc" / "systemd" / "system" / "urbanedge.service"
    text = unit.read_text()
    out = verify(unit)
    # verify also prints (without failing) lines it ignored: there must be none.
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out.stderr + out.stdout
    lines = set(text.splitlines())
    assert f"ExecStart={EXE} launch --config {cfg}" in lines
    for want in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=always",
                 "RestartPreventExitStatus=2", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "PrivateTmp=yes", "ProtectHome=yes", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
                 "CapabilityBoundingSet=", "SystemCallFilter=@system-service", "SupplementaryGroups=dialout",
                 "User=urbanedge", f"ReadWritePaths=-{tmp_path}/state -{cfg.parent}"):
        assert want in lines, want
    assert "@" not in "".join(ln for ln in text.splitlines() if ln.startswith("Exec"))  # no placeholder left


@needs_systemd
def test_verify_is_a_real_check(tmp_path: Path) -> None:
    # The same unit with an ExecStart that does not exist must fail: proves the check above bites.
    text = render_unit(template_text(), exec_path=tmp_path / "missing" / "urbanedge", config=tmp_path / "a.toml",
                       user="urbanedge", rw_paths=[tmp_path])
    unit = tmp_path / "urbanedge.service"
    unit.write_text(text)
    out = verify(unit)
    assert out.returncode != 0 and "missing/urbanedge" in out.stderr


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path,
                       '[update]\nreport_sbom = true\nstate_dir = "/srv/ue/update"\nslots = "/srv/ue/slots"\n')
    res = cli("--prefix", str(tmp_path / "root"), "--config", str(cfg), "--dry-run", "--watchdog", "60")
    assert res.returncode == 0, res.stderr
    assert "WatchdogSec=60" in res.stdout
    assert "-/srv/ue/update -/srv/ue/slots" in res.stdout
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--user", "bad user"], "--user"),
    (["--watchdog", "1"], "--watchdog"),
    (["--exec", "/nonexistent/urbanedge"], "--exec"),
])
def test_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = write_config(tmp_path)
    res = cli("--prefix", str(tmp_path / "root"), "--config", str(cfg), *args)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "root").exists()


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[metrics]\nlisten = "9464"\n')
    res = cli("--prefix", str(tmp_path / "root"), "--config", str(cfg))
    assert res.returncode == 2 and "metrics.listen" in res.stderr, res.stderr


def test_render_refuses_relative_paths() -> None:
    with pytest.raises(ServiceError, match="absolute"):
        render_unit("x", exec_path=Path("urbanedge"), config=Path("/a.toml"), user="u", rw_paths=[])
