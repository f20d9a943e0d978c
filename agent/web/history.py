"""[pure] The last N readings of each device, in memory, for the web page's charts.

Fed by ``DevicePoller.observers`` (called after every good poll): ``observe`` only appends
to a bounded deque, so it is cheap enough to run on the polling path. Memory is bounded:
``size`` readings per device, and only numeric points are kept (booleans as 0/1).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

Value = bool | int | float


class ReadingLike(Protocol):
    """What ``agent.poll.device.Reading`` offers (not imported: this module stays pure)."""

    @property
    def device_id(self) -> str: ...
    @property
    def ts(self) -> float: ...
    @property
    def values(self) -> Mapping[str, Value]: ...


@dataclass(frozen=True)
class Sample:
    ts: float
    values: Mapping[str, float]


class ReadingHistory:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("history size must be at least 1")
        self.size = size
        self._by_device: dict[str, deque[Sample]] = {}

    def add(self, device_id: str, ts: float, values: Mapping[str, Value]) -> None:
        kept = {k: float(v) for k, v in values.items()
                if isinstance(v, bool | int | float) and math.isfinite(float(v))}
        ring = self._by_device.get(device_id)
        if ring is None:
            ring = self._by_device[device_id] = deque(maxlen=self.size)
        ring.append(Sample(ts, kept))

    def observe(self, reading: ReadingLike) -> None:
        """A ``ReadingObserver`` for ``DevicePoller.observers``."""
        self.add(reading.device_id, reading.ts, reading.values)

    def devices(self) -> list[str]:
        return sorted(self._by_device)

    def samples(self, device_id: str) -> list[Sample]:
        return list(self._by_device.get(device_id, ()))

    def series(self, device_id: str) -> dict[str, list[tuple[float, float]]]:
        """Per point, its (ts, value) pairs in time order; points in first-seen order."""
        out: dict[str, list[tuple[float, float]]] = {}
        for s in self._by_device.get(device_id, ()):
            for k, v in s.values.items():
                out.setdefault(k, []).append((s.ts, v))
        return out
