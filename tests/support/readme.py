"""The README's shell blocks that tests run verbatim, found by the marker comment above them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def shell_block(marker: str) -> str:
    """The ```sh block right after ``<!-- marker -->``."""
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```sh\n(.*?)```", README.read_text(), re.S)
    assert m, f"README.md lost its {marker} block"
    return m.group(1)
