"""What sealing costs: bytes on the wire and CPU per reading, at 1, 12 and 60 readings per message.

A reading is one point value. The readings are realistic streetlight polls: records made
with ``agent.buffer.records.telemetry`` carrying the 12 points of
``config/profiles/streetlight.toml`` with plausible values at the profile's resolution
(voltage 229.7 V, current 0.512 A, power 117.6 W, energy 1234.57 kWh, power factor 0.962,
lux 12, traffic 0-30 per minute, dim 80 %, booleans for the lamp relay and the fault bits), one record per device
poll, devices polled a few ms apart, sequence numbers in the hundreds of millions (a
gateway that has run for a while). A message of N readings holds whole polls and, when N
is not a multiple of 11, a last poll with only its first points (12 = 11 + 1, 60 = 5 x 11 + 5).

For each N, in one run:

* **sealed**: ``BatchSealer.encode`` (CBOR payload, COSE_Sign1 ES256 by the gateway's
  P-256 key from a throw-away PKI, COSE_Encrypt ECDH-ES + HKDF-256 / A128GCM to the IOC)
  as the agent sends it: bytes per reading and CPU per reading (``time.process_time``
  over many repetitions).
* **with x5chain in every message**: the same, but the signer's real chain (gateway
  certificate + issuing CA) sent in every COSE_Sign1 instead of only its ``x5t``: the
  design choice the envelope makes (the chain goes once, in the retained announcement).
* **IOC side**: ``ioc.verify.Opener.open`` (decrypt, check the signer's chain to the root
  and the CRL, verify the signature, decode the payload) CPU per reading.
* **baseline**: the plaintext JSON ThingsBoard IoT Gateway publishes for the same
  readings (its MQTT gateway telemetry format ``{"<device>": [{"ts": <ms>, "values":
  {...}}]}``, unsigned, unencrypted), compact separators, and with ``json.dumps``'
  default ``", "``/``": "`` separators. The reference measured elsewhere is 18.5 payload
  bytes per reading at 12 readings per message.

Targets (issue 3), at 60 readings per message: <= 18 bytes per reading sealed, and
<= 10 us CPU per reading for sealing.

Run: ``.venv/bin/python bench/bench_seal.py [--quick] [--sizes 1,12,60]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, make_pki, print_table

from agent.buffer.records import StoredRecord, telemetry
from agent.config import Seal
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from agent.seal.payload import encode as encode_payload
from drivers.profiles import load_profile
from ioc.verify import Opener
from pki.envelope import encrypt, sign1
from pki.keys import load_cert, load_certs, load_crls, load_private_key
from pki.throwaway import ThrowawayPki

GATEWAY = "gw-bench"
PROFILE = ROOT / "config" / "profiles" / "streetlight.toml"
TB_REFERENCE = 18.5  # bytes per reading, ThingsBoard IoT Gateway, 12 readings per message
TARGET_BYTES = 18.0
TARGET_US = 10.0
T_START = 1795600800.0  # 2026-11-25 10:00 UTC
FIRST_SEQ = 123_456_789


def point_names() -> list[str]:
    return [p.name for p in load_profile(PROFILE).points]


def poll_values(rng: random.Random, names: Sequence[str]) -> dict[str, Any]:
    """One streetlight poll at the resolution the profile's scales give."""
    voltage = round(rng.uniform(226.0, 233.0), 1)
    current = round(rng.uniform(0.480, 0.540), 3)
    pf = round(rng.uniform(0.940, 0.985), 3)
    plausible: dict[str, Any] = {
        "lamp_on": True,
        "dim_level": rng.choice((80, 80, 80, 100, 50)),
        "active_power": round(voltage * current * pf, 1),
        "energy": round(rng.uniform(800.0, 4000.0), 2),
        "voltage": voltage,
        "current": current,
        "power_factor": pf,
        "lamp_fault": False,
        "driver_fault": rng.random() < 0.02,
        "burning_hours": rng.randint(2_000, 30_000),
        "ambient_lux": rng.randint(0, 40),
        "traffic_count": rng.randint(0, 30),
    }
    missing = set(names) - plausible.keys()
    if missing:
        raise RuntimeError(f"streetlight profile has points this bench does not fill: {sorted(missing)}")
    return {n: plausible[n] for n in names}


