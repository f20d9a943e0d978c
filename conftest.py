"""Shared fixtures: real peers (Mosquitto, socat ptys) on free loopback ports, torn down after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.socat import PtyPair, open_pty_pair


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free port of 127.0.0.1."""
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """A socat-linked pair of ptys: the two ends of a virtual serial cable."""
    pair = open_pty_pair(tmp_path)
    try:
        yield pair
    finally:
        pair.close()
