"""[pure] Revocation data for command verification: which CRLs to use, and whether they are
still good enough to obey commands with.

The gateway checks the IOC command certificate against the CRLs of ``[commands] crl`` (e.g.
the issuing CA's ``crl.pem`` that ``urbanedge pki crl`` maintains). They change while the agent
runs; the rules (docs/operations.md, "Revocation of the IOC command certificate"):

* a CRL file that cannot be read, is not a CRL, or is not signed by a CA we know (the root,
  or a CA of the gateway's own chain) is *not used*: the last good copy of that file stays in
  force (a truncated or forged file must not lift a revocation) and the problem is reported;
* a file never read successfully since the start -> every command is refused
  (``crl_unavailable``): revocation checking was asked for, and we cannot do it;
* a CRL past its ``nextUpdate`` by more than the grace period -> every command is refused
  (``crl_stale``): fail closed, because an old CRL cannot show a recent revocation. Within the
  grace period it is still used (a CRL published a little late must not stop the city).

No I/O, no clock: :mod:`agent.control.crl_watch` reads the files and passes the time in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from pki.command import CommandError


@dataclass(frozen=True)
class CrlFile:
    """One configured CRL file: its CRLs as last read successfully (empty: never) and the
    problem with the latest read (None: it was good)."""

    crls: tuple[x509.CertificateRevocationList, ...] = ()
    problem: str | None = None
    loaded: bool = False


def check_crl(crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate]) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``crl`` must not be used: no known CA issued it, or its signature fails."""
    issuers = [ca for ca in cas if ca.subject == crl.issuer]
    if not issuers:
        return "crl_unknown_issuer", f"issuer {crl.issuer.rfc4514_string()!r} is not the root or a CA of our chain"
    for ca in issuers:
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return None
        except (TypeError, ValueError):
            continue
    return "crl_bad_signature", f"not signed by {crl.issuer.rfc4514_string()!r}"


def in_force(files: Mapping[str, CrlFile]) -> tuple[x509.CertificateRevocationList, ...]:
    """Every CRL to check commands against: the last good copy of each file."""
    return tuple(crl for f in files.values() for crl in f.crls)


def verdict(files: Mapping[str, CrlFile], now: float, grace: float) -> CommandError | None:
    """Why no command may be obeyed with this revocation data, or None if it is usable."""
    at = datetime.fromtimestamp(now, UTC)
    for path, f in files.items():
        if not f.loaded:
            return CommandError("crl_unavailable", f"{path}: {f.problem or 'not read yet'}")
        for crl in f.crls:
            nxt = crl.next_update_utc
            if nxt is not None and (at - nxt).total_seconds() > grace:
                return CommandError("crl_stale", f"{path}: nextUpdate {nxt.isoformat()} is more than "
                                                 f"{grace:g}s ago")
    return None
