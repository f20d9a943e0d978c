"""Virtual serial cables: a pair of linked ptys made by socat, like two ends of an RS-485 bus."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import stop_process


@dataclass
class PtyPair:
    """Two pty paths; bytes written to one come out of the other."""

    a: Path
    b: Path
    proc: subprocess.Popen[bytes]

    def close(self) -> None:
        stop_process(self.proc)


def open_pty_pair(folder: Path, name: str = "tty") -> PtyPair:
    """Start socat linking ``folder/name-a`` and ``folder/name-b``; wait until both exist."""
    exe = shutil.which("socat")
    if exe is None:
        raise RuntimeError("socat not installed: run scripts/test.sh, which installs it")
    a, b = folder / f"{name}-a", folder / f"{name}-b"
    proc = subprocess.Popen(
        [exe, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (a.exists() and b.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("socat did not create the pty pair")
        time.sleep(0.02)
    return PtyPair(a, b, proc)
