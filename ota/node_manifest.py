"""Per-node release manifests: what an ESP32 node is told to install, signed for it alone.

Wire format (the node's ``ue/ota.py`` checks exactly this):

- a COSE_Sign1 (CBOR tag 18), ES256 over P-256: protected header ``{1: -7}``, unprotected
  ``{4: kid}`` with ``kid = sha256(SEC1 uncompressed public key)[:8]``, signature ``r || s``;
- payload, a CBOR map with text keys::

      {"v": 1, "node": "<node_id>", "hw": "esp32", "version": "1.2.0", "counter": 7,
       "issued": <unix s>, "expires": <unix s>, "base": "node/esp32/1.2.0/",
       "files": [["ue/node.py", <length>, <sha256 bytes>], ...]}

  ``files`` lists every app file of the release (the whole app, never a delta); each is served
  at ``<repository url><base><path>``.

Checks, in this order, each failure naming its reason (the node uses the same words in its
``ota_status`` "rejected" events): ``format``, ``key`` (no trusted key with that kid),
``signature``, ``node``, ``hw``, ``expired``, ``rollback`` (counter below the committed one),
``files`` (a path outside ``ue/``, a ``..``, too many or too large files).

Pure logic: no file or network access (the CLI in ``ota/node_cli.py`` does that).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

FORMAT_VERSION = 1
COSE_SIGN1_TAG = 18
ALG_ES256 = -7
MAX_FILES = 64
MAX_FILE_SIZE = 128 * 1024
MAX_TOTAL_SIZE = 512 * 1024
MAX_MANIFEST_SIZE = 8192
# One level under ue/, module names only: the node creates no directories and no path can
# leave the slot.
_PATH = re.compile(r"^ue/[A-Za-z0-9_]{1,40}\.(py|mpy)$")
REQUIRED_FILE = "ue/app.py"


class ManifestError(ValueError):
    """A manifest that cannot be built (bad arguments) or a key file that cannot be used."""


class ManifestRejected(ValueError):
    """A manifest the node would refuse: ``reason`` is one word from the module docstring."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NodeManifest:
    node: str
    hw: str
    version: str
    counter: int
    issued: int
    expires: int
    base: str
    files: tuple[tuple[str, int, bytes], ...]

    def to_cbor_map(self) -> dict[str, object]:
        return {"v": FORMAT_VERSION, "node": self.node, "hw": self.hw, "version": self.version,
                "counter": self.counter, "issued": self.issued, "expires": self.expires,
                "base": self.base, "files": [[p, n, h] for p, n, h in self.files]}


def key_id(public_sec1: bytes) -> bytes:
    """The COSE kid naming a node-release key: first 8 bytes of SHA-256 of its SEC1 point."""
    return hashlib.sha256(public_sec1).digest()[:8]


