"""A real Mosquitto broker on a free loopback port, stoppable and restartable on that port."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, wait_port
from tests.support.process import stop_process


@dataclass
class Mosquitto:
    """One broker process; ``stop()``/``start()`` keep the same port so clients can reconnect."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    extra_conf: str = ""
    persistence: bool = False  # on: sessions and queued messages survive a clean restart
    proc: subprocess.Popen[bytes] | None = None

    def conf_path(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            + (f"persistence true\npersistence_location {self.workdir}/\n"
               "autosave_on_changes true\nautosave_interval 1\n"
               # As root mosquitto drops to user "mosquitto", who cannot write our temp dir.
               + ("user root\n" if os.geteuid() == 0 else "") if self.persistence
               else "persistence false\n")
            + "max_inflight_messages 0\n"
            "max_queued_messages 100000\n"
            f"{self.extra_conf}\n"
        )
        return conf

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto not installed: run scripts/test.sh, which installs it")
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([exe, "-c", str(self.conf_path())], stdout=log, stderr=log)
        log.close()
        wait_port(self.host, self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crashed broker would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
