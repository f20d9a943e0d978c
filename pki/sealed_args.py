"""[pure] Encrypted command arguments: IOC -> one gateway, for commands that carry secrets.

A signed command (:mod:`pki.command`) whose arguments must stay confidential (a ``config``
carries broker passwords) keeps its envelope as it is and replaces ``args`` by one entry::

    "args": {"sealed": COSE_Encrypt}   ; tag 96, the envelope of pki.envelope, recipient =
                                       ; the gateway's seal certificate (ECDH-ES + HKDF-256,
                                       ; A128GCM, kid = SHA-256(gateway cert DER)[:8])

whose plaintext is the canonical CBOR map of the real ``args``. Encrypt, then sign: the
IOC's signature covers the ciphertext together with ``id``, ``target``, ``cmd`` and the
validity, so nobody can splice a ciphertext into another command, and the gateway checks
the signature (cheap to refuse junk) before it spends an ECDH on the content. The command
name and target stay readable on the broker (they route and report the command); only the
arguments are hidden.

The gateway's seal key must be P-256 for this (an Ed25519 gateway cannot receive encrypted
commands). No I/O here; every failure is a :class:`CommandError` ``undecryptable``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from pki.command import Command, CommandError
from pki.envelope import EnvelopeError, SigningKey, decrypt, encrypt, recipient_kid

SEALED = "sealed"


def seal_args(args: Mapping[str, Any], recipient: ec.EllipticCurvePublicKey, recipient_cert_der: bytes
              ) -> dict[str, Any]:
    """The ``args`` of a command whose real ``args`` only the holder of the certificate's key reads."""
    if not isinstance(recipient, ec.EllipticCurvePublicKey) or not isinstance(recipient.curve, ec.SECP256R1):
        raise ValueError("the gateway's seal certificate must hold a P-256 key to receive encrypted commands")
    plaintext = cbor2.dumps(dict(args), canonical=True)
    return {SEALED: encrypt(plaintext, recipient, recipient_kid(recipient_cert_der))}


@dataclass(frozen=True)
class Unsealer:
    """The gateway's side: its seal key and the kid that names its certificate."""

    key: ec.EllipticCurvePrivateKey
    kid: bytes

    @classmethod
    def for_key(cls, key: SigningKey, cert_der: bytes) -> Unsealer | None:
        """None when the key cannot do ECDH (Ed25519): such a gateway refuses encrypted args."""
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return cls(key, recipient_kid(cert_der))
        return None

    def open_args(self, sealed: object) -> dict[str, Any]:
        if not isinstance(sealed, bytes):
            raise CommandError("undecryptable", "args.sealed must be a byte string (a COSE_Encrypt)")
        try:
            plaintext = decrypt(sealed, self.key, self.kid)
        except EnvelopeError as exc:
            detail = "encrypted to another gateway" if exc.reason == "not_for_us" else exc.problem
            raise CommandError("undecryptable", detail) from None
        try:
            args: Any = cbor2.loads(plaintext)
        except Exception as exc:  # cbor2 raises several types on junk
            raise CommandError("undecryptable", f"decrypted args are not CBOR ({type(exc).__name__})") from None
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args) or SEALED in args:
            raise CommandError("undecryptable", "decrypted args must be a map with string keys")
        return args


def open_command(cmd: Command, unsealer: Unsealer | None) -> tuple[Command, bool]:
    """``cmd`` with its real args, and whether they arrived encrypted.

    Args without ``sealed`` pass unchanged (``False``): whether a command may arrive in
    clear is the command handler's decision, not the envelope's."""
    if SEALED not in cmd.args:
        return cmd, False
    if len(cmd.args) != 1:
        raise CommandError("undecryptable", "args.sealed comes alone: other args would be unencrypted")
    if unsealer is None:
        raise CommandError("undecryptable", "this gateway's seal key is not P-256: it cannot receive encrypted args")
    return dataclasses.replace(cmd, args=unsealer.open_args(cmd.args[SEALED])), True
