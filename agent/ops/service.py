"""``urbanedge service install``: write the hardened systemd unit for this gateway.

The unit comes from the template ``config/systemd/urbanedge.service`` (installed as
``urbanedge_config/systemd/``). What varies per gateway is filled in: the ``urbanedge``
executable (the venv's, so ``ExecStart`` names a file that exists), the config file, the
service user, the watchdog period, and the writable paths, read from the config itself
(outbox directory, update state and slots, the config directory).

``--prefix`` is a staging root (like DESTDIR): the unit goes to
``PREFIX/etc/systemd/system/urbanedge.service`` but the paths inside it are the real ones.
"""

from __future__ import annotations

import argparse
import pwd
import shutil
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from agent.config import ConfigError, LoadedConfig, load_config

UNIT_NAME = "urbanedge.service"
DEFAULT_CONFIG = Path("/etc/urbanedge/agent.toml")
DEFAULT_WATCHDOG = 30


class ServiceError(Exception):
    """Bad input for the unit (exit code 2)."""


def template_text() -> str:
    return (resources.files("urbanedge_config") / "systemd" / UNIT_NAME).read_text(encoding="utf-8")


def _quote(path: Path | str) -> str:
    s = str(path)
    # systemd's command-line and path-list syntax split on whitespace; quote where needed.
    if any(c.isspace() or c in "\"'\\" for c in s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return s


def writable_paths(loaded: LoadedConfig) -> list[Path]:
    """Directories the agent writes, from its config (deduplicated, in a stable order)."""
    cfg = loaded.config
    paths = [cfg.buffer.path.parent, loaded.path.resolve().parent]
    if cfg.update.enabled or cfg.update.sbom:
        paths += [cfg.update.state_dir, cfg.update.slots]
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def render_unit(template: str, *, exec_path: Path, config: Path, user: str, rw_paths: Iterable[Path],
                watchdog_sec: int = DEFAULT_WATCHDOG) -> str:
    """Fill the template. Pure; raises :class:`ServiceError` on unusable values."""
    if not exec_path.is_absolute() or not config.is_absolute():
        raise ServiceError("the executable and the config must be absolute paths")
    if not user or not user.replace("-", "").replace("_", "").isalnum() or user[0].isdigit():
        raise ServiceError(f"--user: not a valid user name: {user!r}")
    if not 5 <= watchdog_sec <= 3600:
        raise ServiceError(f"--watchdog: {watchdog_sec} s is outside 5..3600")
    # "-": a directory that does not exist (yet) does not stop the unit from starting.
    rw = " ".join("-" + _quote(p) for p in rw_paths)
    values = {"@EXEC@": _quote(exec_path), "@CONFIG@": _quote(config), "@USER@": user,
              "@WATCHDOG@": str(watchdog_sec), "@RW_PATHS@": rw or "-/var/lib/urbanedge"}
    text = template
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def default_executable() -> Path:
    """The ``urbanedge`` script of the environment this command runs from."""
    here = Path(sys.executable).parent / "urbanedge"
    if here.is_file():
        return here
    found = shutil.which("urbanedge")
    if found is None:
        raise ServiceError("cannot find the urbanedge executable; give --exec")
    return Path(found)


def install(prefix: Path, config: Path, user: str, *, exec_path: Path | None = None,
            watchdog_sec: int = DEFAULT_WATCHDOG, dry_run: bool = False) -> tuple[Path, str]:
    """Render the unit for ``config`` and write it under ``prefix``; returns (path, text)."""
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        raise ServiceError(str(exc)) from exc
    exe = exec_path if exec_path is not None else default_executable()
    if not exe.is_file():
        raise ServiceError(f"--exec: no such file: {exe}")
    text = render_unit(template_text(), exec_path=exe.absolute(), config=config.resolve(), user=user,
                       rw_paths=writable_paths(loaded), watchdog_sec=watchdog_sec)
    dest = prefix / "etc" / "systemd" / "system" / UNIT_NAME
    if not dry_run:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(dest)
    return dest, text


def cmd_install(args: argparse.Namespace) -> int:
    try:
        dest, text = install(args.prefix, args.config, args.user, exec_path=args.exec_path,
                             watchdog_sec=args.watchdog, dry_run=args.dry_run)
    except ServiceError as exc:
        print(f"urbanedge service install: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"urbanedge service install: cannot write the unit: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    print(f"wrote {dest}")
    try:
        pwd.getpwnam(args.user)
    except KeyError:
        print(f"note: user {args.user!r} does not exist; create it with:\n"
              f"  useradd --system --home-dir /var/lib/urbanedge --shell /usr/sbin/nologin {args.user}")
    print("then: systemctl daemon-reload && systemctl enable --now urbanedge")
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("service", help="system service integration (systemd unit)",
                       description="Install the hardened systemd unit (Type=notify, watchdog) for this gateway.")
    ssub = p.add_subparsers(dest="service_command", metavar="SUBCOMMAND", required=True)
    ins = ssub.add_parser("install", help="write urbanedge.service (PREFIX/etc/systemd/system)")
    ins.add_argument("--prefix", type=Path, default=Path("/"), help="staging root (default /)")
    ins.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                     help=f"agent config the service runs with (default {DEFAULT_CONFIG})")
    ins.add_argument("--user", default="urbanedge", help="service user (default urbanedge)")
    ins.add_argument("--exec", dest="exec_path", type=Path, default=None,
                     help="the urbanedge executable (default: this environment's)")
    ins.add_argument("--watchdog", type=int, default=DEFAULT_WATCHDOG,
                     help=f"WatchdogSec in seconds (default {DEFAULT_WATCHDOG})")
    ins.add_argument("--dry-run", action="store_true", help="print the unit instead of writing it")
    ins.set_defaults(func=cmd_install)
