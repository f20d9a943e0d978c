# The node's own identity: its P-256 key, made here from os.urandom and never sent anywhere,
# the certificate request that carries only its public half, and the certificate chain the
# province issues for it.
#
# The key is stored as SEC1 DER (RFC 5915 ECPrivateKey): the one format both our code (which
# needs the scalar for COSE signatures) and mbedTLS (load_cert_chain, for the TLS client
# certificate) read, so there is a single copy of the key on flash.
#
# Files, in the identity directory:
#   node.key   SEC1 DER private key (0600 on unix; on the ESP32 littlefs has no permission
#              bits: enable flash encryption so the key cannot be read off the chip)
#   node.csr   PKCS#10 DER request for it (the technician's tool takes this away)
#   node.crt   the node's certificate (DER), installed by provisioning
#   chain.der  issuing CA certificate(s), DER, concatenated (announced with the leaf)
#   ioc.crt    the IOC recipient certificate (DER): whom readings are encrypted to

import hashlib
import os

from ue import p256

_OID_EC_PUBLIC_KEY = b"\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"
_OID_P256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"
_OID_ECDSA_SHA256 = b"\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"
_OID_CN = b"\x06\x03\x55\x04\x03"
_OID_SERIAL = b"\x06\x03\x55\x04\x05"

KEY_FILE = "node.key"
CSR_FILE = "node.csr"
CERT_FILE = "node.crt"
CHAIN_FILE = "chain.der"
IOC_FILE = "ioc.crt"


class IdentityError(Exception):
    pass


# --- DER ------------------------------------------------------------------------------------

def _len(n):
    if n < 0x80:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x81, n))
    return bytes((0x82, n >> 8, n & 0xFF))


def _tlv(tag, body):
    return bytes((tag,)) + _len(len(body)) + body


def _int(value_bytes):
    # A non-negative INTEGER from big-endian bytes: minimal, with a 0 byte if the top bit is set.
    i = 0
    while i < len(value_bytes) - 1 and value_bytes[i] == 0:
        i += 1
    v = value_bytes[i:]
    if v[0] & 0x80:
        v = b"\x00" + v
    return _tlv(0x02, v)


def _read_tlv(data, pos):
    # (tag, start of value, end of value) of the element at pos
    if pos + 2 > len(data):
        raise IdentityError("DER truncated")
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 2 or pos + k > len(data):
            raise IdentityError("DER length")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise IdentityError("DER truncated")
    return tag, pos, pos + n


# --- the key --------------------------------------------------------------------------------

def key_der(d, pub_xy):
    """SEC1 ECPrivateKey DER of scalar d with its public point (64-byte X||Y)."""
    return _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, d.to_bytes(32, "big"))
                + _tlv(0xA0, _OID_P256) + _tlv(0xA1, _tlv(0x03, b"\x00\x04" + pub_xy)))


def parse_key_der(data):
    """(d, pub_xy) from SEC1 DER; IdentityError unless it is a consistent P-256 key."""
    tag, s, e = _read_tlv(data, 0)
    if tag != 0x30:
        raise IdentityError("key file is not an ECPrivateKey")
    tag, vs, ve = _read_tlv(data, s)
    if tag != 0x02 or data[vs:ve] != b"\x01":
        raise IdentityError("ECPrivateKey version")
    tag, ks, ke = _read_tlv(data, ve)
    if tag != 0x04 or ke - ks != 32:
        raise IdentityError("private scalar")
    d = int.from_bytes(data[ks:ke], "big")
    pos = ke
    pub = None
    while pos < e:
        tag, cs, ce = _read_tlv(data, pos)
        if tag == 0xA0 and data[cs:ce] != _OID_P256:
            raise IdentityError("key is not on P-256")
        if tag == 0xA1:
            t2, bs, be = _read_tlv(data, cs)
            if t2 != 0x03 or be - bs != 66 or data[bs:bs + 2] != b"\x00\x04":
                raise IdentityError("public key")
            pub = bytes(data[bs + 2:be])
        pos = ce
    expected = p256.public_of(d)
    if pub is not None and pub != expected:
        raise IdentityError("public key does not match the private scalar")
    return d, expected


def _restrict(path):
    # Owner-only before the secret is written into it. MicroPython's os has no chmod; the
    # unix port has os.system. The ESP32's littlefs keeps no permission bits at all.
    if hasattr(os, "system"):
        if os.system("chmod 600 '%s'" % path.replace("'", "")) != 0:
            raise IdentityError("cannot make %s owner-only" % path)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def load_or_create_key(dir):
    """The node's key (d, pub_xy): read from dir/node.key, or made now and stored there.

    Written under a temp name and renamed, so a reset mid-write never leaves a half key that
    would be taken for the real one."""
    path = dir + "/" + KEY_FILE
    if exists(path):
        with open(path, "rb") as f:
            return parse_key_der(f.read())
    d, pub = p256.keygen()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pass
    _restrict(tmp)
    with open(tmp, "wb") as f:
        f.write(key_der(d, pub))
    os.rename(tmp, path)
    return d, pub


