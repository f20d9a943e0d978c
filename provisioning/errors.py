"""The one exception type the provisioning flows raise themselves.

Every failure a technician can meet carries a ``reason`` code (translated into advice by
``provisioning.i18n``: what happened, what to check) and a ``detail`` for the log. The parts
the flows use (NodeLink, EstClient, the token store) raise their own types with the same two
attributes, so ``provisioning.progress`` renders them all alike.
"""

from __future__ import annotations


class ProvisionError(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
