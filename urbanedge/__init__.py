"""urbanedge: the command-line entry point shared by the gateway agent, simulators and tools."""

import contextlib as _contextlib
import json as _json
from pathlib import Path as _Path

__version__ = "0.1.0"

# Code running from an application slot (agent/update) is a signed release: its version is the
# one in the slot's RELEASE.json, which the updater checked against the TUF metadata.
with _contextlib.suppress(OSError, ValueError, KeyError, TypeError):
    __version__ = str(_json.loads((_Path(__file__).parent.parent / "RELEASE.json").read_text())["version"])
