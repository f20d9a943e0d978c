"""Regenerate docs/test-vectors/: a sealed batch and a certificate announcement, with the
throw-away PKI that opens them. TEST KEYS ONLY — they are published on purpose.

    .venv/bin/python scripts/make_test_vectors.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from agent.buffer.records import StoredRecord, alarm, telemetry
from agent.config import Seal
from agent.seal.credentials import load_credentials
from agent.seal.encode import BatchSealer
from pki.throwaway import build_throwaway_pki

OUT = Path(__file__).resolve().parent.parent / "docs" / "test-vectors"
GATEWAY = "gw-vector-1"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pki = build_throwaway_pki(Path(tmp) / "pki", [GATEWAY], province="Vector")
        creds = pki.devices[GATEWAY]
        loaded = load_credentials(Seal(key=creds.key, cert=creds.chain, recipient=pki.ioc_recipient_cert), GATEWAY)
        sealer = BatchSealer(GATEWAY, loaded.sealer, loaded.chain_der)
        now = round(time.time(), 3)
        recs = [
            telemetry("streetlight-1", "streetlight", now - 2, {"lamp_on": True, "dim_level": 80, "voltage": 229.7,
                                                                "current": 0.512, "active_power": 117.6}),
            telemetry("flood-sensor-1", "flood-sensor", now - 1, {"water_level": 39.1, "battery_v": 3.61}),
        ]
        stored = [StoredRecord(100 + i, r.prio, r.device_id, r.ts, r.body) for i, r in enumerate(recs)]
        a = alarm("flood-sensor-1", "flood-sensor", now, "flood_danger", "raised", "critical",
                  "water_level", 182.5, 150)
        if OUT.exists():
            shutil.rmtree(OUT)
        OUT.mkdir(parents=True)
        (OUT / "batch.cose").write_bytes(sealer.encode(stored, sent_ts=now))
        (OUT / "alarm.cose").write_bytes(sealer.encode([StoredRecord(102, a.prio, a.device_id, a.ts, a.body)],
                                                       sent_ts=now))
        (OUT / "cert.cose").write_bytes(sealer.announcement(ts=now))
        for src, name in ((pki.root_cert, "root.pem"), (pki.ioc_recipient_key, "ioc-recipient.key"),
                          (pki.ioc_recipient_cert, "ioc-recipient.pem"), (creds.chain, "gateway-chain.pem"),
                          (pki.crl, "issuing-crl.pem")):
            shutil.copyfile(src, OUT / name)
        expected = {
            "generated": now, "source": GATEWAY,
            "batch.cose": [{"seq": 100 + i, "device_id": r.device_id, "ts": round(r.ts, 3),
                            **json.loads(r.body)} for i, r in enumerate(recs)],
            "alarm.cose": [{"seq": 102, "device_id": a.device_id, **json.loads(a.body)}],
        }
        (OUT / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