def wipe(dir):
    """Forget the identity (decommissioning): key, request, certificates."""
    for name in (KEY_FILE, KEY_FILE + ".tmp", CSR_FILE, CERT_FILE, CHAIN_FILE, IOC_FILE):
        try:
            os.remove(dir + "/" + name)
        except OSError:
            pass


# --- the certificate request -----------------------------------------------------------------

def _name(cn, serial=None):
    rdns = _tlv(0x31, _tlv(0x30, _OID_CN + _tlv(0x0C, cn.encode())))
    if serial:
        # PrintableString, as X.520 requires for serialNumber
        rdns += _tlv(0x31, _tlv(0x30, _OID_SERIAL + _tlv(0x13, serial.encode())))
    return _tlv(0x30, rdns)


def spki(pub_xy):
    """SubjectPublicKeyInfo DER of a P-256 point."""
    return _tlv(0x30, _tlv(0x30, _OID_EC_PUBLIC_KEY + _OID_P256) + _tlv(0x03, b"\x00\x04" + pub_xy))


def csr_der(d, pub_xy, cn, serial=None):
    """A PKCS#10 request (DER) for the node's key: subject CN = node id (+ serialNumber),
    signed ECDSA-SHA256 with the key itself (proof of possession)."""
    info = _tlv(0x30, b"\x02\x01\x00" + _name(cn, serial) + spki(pub_xy) + b"\xa0\x00")
    sig = p256.sign(d, hashlib.sha256(info).digest())
    sig_der = _tlv(0x30, _int(sig[:32]) + _int(sig[32:]))
    return _tlv(0x30, info + _tlv(0x30, _OID_ECDSA_SHA256) + _tlv(0x03, b"\x00" + sig_der))


def write_csr(dir, d, pub_xy, cn, serial=None):
    data = csr_der(d, pub_xy, cn, serial)
    with open(dir + "/" + CSR_FILE, "wb") as f:
        f.write(data)
    return data


# --- certificates ---------------------------------------------------------------------------

def split_ders(data):
    """Concatenated DER certificates -> list of bytes."""
    out = []
    pos = 0
    while pos < len(data):
        tag, s, e = _read_tlv(data, pos)
        if tag != 0x30:
            raise IdentityError("not a DER certificate at byte %d" % pos)
        out.append(bytes(data[pos:e]))
        pos = e
    return out


def cert_public_key(cert_der):
    """The P-256 point (X||Y) in a certificate's SubjectPublicKeyInfo.

    Found by walking TBSCertificate's fields (version, serial, sig alg, issuer, validity,
    subject, SPKI): no general ASN.1 parser needed."""
    _, s, _ = _read_tlv(cert_der, 0)  # Certificate
    _, s, _ = _read_tlv(cert_der, s)  # TBSCertificate
    pos = s
    tag, _, e = _read_tlv(cert_der, pos)
    if tag == 0xA0:  # explicit version
        pos = e
    for _ in range(5):  # serial, signature, issuer, validity, subject
        _, _, pos = _read_tlv(cert_der, pos)
    tag, ss, _ = _read_tlv(cert_der, pos)
    tag, as_, ae = _read_tlv(cert_der, ss)  # AlgorithmIdentifier
    if cert_der[as_:ae] != _OID_EC_PUBLIC_KEY + _OID_P256:
        raise IdentityError("certificate key is not P-256")
    tag, bs, be = _read_tlv(cert_der, ae)
    if tag != 0x03 or be - bs != 66 or cert_der[bs:bs + 2] != b"\x00\x04":
        raise IdentityError("certificate public key")
    return bytes(cert_der[bs + 2:be])


class Identity:
    """Everything the node needs to seal and to authenticate: key, chain, IOC recipient."""

    def __init__(self, dir):
        self.dir = dir
        self.d, self.pub = load_or_create_key(dir)
        self.cert = _read(dir + "/" + CERT_FILE, "node certificate")
        if cert_public_key(self.cert) != self.pub:
            raise IdentityError("%s/%s is not the certificate of this node's key" % (dir, CERT_FILE))
        self.chain = [self.cert] + split_ders(_read(dir + "/" + CHAIN_FILE, "CA chain"))
        ioc = _read(dir + "/" + IOC_FILE, "IOC recipient certificate")
        self.recipient_xy = cert_public_key(ioc)
        self.recipient_kid = hashlib.sha256(ioc).digest()[:8]
        self.x5t = hashlib.sha256(self.cert).digest()
        self.key_path = dir + "/" + KEY_FILE
        self.cert_path = dir + "/" + CERT_FILE


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        raise IdentityError("%s missing: %s (provision the node first)" % (what, path))
