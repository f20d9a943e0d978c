"""A real, throw-away PostgreSQL server on a free loopback port.

``initdb`` into a fresh directory, ``postgres`` started directly (so this process owns it
and stops it), trust authentication on 127.0.0.1 only, fsync off (nothing here has to
survive a power cut). PostgreSQL refuses to run as root, so when the tests run as root the
server runs as the ``postgres`` system user, in a directory handed over to it.

If no PostgreSQL server binaries can be found the tests fail with :class:`PostgresNotFound`
saying how to get them: ``scripts/test.sh`` installs them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.support.ports import free_port
from tests.support.process import stop_process

SUPERUSER = "ue"
_SYSTEM_USER = "postgres"


class PostgresNotFound(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: PATH first, then Debian's layout."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []

    def version(p: str) -> tuple[int, ...]:
        return tuple(int(x) for x in Path(p).parts[-3].split(".") if x.isdigit())

    candidates += [Path(p).parent for p in sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version, reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH nor under "
        "/usr/lib/postgresql/*/bin: install the 'postgresql' package (scripts/test.sh does)")


@dataclass
class PostgresServer:
    """A running server; ``dsn()`` for its databases, ``create_database()`` for a fresh one."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.workdir / "postgres.log", lines)


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres system user; none when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        raise PostgresNotFound(
            f"running as root and there is no {_SYSTEM_USER!r} user to run PostgreSQL as "
            "(the 'postgresql' package creates it)") from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _wait_ready(server: PostgresServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"postgres exited with {server.proc.returncode} while starting:\n{server.log_tail()}")
        try:
            with psycopg.connect(server.dsn(), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"postgres not ready after {timeout}s: {exc}\n{server.log_tail()}") from None
            time.sleep(0.1)


@contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[PostgresServer]:
    """Start a server in a new temporary directory; stop it and delete everything after."""
    bindir = find_bindir()
    drop = _as_server_user()
    # Not pytest's tmp_path: its parents are 0700 root, which the postgres user cannot cross.
    # mkdtemp under the system temp dir is short enough for the unix socket path, too.
    workdir = Path(tempfile.mkdtemp(prefix="ue-pg-"))
    try:
        if drop:
            os.chown(workdir, drop["user"], drop["group"])
        sockdir = workdir / "sock"
        sockdir.mkdir()
        if drop:
            os.chown(sockdir, drop["user"], drop["group"])
        with open(workdir / "postgres.log", "ab") as log:
            if drop:
                os.chown(workdir / "postgres.log", drop["user"], drop["group"])
            initdb = subprocess.run(
                [str(bindir / "initdb"), "-D", str(workdir / "data"), "-U", SUPERUSER, "-A", "trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                stdout=log, stderr=log, cwd=workdir, timeout=timeout, check=False, **drop,
            )
            if initdb.returncode != 0:
                log.flush()
                raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{_tail(workdir / 'postgres.log')}")
            port = free_port()
            proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(workdir / "data"), "-p", str(port),
                 "-k", str(sockdir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                stdout=log, stderr=log, cwd=workdir, **drop,
            )
        server = PostgresServer(port, workdir, proc)
        try:
            _wait_ready(server, timeout)
            yield server
        finally:
            # SIGINT is PostgreSQL's "fast" shutdown: disconnect clients, stop cleanly.
            stop_process(proc, grace=30, sig=signal.SIGINT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
