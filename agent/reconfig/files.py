"""The files of a remote configuration, next to the live config ``agent.toml``:

- ``agent.toml.new``        the received config while it is validated (then removed),
- ``agent.toml.prev``       the config it replaces (kept after the trial, for the operator),
- ``agent.toml.trial.json`` the trial record (:mod:`agent.reconfig.trial`).

Every write is write-to-temporary + fsync + rename + fsync of the directory, so a power cut
leaves either the old or the new content of each file, never a mix. Order of a switch:
``prev``, then the trial record, then the live file; so any crash leaves a record that still
decides (see ``decide_start``). Files keep the live config's permission bits: it holds
broker passwords.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from agent.reconfig.trial import TrialRecord, TrialRecordError
from urbanedge.atomic import write_atomically

log = logging.getLogger("urbanedge.reconfig")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    write_atomically(path, data, mode=mode)


class ConfigFiles:
    def __init__(self, live: Path) -> None:
        self.live = live
        self.new = live.with_name(live.name + ".new")
        self.prev = live.with_name(live.name + ".prev")
        self.trial = live.with_name(live.name + ".trial.json")

    def _mode(self) -> int:
        try:
            return self.live.stat().st_mode & 0o777
        except OSError:
            return 0o600

    def live_sha256(self) -> str | None:
        try:
            return sha256(self.live.read_bytes())
        except OSError:
            return None

    def load(self) -> TrialRecord | None:
        try:
            raw = self.trial.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return TrialRecord.from_dict(json.loads(raw))
        except (ValueError, TrialRecordError) as exc:
            # Only this module writes it, atomically: a bad one was edited by hand. Set it aside
            # (for the operator) and run what is live rather than refuse to start.
            bad = self.trial.with_name(self.trial.name + ".bad")
            os.replace(self.trial, bad)
            log.error("event=config_trial_unreadable file=%s moved_to=%s problem=%r", self.trial, bad, str(exc))
            return None

    def save(self, rec: TrialRecord) -> None:
        atomic_write(self.trial, json.dumps(rec.to_dict()).encode(), 0o600)

    def drop(self) -> None:
        self.trial.unlink(missing_ok=True)

    def stage(self, text: bytes) -> Path:
        """Write the received config next to the live one, so relative paths resolve the same."""
        atomic_write(self.new, text, self._mode())
        return self.new

    def unstage(self) -> None:
        self.new.unlink(missing_ok=True)

    def switch(self, rec: TrialRecord, text: bytes, live_text: bytes) -> None:
        """Keep the live file as ``prev``, persist the trial, then put ``text`` live."""
        mode = self._mode()
        atomic_write(self.prev, live_text, mode)
        self.save(rec)
        atomic_write(self.live, text, mode)
        self.unstage()

    def restore(self, rec: TrialRecord) -> bool:
        """Put the previous file back (idempotent); False if ``prev`` is not the file the trial replaced."""
        if self.live_sha256() == rec.prev_sha256:
            return True
        try:
            prev = self.prev.read_bytes()
        except OSError as exc:
            log.error("event=config_restore_failed file=%s error=%r", self.prev, exc)
            return False
        if sha256(prev) != rec.prev_sha256:
            log.error("event=config_restore_failed file=%s problem=%r", self.prev, "not the file the trial replaced")
            return False
        atomic_write(self.live, prev, self._mode())
        return True

    def roll_back(self, rec: TrialRecord) -> TrialRecord:
        """Persist the rolled-back decision first, then restore: a crash in between restores at
        the next start. Returns the record to report (its detail says if the restore failed)."""
        self.save(rec)
        if not self.restore(rec):
            rec = TrialRecord(**{**rec.to_dict(), "detail": rec.detail + f"; RESTORE FAILED: {self.prev} "
                                 "missing or changed, the failed config is still live"})
            self.save(rec)
        return rec