def make_records(n_readings: int, names: Sequence[str], rng: random.Random, *, first_seq: int = FIRST_SEQ,
                 start: float = T_START) -> list[StoredRecord]:
    """Whole polls of consecutive streetlights, the last one cut to make exactly ``n_readings``."""
    out: list[StoredRecord] = []
    left, dev = n_readings, 0
    while left > 0:
        values = poll_values(rng, names)
        take = min(left, len(values))
        values = dict(list(values.items())[:take])
        ts = round(start + dev * 0.0137 + rng.random() / 100, 3)
        rec = telemetry(f"sl-{dev + 1:04d}", "streetlight", ts, values)
        out.append(StoredRecord(first_seq + dev, rec.prio, rec.device_id, rec.ts, rec.body))
        left -= take
        dev += 1
    return out


def thingsboard_json(records: Sequence[StoredRecord], *, compact: bool) -> bytes:
    """What ThingsBoard IoT Gateway publishes on ``v1/gateway/telemetry`` for these records."""
    doc: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        body = json.loads(r.body)
        doc.setdefault(r.device_id, []).append({"ts": round(r.ts * 1000), "values": body["values"]})
    seps = (",", ":") if compact else (", ", ": ")
    return json.dumps(doc, separators=seps).encode()


def cpu_us(fn: Callable[[], object], min_cpu: float, min_reps: int) -> float:
    """CPU µs per call of ``fn``: process time over at least ``min_reps`` calls and ``min_cpu`` s."""
    for _ in range(max(3, min_reps // 20)):  # warm caches and lazy imports first
        fn()
    reps, t0 = 0, time.process_time()
    while True:
        for _ in range(min_reps):
            fn()
        reps += min_reps
        spent = time.process_time() - t0
        if spent >= min_cpu:
            return spent / reps * 1e6


@dataclass(frozen=True)
class Figures:
    readings: int
    records: int
    payload: int  # CBOR plaintext
    sealed: int  # COSE_Encrypt(COSE_Sign1(payload)) with x5t
    sealed_x5chain: int  # the same with the signer's chain in every message
    tb_compact: int
    tb_spaced: int
    payload_us: float  # CBOR encoding alone, per message
    seal_us: float  # BatchSealer.encode (payload + sign + encrypt), per message
    open_us: float  # Opener.open, per message
    tb_us: float  # ThingsBoard JSON encoding, per message


@dataclass(frozen=True)
class Setup:
    sealer: BatchSealer
    opener: Opener
    chain_der: tuple[bytes, ...]


def setup(pki: ThrowawayPki) -> Setup:
    creds = pki.devices[GATEWAY]
    loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=pki.ioc_recipient_cert), GATEWAY)
    sealer = BatchSealer(GATEWAY, loaded.sealer, loaded.chain_der)
    key = load_private_key(pki.ioc_recipient_key)
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError("the throw-away IOC recipient key is not P-256")
    opener = Opener(key, load_cert(pki.ioc_recipient_cert), load_cert(pki.root_cert), crls=load_crls(pki.crl))
    opener.learn_chain(load_certs(creds.chain))
    return Setup(sealer, opener, loaded.chain_der)


