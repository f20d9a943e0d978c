"""[pure] Holes in a source's sequence numbers: which are new, which are filled, how many remain.

A gateway numbers its records with a per-source ``seq`` that increases strictly and is
never reused, but the IOC sees them out of order: alarms overtake a telemetry backlog, a
resent message arrives after later ones, several receivers share the load. So a hole is
*not* an error when it appears; it is one when it stays open.

The bookkeeping needs three numbers per source, no list of holes:

* ``baseline`` — the lowest seq of the first records ever stored for the source. Holes are
  counted from there only: an IOC that starts listening to a gateway that already ran for
  a year must not report a year of readings as missing. A record older than the baseline
  that shows up later is stored, and it neither opens nor fills a hole.
* ``highest`` — the highest seq stored. A record above ``highest + 1`` opens the hole
  between them (reported once, as a :class:`Gap`).
* ``missing`` — how many seqs between ``baseline`` and ``highest`` are not stored: every
  new record below ``highest`` and at or above ``baseline`` fills exactly one of them.

The open holes themselves can always be listed from the stored seqs (see the stores'
``open_gaps``); the counters make ``stats()`` cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Gap:
    """``first_missing`` .. ``last_missing`` (inclusive) of ``source`` were not received."""

    source: str
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True, slots=True)
class SeqState:
    """Per-source sequence bookkeeping (see the module docstring); ``None``: nothing stored yet."""

    baseline: int | None = None
    highest: int | None = None
    missing: int = 0


def advance(source: str, state: SeqState, new_seqs: Iterable[int]) -> tuple[SeqState, list[Gap]]:
    """Account for newly stored seqs; return the new state and the holes they opened.

    ``new_seqs`` must be ascending, distinct, and none of them stored before: the store
    guarantees that by inserting first and passing only what was actually inserted.
    """
    baseline, highest, missing = state.baseline, state.highest, state.missing
    gaps: list[Gap] = []
    for seq in new_seqs:
        if highest is None or baseline is None:
            baseline = highest = seq
        elif seq > highest:
            if seq > highest + 1:
                gaps.append(Gap(source, highest + 1, seq - 1))
                missing += seq - highest - 1
            highest = seq
        elif seq >= baseline:
            # Below the highest, above the baseline and not stored before: it was missing.
            missing -= 1
    return SeqState(baseline, highest, missing), gaps

