"""What can go wrong with an update, as the agent's update loop needs to tell it apart.

``UpdateRejected`` is a security verdict (do not retry this release: report ``rejected`` with
the reason code); ``UpdateUnavailable`` is a transport problem (try again at the next check);
``InsufficientSpace`` is local (report ``failed``; nothing was downloaded).

``UpdateRejected`` extends ``ReleaseRejected`` so one ``except ReleaseRejected`` also catches the
checks of ``ota.release_meta.check_release``.
"""

from __future__ import annotations

from ota.release_meta import BadReleaseMetadata, ReleaseRejected

__all__ = [
    "BadReleaseMetadata",
    "InsufficientSpace",
    "ReleaseRejected",
    "UpdateError",
    "UpdateRejected",
    "UpdateUnavailable",
]

# Reason codes of UpdateRejected (short, stable: they go into ota_status events).
BAD_SIGNATURE = "bad-signature"
BELOW_THRESHOLD = "below-threshold"
EXPIRED = "expired"
REPLAYED = "replayed"
TAMPERED = "tampered"
TOO_LONG = "too-long"
BAD_METADATA = "bad-metadata"
UNKNOWN_TARGET = "unknown-target"


class UpdateError(Exception):
    """Base of every update failure."""


class UpdateRejected(UpdateError, ReleaseRejected):
    """Metadata or a target failed verification, or a valid release is not for this device."""

    def __init__(self, reason: str, detail: str = "") -> None:
        ReleaseRejected.__init__(self, reason, detail)


class UpdateUnavailable(UpdateError):
    """The update server could not be used (down, 4xx/5xx, timeouts) after bounded retries."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InsufficientSpace(UpdateError):
    """Not enough free space for the download (``need`` and ``free`` in bytes)."""

    def __init__(self, need: int, free: int) -> None:
        super().__init__(f"need {need} bytes, {free} free")
        self.need = need
        self.free = free
