"""Child processes: reading a line with a deadline; stopping politely, then firmly."""

from __future__ import annotations

import selectors
import signal
import subprocess
from typing import Any


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 5.0,
                 sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig``, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's next stdout line; TimeoutError if none started within ``timeout`` s."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from the process within {timeout}s")
    return proc.stdout.readline()
