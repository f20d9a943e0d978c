"""Reads the ``[commands] crl`` files, again whenever one changes (size or mtime), and keeps the
last good copy of each; the rules are in :mod:`agent.control.revocation`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from agent.control.revocation import CrlFile, check_crl, in_force, verdict
from pki.command import CommandError
from pki.errors import PkiError
from pki.keys import load_crls

log = logging.getLogger("urbanedge.control")


class CrlWatch:
    def __init__(self, paths: Sequence[Path], cas: Sequence[x509.Certificate], *, grace: float) -> None:
        self.paths = list(paths)
        self.cas = list(cas)
        self.grace = grace
        self.files: dict[str, CrlFile] = {str(p): CrlFile() for p in self.paths}
        self._stamps: dict[str, tuple[int, int] | None] = {}

    @property
    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        return in_force(self.files)

    def verdict(self, now: float) -> CommandError | None:
        return verdict(self.files, now, self.grace)

    def refresh(self) -> list[tuple[str, str]]:
        """Re-read the files that changed; ``(reason, detail)`` of each new problem found."""
        problems: list[tuple[str, str]] = []
        for path in self.paths:
            key = str(path)
            try:
                st = os.stat(path)
                stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
            if key in self._stamps and self._stamps[key] == stamp:
                continue
            self._stamps[key] = stamp
            found = self._read(path)
            old = self.files[key]
            if isinstance(found, tuple):
                reason, detail = found
                log.warning("event=crl_rejected path=%s reason=%s detail=%r keeping_last_good=%s",
                            path, reason, detail, old.loaded)
                self.files[key] = CrlFile(old.crls, f"{reason}: {detail}", old.loaded)
                problems.append((reason, f"{path}: {detail}"))
                continue
            self.files[key] = CrlFile(tuple(found), None, True)
            log.info("event=crl_loaded path=%s crls=%d revoked=%d", path, len(found),
                     sum(len(list(c)) for c in found))
        return problems

    def _read(self, path: Path) -> list[x509.CertificateRevocationList] | tuple[str, str]:
        try:
            crls = load_crls(path)
        except PkiError as exc:
            return "crl_unreadable", str(exc)
        for crl in crls:
            bad = check_crl(crl, self.cas)
            if bad is not None:
                return bad
        return crls
