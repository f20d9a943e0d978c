"""The node's security events under the real MicroPython unix port (ue/node.py): which failed
connects are security events (the gateway's reasons, looked at from the uplink loop), the
once-an-hour limit, and the split of
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


class Client:
    connect_failures = 0
    last_error = None


class Fake:
    # What Node._check_connect_failures uses of the node: its client, the count it has seen,
    # security() (here through the real rate limit), log.
    def __init__(self):
        self.client = Client()
        self._seen_failures = 0
        self._security_limit = node.RateLimit(3600000)
        self.events = []
        self.logs = []

    def _event(self, body):
        self.events.append(body)

    def log(self, line):
        self.logs.append(line)


f = Fake()
f.security = lambda *a: node.Node.security(f, *a)
check = node.Node._check_connect_failures
check(f)  # no failure yet
f.client.connect_failures, f.client.last_error = 1, "connect refused: ECONNREFUSED"
check(f)
f.client.connect_failures, f.client.last_error = 2, "TLS handshake: broker certificate rejected: X509 verify"
check(f)
check(f)  # nothing new
f.client.connect_failures = 5  # three more of the same within the hour
check(f)
out["events"] = [[e["category"], e["reason"], e["detail"]] for e in f.events]
print(json.dumps(out))
"""


def test_security_reasons_rate_limit_and_channel_runs() -> None:
    out = json.loads(run_mp(SCRIPT, heap="1m").strip().splitlines()[-1])
    assert out["tls"] == ["broker_certificate_rejected", "tls_handshake_failed", None, None]
    assert out["limit"] == [True, False, True, True]
    assert out["runs"] == [["event", [1]], ["security", [2, 3]], ["event", [4]], ["security", [5]]]
    # A failed connect is looked at once; only a TLS refusal is an event, once within the hour.
    assert out["events"] == [["certificate", "broker_certificate_rejected",
                              "TLS handshake: broker certificate rejected: X509 verify"]]
