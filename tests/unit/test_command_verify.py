"""Signed commands, pure: the envelope, the signer, the target, the clock, the arguments."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.executor import FieldDevice, plan
from agent.control.verify import Policy, check_time, verify
from drivers.profiles import builtin_profiles
from pki.command import Command, CommandError, looks_signed, new_command, parse_body, sign_command
from pki.envelope import sign1
from pki.keys import load_cert, load_certs, load_private_key
from pki.throwaway import build_throwaway_pki
from tests.support import testpki

GW = "gw-cmd"
NOW = time.time()


def ioc_signer() -> tuple[Any, list[x509.Certificate]]:
    pki = testpki.shared_pki()
    return load_private_key(pki.ioc_command_key), load_certs(pki.ioc_command_key.with_name("command.chain.pem"))


def policy(**kw: Any) -> Policy:
    return Policy(gateway_id=GW, root=load_cert(testpki.shared_pki().root_cert), **kw)


def signed(cmd: Command) -> bytes:
    key, chain = ioc_signer()
    return sign_command(cmd, key, chain)


def reason(data: bytes, pol: Policy | None = None, now: float = NOW) -> str:
    with pytest.raises(CommandError) as info:
        verify(data, pol or policy(), now)
    return info.value.reason


def test_a_signed_command_for_this_gateway_verifies() -> None:
    cmd = new_command("dim", {"level": 40}, device=GW, points=["light-1"], now=NOW)
    got = verify(signed(cmd), policy(), NOW + 1)
    assert (got.cmd, got.args, got.points, got.id, got.signer) == ("dim", {"level": 40}, ("light-1",), cmd.id,
                                                                   "ioc-command")
    assert looks_signed(signed(cmd)) and not looks_signed(b'{"cmd":"update-check"}')


def test_unsigned_command_is_rejected() -> None:
    body = new_command("on", device=GW, now=NOW).body()
    assert reason(cbor2.dumps(body)) == "unsigned"
    assert reason(b'{"cmd": "on"}') == "unsigned"


def test_tampered_payload_fails_the_signature() -> None:
    data = signed(new_command("dim", {"level": 40}, device=GW, now=NOW))
    # Same length, other level: the envelope parses, the signature must not verify.
    forged = data.replace(cbor2.dumps({"level": 40}), cbor2.dumps({"level": 41}))
    assert forged != data
    assert reason(forged) == "bad_signature"


def test_a_gateway_certificate_cannot_sign_commands() -> None:
    # A device certificate named like the IOC (clientAuth) from the same root: wrong signer.
    creds = testpki.shared_pki().issue_device("ioc-command")
    key, chain = load_private_key(creds.key), load_certs(creds.chain)
    data = sign_command(new_command("on", device=GW, now=NOW), key, chain)  # type: ignore[arg-type]
    assert reason(data) == "wrong_signer"


def test_a_command_key_of_another_root_is_a_wrong_signer(tmp_path: Path) -> None:
    other = build_throwaway_pki(tmp_path / "other", [])
    key = load_private_key(other.ioc_command_key)
    chain = load_certs(other.ioc_command_key.with_name("command.chain.pem"))
    data = sign_command(new_command("on", device=GW, now=NOW), key, chain)  # type: ignore[arg-type]
    assert reason(data) == "wrong_signer"


def test_a_signature_without_chain_is_unsigned() -> None:
    key, chain = ioc_signer()
    from cryptography.hazmat.primitives.serialization import Encoding

    body = cbor2.dumps(new_command("on", device=GW, now=NOW).body())
    assert reason(sign1(body, key, chain[0].public_bytes(Encoding.DER))) == "unsigned"


def test_command_for_another_gateway_or_group_is_not_for_us() -> None:
    cmd = new_command("on", device="gw-other", now=NOW)
    with pytest.raises(CommandError) as info:
        verify(signed(cmd), policy(), NOW)
    # Authentic but refused: the id travels with the refusal, for the reported result.
    assert info.value.reason == "not_for_us" and info.value.command is not None and info.value.command.id == cmd.id
    assert reason(signed(new_command("on", group="district-2", now=NOW)), policy(groups=["district-1"])) \
        == "not_for_us"
    got = verify(signed(new_command("on", group="district-1", now=NOW)), policy(groups=["district-1"]), NOW)
    assert got.group == "district-1"


def test_expired_and_not_yet_valid_allow_only_the_skew() -> None:
    cmd = new_command("off", device=GW, now=NOW, ttl=60)
    data = signed(cmd)
    assert reason(data, now=cmd.exp + 31) == "expired"
    verify(data, policy(), cmd.exp + 29)
    assert reason(data, now=cmd.nbf - 31) == "not_yet_valid"
    verify(data, policy(), cmd.nbf - 29)


def test_a_long_lived_command_older_than_the_window_is_refused() -> None:
    cmd = new_command("off", device=GW, now=NOW, ttl=7200)
    with pytest.raises(CommandError, match="too_old"):
        check_time(cmd, NOW + 3601, max_skew=30, window=3600)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_junk_never_escapes_as_anything_but_command_error(junk: bytes) -> None:
    for data in (junk, b"\xd2" + junk):
        with pytest.raises(CommandError):
            verify(data, policy(), NOW)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["on", "off", "dim", "write"]), st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}",
       fullmatch=True), max_size=3), st.integers(1, 86_400))
def test_body_round_trips(cmd: str, points: list[str], ttl: int) -> None:
    c = new_command(cmd, {"level": 5}, device=GW, points=points, now=NOW, ttl=ttl)
    back = parse_body(cbor2.dumps(c.body(), canonical=True))
    assert back == c


# --- arguments: what a verified command may ask of the devices ------------------------------

def devices() -> dict[str, FieldDevice]:
    profiles = builtin_profiles()
    # A bus is needed for a device to be writable at all; plan() never touches it.
    from drivers.modbus.client import ModbusBus
    bus = ModbusBus.tcp("127.0.0.1", 1, timeout=1)
    return {"light-1": FieldDevice("light-1", profiles["streetlight"], 1, bus),
            "light-2": FieldDevice("light-2", profiles["streetlight"], 2, bus),
            "meter-1": FieldDevice("meter-1", profiles["water-meter"], 3, bus)}


def cmd_of(name: str, args: dict[str, Any], points: tuple[str, ...] = ()) -> Command:
    return Command(id=os.urandom(16), cmd=name, nbf=NOW, exp=NOW + 60, device=GW, points=points, args=args)


def plan_reason(cmd: Command) -> str:
    with pytest.raises(CommandError) as info:
        plan(cmd, devices())
    return info.value.reason


def test_dim_plans_one_write_per_streetlight() -> None:
    writes = plan(cmd_of("dim", {"level": 40}), devices())
    assert [(w.device, w.point.name, w.value) for w in writes] == [("light-1", "dim_level", 40),
                                                                   ("light-2", "dim_level", 40)]
    assert [(w.device, w.value) for w in plan(cmd_of("off", {}, ("light-2",)), devices())] == [("light-2", False)]


@pytest.mark.parametrize("level", [150, -1, 100.6])
def test_dim_out_of_range_is_rejected(level: float) -> None:
    assert plan_reason(cmd_of("dim", {"level": level})) == "out_of_range"


def test_bad_arguments_and_devices() -> None:
    assert plan_reason(cmd_of("dim", {"level": "40"})) == "bad_args"
    assert plan_reason(cmd_of("dim", {"level": True})) == "bad_args"
    assert plan_reason(cmd_of("dim", {"level": 40}, ("light-9",))) == "unknown_device"
    assert plan_reason(cmd_of("dim", {"level": 40}, ("meter-1",))) == "unsupported"
    assert plan_reason(cmd_of("reboot-the-world", {})) == "unknown_command"


def test_write_to_a_read_only_point_is_rejected() -> None:
    assert plan_reason(cmd_of("write", {"point": "active_power", "value": 5}, ("light-1",))) == "read_only"
    assert plan_reason(cmd_of("write", {"point": "lamp_fault", "value": True}, ("light-1",))) == "read_only"
    writes = plan(cmd_of("write", {"point": "dim_level", "value": 70}, ("light-1",)), devices())
    assert [(w.point.name, w.value) for w in writes] == [("dim_level", 70)]


def test_write_of_a_value_the_register_cannot_hold_is_out_of_range() -> None:
    assert plan_reason(cmd_of("write", {"point": "dim_level", "value": 70000}, ("light-1",))) == "out_of_range"
    assert plan_reason(cmd_of("write", {"point": "lamp_on", "value": 5}, ("light-1",))) == "out_of_range"
