"""Encrypted command args (pki/sealed_args), pure: the round trip, and every way it is refused."""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.command import Command, CommandError, new_command
from pki.envelope import encrypt, recipient_kid
from pki.keys import load_cert, load_private_key
from pki.sealed_args import SEALED, Unsealer, open_command, seal_args
from tests.support import testpki

GW = "gw-sealed"


def gateway(device_id: str = GW) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    creds = testpki.device(device_id)
    key = load_private_key(creds.key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, load_cert(creds.chain).public_bytes(Encoding.DER)


def command(args: dict[str, Any]) -> Command:
    return new_command("config", args, device=GW, now=time.time())


def sealed_for(args: dict[str, Any], device_id: str = GW) -> dict[str, Any]:
    key, der = gateway(device_id)
    return seal_args(args, key.public_key(), der)


values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=50)
                      | st.binary(max_size=50),
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=12)
arg_maps = st.dictionaries(st.text(max_size=12).filter(lambda k: k != SEALED), values, max_size=6)


@settings(max_examples=60, deadline=None)
@given(arg_maps)
def test_round_trip(args: dict[str, Any]) -> None:
    key, der = gateway()
    opened, encrypted = open_command(command(sealed_for(args)), Unsealer.for_key(key, der))
    assert encrypted and dict(opened.args) == args
    assert opened.cmd == "config" and opened.device == GW


def test_args_in_clear_pass_unchanged_and_say_so() -> None:
    key, der = gateway()
    cmd = command({"level": 40})
    assert open_command(cmd, Unsealer.for_key(key, der)) == (cmd, False)
    assert open_command(cmd, None) == (cmd, False)


def test_the_plaintext_never_shows_in_the_signed_args() -> None:
    args = sealed_for({"toml": "password = 'hunter2-secret'"})
    assert list(args) == [SEALED] and b"hunter2-secret" not in cbor2.dumps(args)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_any_flipped_bit_is_undecryptable(pos: int, bit: int) -> None:
    key, der = gateway()
    blob = bytearray(sealed_for({"toml": "x = 1"})[SEALED])
    blob[pos % len(blob)] ^= 1 << bit
    with pytest.raises(CommandError) as exc:
        open_command(command({SEALED: bytes(blob)}), Unsealer.for_key(key, der))
    assert exc.value.reason == "undecryptable"


def test_refusals_name_why() -> None:
    key, der = gateway()
    ours = Unsealer.for_key(key, der)
    cases: list[tuple[dict[str, Any], Unsealer | None, str]] = [
        (sealed_for({"toml": "x"}, "gw-sealed-other"), ours, "another gateway"),
        ({SEALED: "not bytes"}, ours, "byte string"),
        ({**sealed_for({"toml": "x"}), "deadline": 5}, ours, "alone"),
        (sealed_for({"toml": "x"}), None, "not P-256"),
        ({SEALED: encrypt(b"\x1c", key.public_key(), recipient_kid(der))}, ours, "not CBOR"),
        ({SEALED: encrypt(cbor2.dumps([1, 2]), key.public_key(), recipient_kid(der))}, ours, "map"),
        ({SEALED: encrypt(cbor2.dumps({SEALED: b""}), key.public_key(), recipient_kid(der))}, ours, "map"),
    ]
    for args, unsealer, says in cases:
        with pytest.raises(CommandError) as exc:
            open_command(command(args), unsealer)
        assert exc.value.reason == "undecryptable" and says in exc.value.detail, (says, exc.value.detail)


def test_only_p256_keys_take_encrypted_args() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    assert Unsealer.for_key(ed, b"cert") is None
    with pytest.raises(ValueError, match="P-256"):
        seal_args({}, ec.generate_private_key(ec.SECP384R1()).public_key(), b"cert")
