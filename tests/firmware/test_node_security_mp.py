"""The node's security events under the real MicroPython unix port (ue/node.py): which failed
connects are security events (the gateway's reasons), the once-an-hour limit, and the split of
an EVENT batch so security events go to their own topic in seq order."""

from __future__ import annotations

import json

from tests.support.micropython import run_mp

SCRIPT = """
import json
from ue import node, records

out = {}
out["tls"] = [node.tls_reason(t) for t in (
    "TLS handshake: broker certificate rejected: MBEDTLS_ERR_X509_CERT_VERIFY_FAILED",
    "TLS handshake refused by the broker (client certificate missing, expired or not issued by its CA?): EOF",
    "connect refused: ECONNREFUSED",
    "timeout (CONNACK)")]

lim = node.RateLimit(3600000)
out["limit"] = [lim.allow("a", 0), lim.allow("a", 3599999), lim.allow("b", 10), lim.allow("a", 3600000)]

def rec(seq, body):
    return (seq, 1, records.pack("n1", 1000 + seq, body))

sec = {"event": "security", "category": "update_rejected", "reason": "tampered", "detail": "x"}
ota = {"event": "ota_status", "state": "rejected", "release": "1.2", "counter": 3}
batch = [rec(1, ota), rec(2, sec), rec(3, sec), rec(4, ota), rec(5, sec)]
runs = []
while batch:
    ch, run = node._channel_run(batch)
    runs.append([node._CHANNELS[ch], [r[0] for r in run]])
    batch = batch[len(run):]
out["runs"] = runs
print(json.dumps(out))
"""


def test_security_reasons_rate_limit_and_channel_runs() -> None:
    out = json.loads(run_mp(SCRIPT, heap="1m").strip().splitlines()[-1])
    assert out["tls"] == ["broker_certificate_rejected", "tls_handshake_failed", None, None]
    assert out["limit"] == [True, False, True, True]
    assert out["runs"] == [["event", [1]], ["security", [2, 3]], ["event", [4]], ["security", [5]]]
