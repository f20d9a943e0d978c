"""[pure] Whether a signed command is to be obeyed here, now: the checks after the signature.

Order of the checks (the first failure is the reason reported):

1. envelope, chain to the root, signer is the IOC command certificate, signature
   (:func:`pki.command.verify_command`) -> ``unsigned`` / ``malformed`` / ``wrong_signer`` /
   ``revoked`` (the IOC command certificate or its CA is on one of ``Policy.crls``) /
   ``bad_signature``;
2. target: this gateway, or a group this gateway is in -> ``not_for_us``;
3. time: ``nbf - skew <= now <= exp + skew`` -> ``not_yet_valid`` / ``expired``;
4. replay window: a command issued (``nbf``) more than ``window`` seconds ago is refused
   even if unexpired (``too_old``), so the store of seen ids only needs ``window`` of history;
   an id already in the store -> ``replayed`` (checked by the caller against
   :class:`agent.control.replay.ReplayStore`, the one stateful step).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from pki.command import DEFAULT_IOC_ID, Command, CommandError, verify_command


@dataclass(frozen=True)
class Policy:
    gateway_id: str
    root: x509.Certificate
    groups: Collection[str] = ()
    max_skew: float = 30.0
    window: float = 3600.0
    ioc_id: str = DEFAULT_IOC_ID
    crls: tuple[x509.CertificateRevocationList, ...] = ()


def check_target(cmd: Command, gateway_id: str, groups: Collection[str]) -> None:
    if cmd.group is not None:
        if cmd.group not in groups:
            raise CommandError("not_for_us", f"group {cmd.group!r} is not one of this gateway's")
    elif cmd.device != gateway_id:
        raise CommandError("not_for_us", f"meant for {cmd.device!r}, this is {gateway_id!r}")


def check_time(cmd: Command, now: float, *, max_skew: float, window: float) -> None:
    if now < cmd.nbf - max_skew:
        raise CommandError("not_yet_valid", f"valid from {cmd.nbf:.0f}, now {now:.0f} (skew {max_skew:g}s)")
    if now > cmd.exp + max_skew:
        raise CommandError("expired", f"expired at {cmd.exp:.0f}, now {now:.0f} (skew {max_skew:g}s)")
    if now - cmd.nbf > window:
        raise CommandError("too_old", f"issued {now - cmd.nbf:.0f}s ago, beyond the {window:g}s replay window")


def verify(data: bytes, policy: Policy, now: float) -> Command:
    """The command in ``data`` if every stateless check passes; else raise :class:`CommandError`."""
    cmd = verify_command(data, policy.root, at=datetime.fromtimestamp(now, UTC), crls=policy.crls,
                         ioc_id=policy.ioc_id)
    try:
        check_target(cmd, policy.gateway_id, policy.groups)
        check_time(cmd, now, max_skew=policy.max_skew, window=policy.window)
    except CommandError as exc:
        exc.command = cmd
        raise
    return cmd
