"""The web page's password file on disk, and ``urbanedge web passwd``.

The file holds salted PBKDF2 hashes (format in ``agent.web.auth``). It must be readable by
the agent's user only: a file that group or others can read or write is refused (the hash
is slow, not secret-proof), both by ``urbanedge config check`` and by the agent at each
sign-in, which re-reads it so a password set with ``urbanedge web passwd`` works at once.
"""

from __future__ import annotations

import argparse
import getpass
import stat
import sys
from pathlib import Path

from agent.web.auth import (
    ITERATIONS,
    PasswordFileError,
    StoredHash,
    hash_password,
    parse_password_file,
    set_password_line,
)
from urbanedge.atomic import write_atomically

MIN_PASSWORD = 8


class PasswordFileUnusable(Exception):
    """The password file is missing, unreadable, malformed or too open; ``str()`` says which."""


def mode_problem(path: Path) -> str | None:
    """Why ``path`` is too open, or None. Missing files are not a mode problem."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_mode & 0o077:
        return (f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable by the agent's user "
                f"only (chmod 600 {path})")
    return None


def read_users(path: Path) -> dict[str, StoredHash]:
    """The users in ``path``. Raises PasswordFileUnusable."""
    problem = mode_problem(path)
    if problem is not None:
        raise PasswordFileUnusable(problem)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PasswordFileUnusable(f"{path} does not exist: set a password with `urbanedge web passwd`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PasswordFileUnusable(f"cannot read {path}: {exc}") from None
    try:
        return parse_password_file(text)
    except PasswordFileError as exc:
        raise PasswordFileUnusable(f"{path}: {exc}") from None


def set_password(path: Path, user: str, password: str, *, iterations: int = ITERATIONS) -> None:
    """Add or replace ``user`` in ``path`` atomically; the file is created with mode 0600."""
    try:
        old = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = ""
    text = set_password_line(old, user, hash_password(password, iterations=iterations))
    parse_password_file(text)  # never write a file the agent would refuse
    write_atomically(path, text.encode("utf-8"), mode=0o600)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    web = sub.add_parser("web", help="the gateway's local web page for technicians",
                         description="Manage the local web page (docs/operations.md, \"Local web page\").")
    web_sub = web.add_subparsers(dest="web_command", metavar="ACTION", required=True)
    pw = web_sub.add_parser("passwd", help="set a user's password for the local web page",
                            description="Set (or change) USER's password in the file named by [web] passwords. "
                                        "The password is read from the terminal (asked twice) or, when stdin is "
                                        "not a terminal, from the first line of stdin; never from the command line.")
    pw.add_argument("-c", "--config", required=True, type=Path, help="agent config (TOML)")
    pw.add_argument("user", help="user name (letters, digits, _.@-)")
    pw.set_defaults(func=cmd_passwd)


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Repeat it: ") != first:
            print("error: the passwords differ; nothing changed", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_passwd(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config
    from agent.web.auth import USER_RE

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = loaded.config.web.passwords
    if not USER_RE.match(args.user):
        print("error: user name: letters, digits and _.@- only, at most 64 characters", file=sys.stderr)
        return 2
    password = _read_password()
    if password is None:
        return 2
    if len(password) < MIN_PASSWORD:
        print(f"error: the password must have at least {MIN_PASSWORD} characters; nothing changed", file=sys.stderr)
        return 2
    try:
        set_password(path, args.user, password)
    except (OSError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: password set for {args.user}")
    return 0
