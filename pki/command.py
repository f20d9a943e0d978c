"""[pure] The signed command envelope: IOC -> gateway, COSE_Sign1 by the IOC command key.

Wire format: a tagged COSE_Sign1 (tag 18, see :mod:`pki.envelope`) signed with the key of
the ``ioc-command`` certificate, whose chain (leaf first, then the issuing CA) is in the
unprotected x5chain so a gateway verifies it with only the provincial root. The payload is a
canonical CBOR map::

    {"v": 1,
     "id": bstr(16),                         ; random; the replay window remembers it
     "target": {"device": "<gateway id>", "points": ["<field device id>", ...]}
             | {"group": "<group name>"},    ; every gateway configured in that group
     "nbf": <unix s>, "exp": <unix s>,       ; valid from nbf to exp (both inclusive)
     "cmd": "on" | "off" | "dim" | "write" | ...,
     "args": {...}}                          ; dim: {"level": 0..100}; write: {"point", "value"}

``points`` is optional: when absent or empty the command goes to every field device of the
gateway that can run it. Signed receipts (:mod:`ioc.receipts`) use the same key, but their
payload has no ``cmd``/``target``: one can never pass for a command.

No I/O and no clock here: ``at`` is passed in. Every failure is a :class:`CommandError` with
a short ``reason`` the gateway reports and counts by.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cbor2
from cryptography import x509

from pki.envelope import EnvelopeError, SigningKey, parse_sign1, sign1
from pki.ioc_signer import IocSignerError, verify_ioc_sign1

VERSION = 1
ID_BYTES = 16
MAX_COMMAND_BYTES = 16 * 1024
DEFAULT_IOC_ID = "ioc-command"
TAG_SIGN1_BYTE = 0xD2  # CBOR major type 6 (tag) with value 18 in one byte: a COSE_Sign1


class CommandError(Exception):
    """A command that must not be obeyed; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        # Set when the command was authentic but refused by policy (target, time): its id
        # then goes into the reported result, so the IOC can match it.
        self.command: Command | None = None


@dataclass(frozen=True)
class Command:
    id: bytes
    cmd: str
    nbf: float
    exp: float
    device: str | None = None  # target gateway, or None for a group command
    points: tuple[str, ...] = ()
    group: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    signer: str = ""

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    def body(self) -> dict[str, Any]:
        target: dict[str, Any] = {"group": self.group} if self.group is not None else {"device": self.device}
        if self.points:
            target["points"] = list(self.points)
        return {"v": VERSION, "id": self.id, "target": target, "nbf": self.nbf, "exp": self.exp,
                "cmd": self.cmd, "args": dict(self.args)}


def new_command(cmd: str, args: Mapping[str, Any] | None = None, *, device: str | None = None,
                points: Sequence[str] = (), group: str | None = None, now: float, ttl: float = 60.0,
                command_id: bytes | None = None) -> Command:
    """A fresh command valid from ``now`` for ``ttl`` seconds, for a gateway or a group."""
    if (device is None) == (group is None):
        raise ValueError("a command targets exactly one of a gateway (device) or a group")
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    return Command(id=command_id if command_id is not None else os.urandom(ID_BYTES), cmd=cmd,
                   nbf=float(int(now)), exp=float(int(now + ttl)), device=device, points=tuple(points),
                   group=group, args=dict(args or {}))


def sign_command(command: Command, key: SigningKey, chain: Sequence[x509.Certificate]) -> bytes:
    """The signed bytes of ``command``; ``chain`` is the IOC command certificate, then its CAs."""
    from cryptography.hazmat.primitives.serialization import Encoding

    if not chain:
        raise ValueError("the signing chain is empty")
    ders = [c.public_bytes(Encoding.DER) for c in chain]
    return sign1(cbor2.dumps(command.body(), canonical=True), key, ders[0], chain=ders)


def looks_signed(data: bytes) -> bool:
    """True if ``data`` starts like a COSE_Sign1 (tag 18), not like JSON."""
    return data[:1] == bytes([TAG_SIGN1_BYTE])


def verify_command(data: bytes, root: x509.Certificate, *, at: datetime,
                   crls: Sequence[x509.CertificateRevocationList] = (), ioc_id: str = DEFAULT_IOC_ID) -> Command:
    """The command in ``data`` if the IOC command certificate (chaining to ``root``) signed it.

    Checks the envelope, the chain, the signer's identity and the signature, then the payload
    shape. Freshness, target and replay are policy: see :mod:`agent.control.verify`.
    """
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandError("malformed", f"{len(data)} bytes, limit {MAX_COMMAND_BYTES}")
    if not looks_signed(data):
        raise CommandError("unsigned", "not a COSE_Sign1 (CBOR tag 18)")
    try:
        s1 = parse_sign1(data)
    except EnvelopeError as exc:
        raise CommandError("malformed", exc.problem) from None
    if not s1.x5chain:
        raise CommandError("unsigned", "no certificate chain (x5chain) in the command")
    try:
        signer = verify_ioc_sign1(s1, root, at=at, ioc_id=ioc_id, crls=crls)
    except IocSignerError as exc:
        # A chain to another root and a certificate that is not the IOC's are the same to the
        # operator: somebody else signed it.
        reason = "wrong_signer" if exc.reason in ("untrusted", "not_ioc") else exc.reason
        raise CommandError(reason, exc.detail) from None
    return parse_body(s1.payload, signer)


def parse_body(payload: bytes, signer: str = "") -> Command:
    """The :class:`Command` in a (verified) payload; raise ``malformed`` on any shape error."""
    try:
        body: Any = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types on junk
        raise CommandError("malformed", f"payload is not CBOR ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise CommandError("malformed", "payload is not a map")
    if body.get("v") != VERSION:
        raise CommandError("malformed", f"version {body.get('v')!r} is not {VERSION}")
    cid, cmd, args, target = body.get("id"), body.get("cmd"), body.get("args", {}), body.get("target")
    if not isinstance(cid, bytes) or not 8 <= len(cid) <= 32:
        raise CommandError("malformed", "id must be 8..32 bytes")
    if not isinstance(cmd, str) or not cmd:
        raise CommandError("malformed", "cmd must be a non-empty string")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise CommandError("malformed", "args must be a map with string keys")
    nbf, exp = body.get("nbf"), body.get("exp")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (nbf, exp)):
        raise CommandError("malformed", "nbf and exp must be numbers (unix seconds)")
    assert isinstance(nbf, int | float) and isinstance(exp, int | float)
    if exp < nbf:
        raise CommandError("malformed", "exp is before nbf")
    if not isinstance(target, dict):
        raise CommandError("malformed", "target must be a map")
    device, group, points = target.get("device"), target.get("group"), target.get("points", [])
    if (device is None) == (group is None) or not isinstance(device or group, str):
        raise CommandError("malformed", "target names exactly one of device or group, as a string")
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise CommandError("malformed", "target.points must be a list of strings")
    return Command(id=cid, cmd=cmd, nbf=float(nbf), exp=float(exp), device=device, points=tuple(points),
                   group=group, args=args, signer=signer)


