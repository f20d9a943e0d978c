"""The key algorithms we accept: P-256 (ES256, ECDH-ES) and Ed25519 (EdDSA). Pure."""

from __future__ import annotations

from typing import Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
KeyType = Literal["p256", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("p256", "ed25519")


def generate_key(kind: KeyType) -> PrivateKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {kind!r}; one of {', '.join(KEY_TYPES)}")


def key_type_of(key: object) -> KeyType | None:
    """``"p256"``/``"ed25519"`` for a public or private key we support, else None."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "p256" if isinstance(key.curve, ec.SECP256R1) else None
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    return None


def describe_key(key: object) -> str:
    """A short human name of a key's algorithm, for messages and ``show``."""
    kind = key_type_of(key)
    if kind == "p256":
        return "EC P-256"
    if kind == "ed25519":
        return "Ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {key.curve.name}"
    size = getattr(key, "key_size", None)
    return f"{type(key).__name__.removeprefix('_')}{f' {size} bit' if size else ''}"
