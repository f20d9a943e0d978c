"""Scaled integer registers leave the node as exact decimals (firmware/ue/sensors.py, exact=True):
the ESP32's float is binary32, which would turn a water meter's 12345.678 m3 into 12345.677734375.
Checked under the real MicroPython against the gateway's float64 decoding of the same registers:
same value, to the last digit, for every integer point of every profile the node knows."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

from drivers.modbus.registermap import decode_point
from drivers.profiles import builtin_profiles
from tests.support.micropython import run_mp

SCRIPT = r"""
import sys, json
from binascii import unhexlify
from ue import sensors, cbor
from ue.profiles_table import PROFILES

out = []
with open(sys.argv[1]) as f:
    for line in f:
        prof, name, data = json.loads(line)
        for block in PROFILES[prof][2]:
            for p in block[4]:
                if p[0] == name:
                    v = sensors.decode_point(p, bytes(2 * p[2]) + unhexlify(data), block[0] <= 2, True)
                    n = sensors.as_number(v)
                    if isinstance(v, cbor.Dec):
                        out.append(["dec", v.mantissa, v.exp, repr(n)])
                    else:
                        out.append([type(v).__name__, repr(v), repr(n)])
print(json.dumps(out))
"""


def test_integer_points_are_exact_decimals_equal_to_the_gateways_values(tmp_path: Path) -> None:
    rng = random.Random(7)
    profiles = builtin_profiles()
    cases: list[tuple[str, str, bytes, float]] = []
    for pname in ("flood-sensor", "water-meter"):
        prof = profiles[pname]
        for point in prof.points:
            if point.type in ("bool", "float32") or point.table in ("coil", "discrete"):
                continue
            for _ in range(6):
                words = 2 if point.type in ("int32", "uint32") else 1
                data = bytes(rng.randrange(256) for _ in range(2 * words))
                gw = decode_point(point, [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)])
                assert isinstance(gw, int | float)
                cases.append((pname, point.name, data, float(gw)))
    assert len(cases) > 30
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps([p, n, d.hex()]) + "\n" for p, n, d, _ in cases))
    got = json.loads(run_mp(SCRIPT, args=[str(path)]))
    assert len(got) == len(cases)
    decimals = 0
    for (pname, name, data, gw), node in zip(cases, got, strict=True):
        if node[0] == "dec":
            decimals += 1
            exact = Decimal(node[1]).scaleb(node[2])
            assert exact == Decimal(repr(float(gw))), (pname, name, data.hex(), node, gw)
        else:
            assert Decimal(node[1]) == Decimal(repr(gw)) or float(node[1]) == gw, (pname, name, node, gw)
    assert decimals > 10  # the scaled points really went the exact way
