"""Placeholder: filled in by the part that owns these subcommands."""

from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    del sub
