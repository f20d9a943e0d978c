"""The node's manifest check (ue/ota.py ``verify_manifest``) under the real MicroPython unix
port, against manifests made by the release tool (ota/node_manifest.py): the same verdict, the
same reason, for a good manifest and for every kind of bad one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ota.node_manifest import ManifestRejected, NodeManifest, public_sec1, sign_manifest, verify_manifest
from tests.firmware.ota_http import sign_raw
from tests.support.micropython import run_mp

NOW = 1_800_000_000
# As in test_node_e2e_mp.py: 100 KB for the data, plus the heap the code occupies on the unix
# port (on the ESP32 it runs from flash), measured.
RUNTIME_HEAP = 100 * 1024
FOOTPRINT = "import gc\ngc.collect()\nb = gc.mem_alloc()\nfrom ue import ota\ngc.collect()\nprint(gc.mem_alloc() - b)\n"
COMMITTED = 5

VERIFY_SCRIPT = f"""
NOW, COMMITTED = {NOW}, {COMMITTED}
import gc, sys, os
from ue import ota
import binascii
with open(sys.argv[2]) as f:  # (the unix port dies on an argv string over 255 characters)
    keys = [binascii.unhexlify(k) for k in f.read().split()]
folder = sys.argv[1]
for name in sorted(os.listdir(folder)):
    with open(folder + "/" + name, "rb") as f:
        data = f.read()
    try:
        m = ota.verify_manifest(data, keys, "n1", "esp32", NOW, COMMITTED)
        print(name, "ok", m["version"], m["counter"], len(m["files"]))
    except ota.Rejected as e:
        print(name, "rejected", e.reason)
    data = m = None
    gc.collect()
"""


def _manifest(**over: object) -> NodeManifest:
    base: dict[str, object] = {
        "node": "n1", "hw": "esp32", "version": "1.2.0", "counter": 7, "issued": NOW - 10, "expires": NOW + 60,
        "base": "node/esp32/1.2.0/",
        "files": (*((f"ue/m{i}.py", 100 + i, hashlib.sha256(bytes([i])).digest()) for i in range(20)),
                  ("ue/app.py", 5, hashlib.sha256(b"app").digest())),
    }
    base.update(over)
    return NodeManifest(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes], dict[str, bytes]]:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    good = sign_manifest(_manifest(), key)
    forged = bytearray(good)
    forged[-3] ^= 0x40
    traversal = _manifest().to_cbor_map()
    traversal["files"] = [["ue/app.py", 5, bytes(32)], ["ue/../../main.py", 5, bytes(32)]]
    absolute = _manifest().to_cbor_map()
    absolute["base"] = "/etc/"
    too_many = _manifest().to_cbor_map()
    too_many["files"] = [["ue/app.py", 1, bytes(32)]] + [[f"ue/x{i}.py", 1, bytes(32)] for i in range(64)]
    huge = _manifest().to_cbor_map()
    huge["files"] = [["ue/app.py", 1 << 20, bytes(32)]]
    cases = {
        "good": good,
        "equal_counter": sign_manifest(_manifest(counter=COMMITTED), key),
        "forged_signature": bytes(forged),
        "wrong_key": sign_manifest(_manifest(), other),
        "other_node": sign_manifest(_manifest(node="n2"), key),
        "other_hw": sign_manifest(_manifest(hw="esp32c3"), key),
        "expired": sign_manifest(_manifest(expires=NOW - 1), key),
        "older_counter": sign_manifest(_manifest(counter=COMMITTED - 1), key),
        "path_traversal": sign_raw(traversal, key),
        "absolute_base": sign_raw(absolute, key),
        "too_many_files": sign_raw(too_many, key),
        "huge_file": sign_raw(huge, key),
        "not_cbor": b"\x9f\x01\x02",
        "es384_header": sign_raw(_manifest().to_cbor_map(), key, protected={1: -35}),
    }
    folder = tmp_path_factory.mktemp("manifests")
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    # the node holds two keys (a rotation): either may sign
    return folder, [public_sec1(ec.generate_private_key(ec.SECP256R1()).public_key()),
                    public_sec1(key.public_key())], cases


def _heap() -> str:
    code = int(run_mp(FOOTPRINT, heap="1m").strip())
    return f"{(RUNTIME_HEAP + code + 1023) // 1024}k"


def _python_verdict(data: bytes, keys: list[bytes]) -> str:
    try:
        m = verify_manifest(data, keys, node="n1", hw="esp32", now=NOW, committed_counter=COMMITTED)
    except ManifestRejected as e:
        return f"rejected {e.reason}"
    return f"ok {m.version} {m.counter} {len(m.files)}"


def test_node_and_release_tool_agree_on_every_manifest(cases: tuple[Path, list[bytes], dict[str, bytes]]) -> None:
    folder, keys, manifests = cases
    key_file = folder.parent / (folder.name + ".keys")
    key_file.write_text("\n".join(k.hex() for k in keys))
    out = run_mp(VERIFY_SCRIPT, args=[str(folder), str(key_file)], heap=_heap(), timeout=120)
    node = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert set(node) == set(manifests)
    for name, data in manifests.items():
        assert node[name] == _python_verdict(data, keys), name
    assert node["good"] == "ok 1.2.0 7 21"
    assert node["equal_counter"] == f"ok 1.2.0 {COMMITTED} 21"
    expected = {"forged_signature": "signature", "wrong_key": "key", "other_node": "node", "other_hw": "hw",
                "expired": "expired", "older_counter": "rollback", "path_traversal": "files",
                "absolute_base": "files", "too_many_files": "files", "huge_file": "files", "not_cbor": "format",
                "es384_header": "format"}
    for name, reason in expected.items():
        assert node[name] == f"rejected {reason}", name
