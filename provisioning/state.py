"""What a half-finished provisioning leaves behind on the laptop, so a re-run resumes.

The certificate is saved here the moment the CA issues it, before it is installed: if the
cable comes out between the two, the next run installs the same certificate instead of
asking for a second one (the token is spent anyway). One JSON file per device, 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "urbanedge" / "provisioning"


class ResumeState:
    def __init__(self, dir: Path, device_id: str) -> None:
        self.path = dir / f"{device_id}.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, **values: Any) -> None:
        self.data.update(values)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.data = {}
        self.path.unlink(missing_ok=True)
