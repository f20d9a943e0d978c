"""Stopping a child process politely, then firmly."""

from __future__ import annotations

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
