"""[pure] Security events: the sealed records a SOC watches, and when to raise one.

Every security event is an EVENT-priority record ``{"event": "security", "category": ...,
"reason": ..., "detail": ...}`` (plus category-specific fields); the uplink sends it on the
gateway's ``security`` topic (:mod:`agent.uplink.routing`). Categories:

* ``command_rejected``: a command that was not obeyed (:mod:`agent.control.results`);
* ``update_rejected``: an update refused for a reason that looks like an attack (a bad
  signature, a rollback, a tampered target), not one that is merely not for us;
* ``certificate``: the broker's TLS handshake failed on a certificate, or our own
  certificate expires soon;
* ``crl``: a configured CRL is unreadable, not signed by a CA we know, or stale.

Repeated conditions (a broker that refuses us on every reconnect) are reported once per
:class:`RateLimit` period, so a SOC sees the problem without a flood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agent.buffer.records import NewRecord, event

Category = Literal["command_rejected", "update_rejected", "certificate", "crl"]
MAX_DETAIL = 300

# ota_status "rejected" reasons (agent/update/errors.py, ota/release_meta.py) that a SOC must
# see: someone served metadata or a target that fails verification, or an older release. Not
# here: wrong-hardware, agent-too-old, unknown-target, expired (stale but authentic metadata
# is an operations problem first) -- those stay plain ota_status events.
UPDATE_ATTACK_REASONS = frozenset({
    "bad-signature", "below-threshold", "replayed", "tampered", "too-long", "bad-metadata", "rollback",
})
CERT_WARN_BEFORE = 30 * 86_400.0  # s before our certificate's notAfter that we start saying so


def security_event(source: str, ts: float, *, category: Category, reason: str, detail: str,
                   **extra: Any) -> NewRecord:
    """One security event record (``detail`` is cut to :data:`MAX_DETAIL` characters)."""
    return event(source, ts, "security", category=category, reason=reason, detail=detail[:MAX_DETAIL], **extra)


def update_event(source: str, ts: float, ota_status: dict[str, Any]) -> NewRecord | None:
    """The security event an ``ota_status`` body calls for, if any (a ``rejected`` one whose
    reason code is in :data:`UPDATE_ATTACK_REASONS`). The reason is ``"<code>: <detail>"``."""
    if ota_status.get("state") != "rejected":
        return None
    text = str(ota_status.get("reason") or "")
    code, _, detail = text.partition(":")
    if code.strip() not in UPDATE_ATTACK_REASONS:
        return None
    return security_event(source, ts, category="update_rejected", reason=code.strip(), detail=detail.strip(),
                          release=ota_status.get("release"), target=ota_status.get("target"))


def certificate_expiry(not_after: float, now: float, warn_before: float = CERT_WARN_BEFORE) -> tuple[str, str] | None:
    """``(reason, detail)`` when our certificate has expired or expires within ``warn_before``."""
    left = not_after - now
    if left <= 0:
        return "own_certificate_expired", f"expired {-left / 86_400:.1f} days ago"
    if left <= warn_before:
        return "own_certificate_expiring", f"expires in {left / 86_400:.1f} days"
    return None


@dataclass
class RateLimit:
    """At most one report per key every ``every`` seconds."""

    every: float
    _last: dict[str, float] = field(default_factory=dict)

    def allow(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        return True
