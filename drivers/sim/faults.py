"""Fault injection for the Modbus simulators: what a sick field device does. [pure]

Kinds (each applies to a response with probability ``rate``, globally or for one unit):

* ``none``         answer normally;
* ``no-response``  drop the request silently (master sees a timeout);
* ``exception``    answer with Modbus exception ``code`` (4 device failure by default,
                   2 illegal address, 6 device busy, any 1-255);
* ``garbage``      send random bytes instead of the response;
* ``bad-crc``      RTU: the right frame with a corrupted CRC; TCP: the right PDU behind a
                   malformed MBAP header (non-zero protocol id);
* ``slow``         answer after ``delay`` seconds (later answers queue behind it, as on
                   a real half-duplex line).

The server asks :meth:`FaultPlan.decide` once per response and uses :func:`garbage` /
:func:`corrupt` to build the bytes; this module holds no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FAULT_KINDS = ("none", "no-response", "exception", "garbage", "bad-crc", "slow")


class FaultError(ValueError):
    """An unknown fault kind or an out-of-range fault parameter."""


@dataclass(frozen=True)
class Fault:
    """One fault setting."""

    kind: str
    rate: float = 1.0
    code: int = 4
    delay: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise FaultError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise FaultError(f"fault rate must be within 0..1, not {self.rate}")
        if not 1 <= self.code <= 255:
            raise FaultError(f"exception code must be within 1..255, not {self.code}")
        if self.delay < 0:
            raise FaultError(f"delay must not be negative, not {self.delay}")


class FaultPlan:
    """The fault settings of one simulator: a global one and per-unit overrides."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.default: Fault | None = None
        self.per_unit: dict[int, Fault] = {}

    def set(self, fault: Fault, unit: int | None = None) -> None:
        """``unit=None`` sets the global fault (``none`` clears every setting);
        a unit's setting, even ``none``, overrides the global one for that unit."""
        if unit is not None:
            self.per_unit[unit] = fault
        elif fault.kind == "none":
            self.default = None
            self.per_unit.clear()
        else:
            self.default = fault

    def decide(self, unit: int) -> Fault | None:
        """The fault to apply to this response of ``unit``, or None to answer normally."""
        fault = self.per_unit.get(unit, self.default)
        if fault is None or fault.kind == "none":
            return None
        if fault.rate < 1.0 and self.rng.random() >= fault.rate:
            return None
        return fault


def garbage(rng: random.Random, *, rtu: bool) -> bytes:
    """Random bytes that no Modbus master can take for a response."""
    data = bytearray(rng.randbytes(rng.randint(6, 24)))
    if not rtu and data[2:4] == b"\x00\x00":
        data[2] = 0xFF  # a zero protocol id could make the noise parse as an MBAP frame
    return bytes(data)


def corrupt(frame: bytes, *, rtu: bool) -> bytes:
    """The frame with a wrong CRC (RTU) or a non-zero MBAP protocol id (TCP)."""
    data = bytearray(frame)
    if rtu:
        data[-2] ^= 0xFF
        data[-1] ^= 0xFF
    else:
        data[2:4] = b"\xde\xad"
    return bytes(data)
