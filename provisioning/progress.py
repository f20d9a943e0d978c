"""Step-by-step progress for the technician: ``[2/7] Getting the certificate ... ok``.

The step's text is written when it starts (so a long wait shows what it waits for) and its
result ends the same line. A failing step is followed by what to check: the translation of
the exception's ``reason`` (``err.<reason>``) and its ``detail``. Every part the flows use
raises exceptions with those two attributes (ProvisionError, NodeLinkError, EstClientError,
TokenError); anything else is an unexpected error, shown as ``err.unknown``. The exception
is always re-raised: the flow decides what a failure means, this only tells the person.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from provisioning.i18n import Messages

# TokenError (pki.enroll.tokens) names token problems without the "token_" the client's
# reasons carry; the advice is the same.
_TOKEN_REASONS = {"unknown", "expired", "used", "wrong_device", "malformed"}
# Not a failure: the flow stopped on purpose until the CA's answer arrives.
_PENDING_REASONS = {"offline_pending"}

_GREEN, _RED, _YELLOW, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[0m"
_INDENT = "      "


def advice_key(messages: Messages, exc: BaseException) -> tuple[str, str]:
    """(message key, detail) that tell the technician what to check for ``exc``."""
    reason = getattr(exc, "reason", None)
    detail = getattr(exc, "detail", None)
    detail = str(detail) if detail else str(exc) or type(exc).__name__
    if not isinstance(reason, str) or not reason:
        return "err.unknown", f"{type(exc).__name__}: {detail}"
    if type(exc).__name__ == "TokenError" and reason in _TOKEN_REASONS:
        reason = "token_" + reason
    if reason == "node_error":
        # The node's own reason (config_invalid, cert_mismatch, ...) says more than "node_error".
        node_reason = getattr(exc, "node_reason", None)
        if isinstance(node_reason, str) and messages.has(f"err.{node_reason}"):
            reason = node_reason
    key = f"err.{reason}"
    if messages.has(key):
        return key, detail
    return "err.unknown", f"{reason}: {detail}"


def wants_colour(out: TextIO, env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, messages: Messages, total: int, out: TextIO, *, colour: bool | None = None) -> None:
        self.m = messages
        self.total = max(total, 0)
        self.out = out
        self.colour = wants_colour(out) if colour is None else colour
        self.done = 0
        self._open: str | None = None  # the head of a step line still waiting for its result

    @contextmanager
    def step(self, key: str, **kw: Any) -> Iterator[None]:
        """Run the body as the next step; prints its result (and advice if it raises)."""
        head = self._head(key, kw)
        self._close_open()
        self.out.write(head)
        self.out.flush()
        self._open = head
        try:
            yield
        except BaseException as exc:
            pending = getattr(exc, "reason", None) in _PENDING_REASONS
            self._finish(head, "status.pending" if pending else "status.failed", _YELLOW if pending else _RED)
            if isinstance(exc, Exception):
                self._advise(exc)
            raise
        self._finish(head, "status.ok", _GREEN)

    def skip(self, key: str, **kw: Any) -> None:
        """A step this run does not need (e.g. no watch asked for)."""
        head = self._head(key, kw)
        self._close_open()
        self._finish(head, "status.skipped", _YELLOW)

    def resumed(self, key: str, **kw: Any) -> None:
        """A step an earlier, interrupted run already did; counted, not done again."""
        head = self._head(key, kw)
        self._close_open()
        self._finish(head, "status.resumed", _YELLOW)

    def say(self, key: str, **kw: Any) -> None:
        """A line of its own (a summary such as ``done.provisioned``)."""
        self._close_open()
        self.out.write(self.m.t(key, **kw) + "\n")
        self.out.flush()

    # --- rendering -----------------------------------------------------------------------

    def _head(self, key: str, kw: Mapping[str, Any]) -> str:
        self.done += 1
        # A flow that takes more steps than announced still shows a sensible count.
        self.total = max(self.total, self.done)
        return f"[{self.done}/{self.total}] {self.m.t(key, **kw)} ..."

    def _close_open(self) -> None:
        # A step started inside another one: end the outer's partial line first.
        if self._open is not None:
            self.out.write("\n")
            self._open = None

    def _finish(self, head: str, status_key: str, colour: str) -> None:
        word = self.m.t(status_key)
        if self.colour:
            word = f"{colour}{word}{_RESET}"
        if self._open == head:
            self.out.write(f" {word}\n")
        else:
            self._close_open()
            self.out.write(f"{head} {word}\n")
        self._open = None
        self.out.flush()

    def _advise(self, exc: Exception) -> None:
        key, detail = advice_key(self.m, exc)
        template_takes_detail = "{detail}" in self.m.t(key)
        lines = [self.m.t(key, detail=detail)]
        if detail and not template_takes_detail:
            lines.append(f"{self.m.t('label.detail')}: {detail}")
        for line in lines:
            self.out.write(f"{_INDENT}{line}\n")
        self.out.flush()