def measure(s: Setup, n: int, names: Sequence[str], min_cpu: float) -> Figures:
    records = make_records(n, names, random.Random(n))
    sent = records[-1].ts + 0.25
    payload = encode_payload(GATEWAY, records, sent_ts=sent)
    sealed = s.sealer.encode(records, sent_ts=sent)
    core = s.sealer.sealer
    with_chain = encrypt(sign1(payload, core.signing_key, core.cert_der, chain=s.chain_der), core.recipient,
                         core.recipient_kid)
    batch = s.opener.open(sealed)
    got = sum(len(r["values"]) for r in batch.records)
    if got != n:
        raise RuntimeError(f"opened {got} readings, sealed {n}")
    reps = max(20, 2000 // n)
    return Figures(
        readings=n, records=len(records), payload=len(payload), sealed=len(sealed),
        sealed_x5chain=len(with_chain),
        tb_compact=len(thingsboard_json(records, compact=True)),
        tb_spaced=len(thingsboard_json(records, compact=False)),
        payload_us=cpu_us(lambda: encode_payload(GATEWAY, records, sent_ts=sent), min_cpu / 2, reps),
        seal_us=cpu_us(lambda: s.sealer.encode(records, sent_ts=sent), min_cpu, reps),
        open_us=cpu_us(lambda: s.opener.open(sealed), min_cpu, reps),
        tb_us=cpu_us(lambda: thingsboard_json(records, compact=True), min_cpu / 2, reps),
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(figs: list[Figures], chain_bytes: int) -> None:
    print_table(
        "Bytes on the wire per reading (MQTT payload; topic and MQTT header not counted)",
        ["readings/msg", "records/msg", "CBOR payload B", "sealed B", "sealed B/reading",
         "x5chain in every msg B/reading", "ThingsBoard JSON B/reading (compact / default seps)"],
        [[f.readings, f.records, f.payload, f.sealed, f"{f.sealed / f.readings:.1f}",
          f"{f.sealed_x5chain / f.readings:.1f}",
          f"{f.tb_compact / f.readings:.1f} / {f.tb_spaced / f.readings:.1f}"] for f in figs],
    )
    print_table(
        "CPU per reading (time.process_time, one core)",
        ["readings/msg", "seal us/reading", "seal us/message", "of which CBOR payload us/msg",
         "IOC open+verify+decode us/reading", "IOC us/message", "ThingsBoard JSON us/reading"],
        [[f.readings, f"{f.seal_us / f.readings:.2f}", f"{f.seal_us:.0f}", f"{f.payload_us:.0f}",
          f"{f.open_us / f.readings:.2f}", f"{f.open_us:.0f}", f"{f.tb_us / f.readings:.2f}"] for f in figs],
    )
    overheads = sorted({f.sealed - f.payload for f in figs})
    print_table(
        "Envelope overhead (sealed message minus its CBOR payload)",
        ["figure", "bytes"],
        [["COSE_Sign1 (x5t) + COSE_Encrypt (ECDH-ES ephemeral key, kid, IV, GCM tag), per message",
          " / ".join(str(o) for o in overheads)],
         ["signer's x5chain (gateway + issuing CA certificates, DER) if sent in every message",
          f"+{chain_bytes}"]],
    )
    print(f"\nbaseline reference (ThingsBoard IoT Gateway, measured elsewhere): {TB_REFERENCE} B/reading "
          "at 12 readings/message, plaintext, unsigned")
    at60 = [f for f in figs if f.readings == 60]
    if at60:
        f = at60[0]
        per_b, per_us = f.sealed / f.readings, f.seal_us / f.readings
        print(f"target at 60 readings/message <= {TARGET_BYTES:.0f} B/reading: {per_b:.1f} "
              f"({verdict(per_b <= TARGET_BYTES)})")
        print(f"target at 60 readings/message <= {TARGET_US:.0f} us CPU/reading (sealing): {per_us:.2f} "
              f"({verdict(per_us <= TARGET_US)})")
    at12 = [f for f in figs if f.readings == 12]
    if at12:
        f = at12[0]
        print(f"at 12 readings/message: sealed {f.sealed / 12:.1f} B/reading vs ThingsBoard plaintext "
              f"{f.tb_compact / 12:.1f} (compact) / {f.tb_spaced / 12:.1f} (default separators) in this run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter CPU sampling (< 10 s)")
    parser.add_argument("--sizes", default="1,12,60", help="readings per message, comma-separated")
    parser.add_argument("--min-cpu", type=float, default=2.0, help="CPU seconds sampled per figure")
    args = parser.parse_args()
    min_cpu = 0.2 if args.quick else args.min_cpu
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    names = point_names()
    with tempfile.TemporaryDirectory(prefix="bench-seal-") as tmp:
        s = setup(make_pki(Path(tmp), [GATEWAY]))
        figs = [measure(s, n, names, min_cpu) for n in sizes]
    report(figs, sum(len(c) for c in s.chain_der))
    return 0


if __name__ == "__main__":
    sys.exit(main())