def public_sec1(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def public_key_hex(key: ec.EllipticCurvePrivateKey) -> str:
    """What goes in node.json ``ota.keys``: hex of the uncompressed SEC1 public key (65 bytes)."""
    return public_sec1(key.public_key()).hex()


def load_private_key(pem: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ManifestError(f"{source}: not an unencrypted PKCS#8 PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ManifestError(f"{source}: the node-release key must be ECDSA P-256")
    return key


def check_files(files: Sequence[tuple[str, int, bytes]]) -> None:
    """Raise ManifestRejected("files", ...) unless the list is a sane whole app."""
    if not files:
        raise ManifestRejected("files", "no files")
    if len(files) > MAX_FILES:
        raise ManifestRejected("files", f"{len(files)} files, at most {MAX_FILES}")
    seen: set[str] = set()
    total = 0
    for path, length, digest in files:
        if not _PATH.match(path) or ".." in path:
            raise ManifestRejected("files", f"path {path!r} is not ue/<module>.py")
        if path in seen:
            raise ManifestRejected("files", f"path {path!r} appears twice")
        seen.add(path)
        if not 0 <= length <= MAX_FILE_SIZE:
            raise ManifestRejected("files", f"{path}: length {length} outside 0..{MAX_FILE_SIZE}")
        if len(digest) != 32:
            raise ManifestRejected("files", f"{path}: sha256 must be 32 bytes")
        total += length
    if total > MAX_TOTAL_SIZE:
        raise ManifestRejected("files", f"{total} bytes in all, at most {MAX_TOTAL_SIZE}")
    if REQUIRED_FILE not in seen:
        raise ManifestRejected("files", f"{REQUIRED_FILE} (the app's entry point) is missing")


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    return bytes(cbor2.dumps(["Signature1", protected, b"", payload]))


def sign_manifest(manifest: NodeManifest, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The COSE_Sign1 bytes the node downloads from ``nodes/<node>.manifest``."""
    try:
        check_files(manifest.files)
    except ManifestRejected as e:
        raise ManifestError(str(e)) from e
    if manifest.counter < 0 or manifest.expires <= manifest.issued:
        raise ManifestError("counter must be >= 0 and expires after issued")
    payload = bytes(cbor2.dumps(manifest.to_cbor_map()))
    protected = bytes(cbor2.dumps({1: ALG_ES256}))
    der = key.sign(_sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    kid = key_id(public_sec1(key.public_key()))
    out = bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {4: kid}, payload, sig])))
    if len(out) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is {len(out)} bytes, the node takes at most {MAX_MANIFEST_SIZE}")
    return out


def _str(m: dict[object, object], name: str) -> str:
    v = m.get(name)
    if not isinstance(v, str):
        raise ManifestRejected("format", f"field {name!r}: expected text")
    return v


def _int(m: dict[object, object], name: str) -> int:
    v = m.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ManifestRejected("format", f"field {name!r}: expected an integer")
    return v


def verify_manifest(data: bytes, keys: Sequence[bytes], *, node: str, hw: str, now: int,
                    committed_counter: int) -> NodeManifest:
    """Parse and check a manifest as the node does; ManifestRejected names the reason.

    A counter equal to ``committed_counter`` passes (the caller calls that "already installed").
    """
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestRejected("format", f"{len(data)} bytes, at most {MAX_MANIFEST_SIZE}")
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise ManifestRejected("format", f"not CBOR: {e}") from e
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise ManifestRejected("format", f"CBOR tag {obj.tag}, expected {COSE_SIGN1_TAG}")
        obj = obj.value
    if not (isinstance(obj, list) and len(obj) == 4 and isinstance(obj[0], bytes) and isinstance(obj[1], dict)
            and isinstance(obj[2], bytes) and isinstance(obj[3], bytes)):
        raise ManifestRejected("format", "not a COSE_Sign1 [protected, unprotected, payload, signature]")
    protected, unprotected, payload, sig = obj
    try:
        prot = cbor2.loads(protected)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise ManifestRejected("format", f"protected header: {e}") from e
    if prot != {1: ALG_ES256}:
        raise ManifestRejected("format", "protected header must be {1: -7} (ES256)")
    kid = unprotected.get(4)
    by_kid = {key_id(k): k for k in keys}
    if not isinstance(kid, bytes) or kid not in by_kid:
        raise ManifestRejected("key", "signed by a key this node does not trust")
    if len(sig) != 64:
        raise ManifestRejected("signature", "ES256 signature must be 64 bytes")
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), by_kid[kid])
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        pub.verify(der, _sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise ManifestRejected("signature", "does not verify") from e
    try:
        m = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise ManifestRejected("format", f"payload: {e}") from e
    if not isinstance(m, dict) or m.get("v") != FORMAT_VERSION:
        raise ManifestRejected("format", f"payload must be a map with v = {FORMAT_VERSION}")
    raw_files = m.get("files")
    if not isinstance(raw_files, list):
        raise ManifestRejected("format", "field 'files': expected a list")
    files: list[tuple[str, int, bytes]] = []
    for f in raw_files:
        if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and isinstance(f[1], int)
                and isinstance(f[2], bytes)):
            raise ManifestRejected("format", "files: each entry is [path, length, sha256]")
        files.append((f[0], f[1], f[2]))
    man = NodeManifest(node=_str(m, "node"), hw=_str(m, "hw"), version=_str(m, "version"),
                       counter=_int(m, "counter"), issued=_int(m, "issued"), expires=_int(m, "expires"),
                       base=_str(m, "base"), files=tuple(files))
    if man.node != node:
        raise ManifestRejected("node", f"for node {man.node!r}, this is {node!r}")
    if man.hw != hw:
        raise ManifestRejected("hw", f"for hardware {man.hw!r}, this is {hw!r}")
    if now >= man.expires:
        raise ManifestRejected("expired", f"expired at {man.expires}, now {now}")
    if man.counter < committed_counter:
        raise ManifestRejected("rollback", f"counter {man.counter} below the committed {committed_counter}")
    check_files(man.files)
    if ".." in man.base or man.base.startswith("/") or not man.base.endswith("/"):
        raise ManifestRejected("files", f"base {man.base!r} must be a relative folder path")
    return man
