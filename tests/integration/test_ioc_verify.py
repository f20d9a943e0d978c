"""The IOC opens sealed batches with only its key and the provincial root: every bad input
of issue 3 is rejected with its reason, good ones are stored once, and nothing escapes."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.buffer.records import StoredRecord, alarm, telemetry
from agent.config import Seal
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from ioc.output import JsonLinesWriter
from ioc.pipeline import Pipeline
from ioc.store import SqliteReadingStore
from ioc.verify import Opener, Rejected
from pki import envelope as E
from pki.keys import load_cert, load_certs, load_crls, load_private_key
from pki.throwaway import ThrowawayPki, build_throwaway_pki

GW = "gw-a"


@dataclass
class World:
    pki: ThrowawayPki
    sealer: BatchSealer

    def opener(self, **kw: object) -> Opener:
        key = load_private_key(self.pki.ioc_recipient_key)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return Opener(key, load_cert(self.pki.ioc_recipient_cert), load_cert(self.pki.root_cert),
                      crls=load_crls(self.pki.crl), **kw)  # type: ignore[arg-type]


def _sealer(pki: ThrowawayPki, device: str, recipient: Path | None = None) -> BatchSealer:
    creds = pki.devices[device]
    loaded = load_credentials(Seal(key=creds.key, cert=creds.chain,
                                   recipient=recipient or pki.ioc_recipient_cert), device)
    return BatchSealer(device, loaded.sealer, loaded.chain_der)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    pki = build_throwaway_pki(tmp_path_factory.mktemp("pki") / "pki", [GW, "gw-b"])
    yield World(pki, _sealer(pki, GW))


def records(first: int, n: int = 3, device: str = "sl-1") -> list[StoredRecord]:
    out = []
    for i in range(n):
        r = telemetry(device, "streetlight", 1_764_000_000.0 + i, {"lamp_on": True, "voltage": 229.7 + i})
        out.append(StoredRecord(first + i, r.prio, r.device_id, r.ts, r.body))
    return out


def test_good_batch_opens_with_only_the_root(world: World) -> None:
    opener = world.opener()
    opener.learn_announcement(world.sealer.announcement(ts=1.0))
    batch = opener.open(world.sealer.encode(records(1), sent_ts=2.0))
    assert batch.source == GW and batch.signer.device_id == GW
    assert [r["seq"] for r in batch.records] == [1, 2, 3]
    assert float(batch.records[0]["values"]["voltage"]) == 229.7


def _reason(opener: Opener, msg: bytes) -> str:
    with pytest.raises(Rejected) as info:
        opener.open(msg)
    return info.value.reason


def test_unannounced_signer_is_unknown_until_its_chain_is_learnt(world: World) -> None:
    opener = world.opener()
    msg = world.sealer.encode(records(1), sent_ts=2.0)
    assert _reason(opener, msg) == "unknown_certificate"
    opener.learn_chain(load_certs(world.pki.devices[GW].chain))
    assert opener.open(msg).source == GW


def test_certificate_from_an_unknown_issuer(world: World, tmp_path: Path) -> None:
    rogue = build_throwaway_pki(tmp_path / "rogue", [GW])  # same gateway id, another root
    opener = world.opener()
    with pytest.raises(Rejected) as info:
        opener.learn_announcement(_sealer(rogue, GW, world.pki.ioc_recipient_cert).announcement(ts=1.0))
    assert info.value.reason == "unknown_issuer"
    forged = _sealer(rogue, GW, world.pki.ioc_recipient_cert).encode(records(1), sent_ts=2.0)
    assert _reason(opener, forged) == "unknown_certificate"


def test_revoked_certificate(tmp_path: Path) -> None:
    pki = build_throwaway_pki(tmp_path / "pki", ["gw-r"])
    w = World(pki, _sealer(pki, "gw-r"))
    opener = w.opener()
    opener.learn_announcement(w.sealer.announcement(ts=1.0))
    msg = w.sealer.encode(records(1), sent_ts=2.0)
    assert opener.open(msg).source == "gw-r"
    pki.revoke("gw-r")
    opener.set_crls(load_crls(pki.crl))
    assert _reason(opener, msg) == "revoked"  # also for a signer learnt before the revocation


def test_expired_certificate(world: World) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    world.pki.issue_device("gw-old", days=1, not_before=past)
    sealer = _sealer(world.pki, "gw-old")
    with pytest.raises(Rejected) as info:
        world.opener().learn_announcement(sealer.announcement(ts=1.0))
    assert info.value.reason == "expired"


def test_expiry_is_checked_per_message_not_only_when_learnt(world: World) -> None:
    now = [dt.datetime.now(dt.UTC).timestamp()]
    opener = world.opener(clock=lambda: now[0])
    opener.learn_announcement(world.sealer.announcement(ts=1.0))
    msg = world.sealer.encode(records(1), sent_ts=2.0)
    opener.open(msg)
    now[0] += 3 * 365 * 86400  # gateway certificates live 2 years
    assert _reason(opener, msg) == "expired"


def test_source_must_match_the_certificate(world: World) -> None:
    creds = world.pki.devices["gw-b"]
    loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=world.pki.ioc_recipient_cert), "gw-b")
    liar = BatchSealer(GW, loaded.sealer, loaded.chain_der)  # gw-b's key, claiming to be gw-a
    opener = world.opener()
    opener.learn_chain(load_certs(creds.chain))
    assert _reason(opener, liar.encode(records(1), sent_ts=2.0)) == "source_mismatch"


def test_message_for_another_recipient(world: World, tmp_path: Path) -> None:
    other = build_throwaway_pki(tmp_path / "other-ioc", [])
    sealer = _sealer(world.pki, GW, other.ioc_recipient_cert)
    opener = world.opener()
    opener.learn_chain(load_certs(world.pki.devices[GW].chain))
    assert _reason(opener, sealer.encode(records(1), sent_ts=2.0)) == "not_for_us"


def test_tampered_truncated_oversized_and_random(world: World) -> None:
    opener = world.opener(max_bytes=4096)
    opener.learn_chain(load_certs(world.pki.devices[GW].chain))
    good = world.sealer.encode(records(1), sent_ts=2.0)
    obj = cbor2.loads(good)
    obj.value[2] = bytes([obj.value[2][0] ^ 1]) + obj.value[2][1:]
    assert _reason(opener, cbor2.dumps(obj)) == "bad_ciphertext"
    assert _reason(opener, good[: len(good) // 2]) == "malformed"
    assert _reason(opener, good + b"\x00" * 5000) == "too_large"
    assert _reason(opener, b"\x17" * 64) == "malformed"
    # A signature over other bytes, re-encrypted so that only the signature is wrong.
    inner = cbor2.loads(E.decrypt(good, load_private_key(world.pki.ioc_recipient_key),  # type: ignore[arg-type]
                                  world.sealer.sealer.recipient_kid))
    inner.value[3] = bytes(64)
    resealed = E.encrypt(cbor2.dumps(inner), world.sealer.sealer.recipient, world.sealer.sealer.recipient_kid)
    assert _reason(opener, resealed) == "bad_signature"


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_opener_raises_only_rejected(world: World, data: bytes) -> None:
    opener = world.opener()
    for fn in (opener.open, opener.learn_announcement):
        with contextlib.suppress(Rejected):
            fn(data)


def _pipeline(world: World, tmp_path: Path) -> tuple[Pipeline, io.StringIO]:
    out = io.StringIO()
    return Pipeline(world.opener(), SqliteReadingStore(tmp_path / "ioc.db"), JsonLinesWriter(out)), out


def test_replay_and_out_of_order_batches(world: World, tmp_path: Path) -> None:
    pipe, out = _pipeline(world, tmp_path)
    assert pipe.handle("cert", world.sealer.announcement(ts=1.0)).status == "accepted"
    first, middle, last = (world.sealer.encode(records(n), sent_ts=2.0) for n in (1, 4, 7))
    assert pipe.handle("telemetry", first).new == 3
    assert pipe.handle("telemetry", last).new == 3  # 7..9 before 4..6: a gap opens
    assert pipe.handle("telemetry", middle).new == 3  # out of order is legal, the gap closes
    replay = pipe.handle("telemetry", first)
    assert (replay.status, replay.reason, replay.duplicates) == ("rejected", "replay", 3)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert sorted(x["seq"] for x in lines) == list(range(1, 10))  # each once
    assert all(x["verified"]["signer"] == GW for x in lines)
    assert pipe.stats.rejected["replay"] == 1 and pipe.stats.gaps == 1


def test_batch_before_its_announcement_is_parked_then_accepted(world: World, tmp_path: Path) -> None:
    pipe, out = _pipeline(world, tmp_path)
    acked: list[str] = []
    first = pipe.handle("alarm", world.sealer.encode(records(1), sent_ts=2.0), on_done=lambda: acked.append("x"))
    assert first.status == "parked" and acked == []  # not acknowledged while parked
    pipe.handle("cert", world.sealer.announcement(ts=1.0), on_done=lambda: acked.append("cert"))
    assert acked == ["x", "cert"] and len(out.getvalue().splitlines()) == 3


def test_parked_batch_without_announcement_is_rejected_in_the_end(world: World, tmp_path: Path) -> None:
    pipe, _ = _pipeline(world, tmp_path)
    pipe.handle("telemetry", world.sealer.encode(records(1), sent_ts=2.0))
    pipe.flush_parked()
    assert pipe.stats.rejected["unknown_certificate"] == 1


def test_alarm_records_survive_the_round_trip(world: World, tmp_path: Path) -> None:
    pipe, out = _pipeline(world, tmp_path)
    pipe.handle("cert", world.sealer.announcement(ts=1.0))
    a = alarm("fl-1", "flood-sensor", 1_764_000_000.5, "flood_danger", "raised", "critical", "water_level", 182.5, 150)
    pipe.handle("alarm", world.sealer.encode([StoredRecord(9, a.prio, a.device_id, a.ts, a.body)], sent_ts=2.0))
    rec = json.loads(out.getvalue())
    assert rec["type"] == "alarm" and rec["alarm"] == "flood_danger" and rec["value"] == 182.5
