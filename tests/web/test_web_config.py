"""``[web]`` in the config (``urbanedge config check``) and ``urbanedge web passwd``."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.web.auth import StoredHash, verify_password
from agent.web.passwords import PasswordFileUnusable, read_users, set_password
from urbanedge.cli import main

BASE = """
[identity]
gateway_id = "gw-1"
site = "site-1"
"""


def write(tmp_path: Path, web: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(BASE + "[web]\n" + web)
    return p


def test_off_by_default_and_paths_resolve(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(BASE)
    assert load_config(p).config.web.listen is None
    cfg = load_config(write(tmp_path, 'listen = "192.168.7.1:8080"\npasswords = "pw"\n')).config.web
    assert cfg.passwords == tmp_path / "pw" and cfg.default_lang == "vi"


@pytest.mark.parametrize(("web", "field", "problem"), [
    ('listen = "0.0.0.0:8080"\n', "web.listen", "every interface"),
    ('listen = "[::]:8080"\n', "web.listen", "every interface"),
    ('listen = "gateway.local:8080"\n', "web.listen", "not an IP address"),
    ('listen = "10.0.0.1"\n', "web.listen", "not host:port"),
    ('listen = "10.0.0.1:8080"\ntls_cert = "c.pem"\n', "web", "tls_cert and tls_key go together"),
    ('listen = "10.0.0.1:8080"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n', "web.tls_cert", "no such file"),
    ('listen = "10.0.0.1:8080"\nhistory = 1\n', "web.history", "greater than or equal to 2"),
])
def test_bad_web_config_names_the_field(tmp_path: Path, web: str, field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, web))
    assert err.value.field == field and problem in err.value.problem, str(err.value)


def test_wildcard_only_when_allowed(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'listen = "0.0.0.0:8080"\nallow_wildcard = true\n')).config.web.allow_wildcard


def test_config_check_exits_2_for_a_wildcard_and_an_open_password_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, 'listen = "0.0.0.0:8080"\n')
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: web.listen:" in err and "service interface" in err
    (tmp_path / "pw").write_text("")
    (tmp_path / "pw").chmod(0o640)
    cfg = write(tmp_path, 'listen = "127.0.0.1:8080"\npasswords = "pw"\n')
    assert main(["config", "check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: web.passwords:" in err and "mode 0640" in err and "chmod 600" in err
    (tmp_path / "pw").chmod(0o600)
    assert main(["config", "check", str(cfg)]) == 0


def test_passwd_reads_stdin_and_writes_a_0600_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, 'listen = "127.0.0.1:8080"\npasswords = "etc/web-passwords"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("first password\n"))
    assert main(["web", "passwd", "--config", str(cfg), "tech"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("lead password\n"))
    assert main(["web", "passwd", "-c", str(cfg), "lead"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("second password\n"))
    assert main(["web", "passwd", "-c", str(cfg), "tech"]) == 0
    pw = tmp_path / "etc" / "web-passwords"
    assert pw.stat().st_mode & 0o777 == 0o600
    users = read_users(pw)
    assert set(users) == {"tech", "lead"}
    assert verify_password("second password", users["tech"]) and not verify_password("first password", users["tech"])
    assert "password" not in pw.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["web", "passwd", "-c", str(cfg), "tech"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("long enough pw\n"))
    assert main(["web", "passwd", "-c", str(cfg), "bad:user"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert verify_password("second password", read_users(pw)["tech"])  # unchanged by the refusals


def test_read_users_refuses_missing_open_and_malformed_files(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    with pytest.raises(PasswordFileUnusable, match="does not exist"):
        read_users(pw)
    set_password(pw, "tech", "a password", iterations=100_000)
    assert isinstance(read_users(pw)["tech"], StoredHash)
    pw.chmod(0o604)
    with pytest.raises(PasswordFileUnusable, match="mode 0604"):
        read_users(pw)
    pw.chmod(0o600)
    pw.write_text("tech:nonsense\n")
    with pytest.raises(PasswordFileUnusable, match="line 1"):
        read_users(pw)
