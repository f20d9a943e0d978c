# Provisioning mode: the node's side of the USB-serial provisioning protocol
# (docs/provisioning-protocol.md). The technician's laptop (provisioning/node_link.py) sends
# one request per line and the node answers one line each, on the console the boot messages
# and the `event=` log lines also use:
#
#     UEP1 <compact JSON> <crc32 of the JSON bytes, 8 lower-case hex>\n
#
# Anything else on the line is not ours and is skipped. The laptop has its own codec
# (provisioning/serial_proto.py): the two share the format, never the code, as with the wire
# formats.
#
# Memory: one preallocated line buffer (MAX_LINE) read a byte at a time, so a line of any
# length costs no more than that; a request is decoded from a view of it.
#
# The key never leaves the node: `csr` answers with the request and the public point only.

import binascii
import gc
import hashlib
import json
import os
import sys

from ue import identity, node

MAGIC = b"UEP1 "
# The longest request line the node takes (the laptop learns it from `hello`). One contiguous
# block of this size must be free on a fragmented heap, so it is no larger than one certificate
# file needs: the laptop sends an install longer than this one file at a time.
MAX_LINE = 4096
PROTOCOL = 1

# What `install` may write, into the identity directory: nothing else, whatever the laptop asks.
INSTALLABLE = (identity.CERT_FILE, identity.CHAIN_FILE, identity.IOC_FILE, "broker-ca.der")

# PrintableString (X.520 serialNumber) characters: identity.csr_der writes the serial as one.
_PRINTABLE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"


class Fail(Exception):
    # An answer with ok=false: reason is the machine code the laptop translates, detail the text.
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --- the frame ------------------------------------------------------------------------------

def decode(line):
    """The request in one line (without its newline): a dict, or None when the line is not a
    frame at all (someone else's text). A frame that is damaged raises Fail("bad_frame")."""
    n = len(line)
    while n and line[n - 1] in (13, 10):  # a terminal may send \r\n
        n -= 1
    if n < len(MAGIC) or bytes(line[:len(MAGIC)]) != MAGIC:
        return None
    # The CRC is the last field; the JSON before it may hold spaces in its strings.
    if n < len(MAGIC) + 10 or line[n - 9] != 32:
        raise Fail("bad_frame", "no CRC field at the end of the frame")
    body = line[len(MAGIC):n - 9]
    try:
        crc = int(bytes(line[n - 8:n]), 16)
    except ValueError:
        raise Fail("bad_frame", "CRC field is not hex")
    if binascii.crc32(body) & 0xFFFFFFFF != crc:
        raise Fail("bad_frame", "CRC mismatch: the line was damaged")
    try:
        obj = json.loads(body)
    except ValueError:
        raise Fail("bad_frame", "not valid JSON")
    if not isinstance(obj, dict):
        raise Fail("bad_frame", "the JSON is not an object")
    rid = obj.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise Fail("bad_frame", "no integer id")
    if not isinstance(obj.get("op"), str):
        raise Fail("bad_frame", "no op")
    return obj


def recover_id(line):
    # The id of a damaged frame, when its `"id":<digits>` survived, so the laptop hears "bad
    # frame" at once instead of waiting out its timeout. A wrong guess is harmless: the laptop
    # drops answers to ids it is not waiting for.
    i = bytes(line[:64]).find(b'"id":')
    if i < 0:
        return None
    i += 5
    j = i
    while j < len(line) and j < i + 10 and 48 <= line[j] <= 57:
        j += 1
    return int(bytes(line[i:j])) if j > i else None


def encode(obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    return MAGIC + body + b" %08x\n" % (binascii.crc32(body) & 0xFFFFFFFF)


# --- storage helpers ------------------------------------------------------------------------

def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_atomic(path, data):
    # A reset mid-write leaves the temp file, never a half file under the real name.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def _b64(data):
    return binascii.b2a_base64(data, newline=False).decode()


def _config_or_none(storage):
    try:
        return node.load_config(storage + "/node.json")
    except node.ConfigError:
        return None


def _id_dir(storage):
    path = storage + "/id"
    try:
        os.mkdir(path)
    except OSError:
        pass
    return path


def _name_arg(req, key, required):
    v = req.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > 64:
        raise Fail("bad_args", "%s: a string of 1..64 characters" % key)
    return v


# --- the operations -------------------------------------------------------------------------

def op_hello(storage, req):
    cfg = _config_or_none(storage)
    id_dir = storage + "/id"
    cert = _read(id_dir + "/" + identity.CERT_FILE)
    return {
        "mode": "provisioning", "protocol": PROTOCOL,
        "node_id": cfg["node_id"] if cfg else None,
        "config_ok": cfg is not None,
        "version": node.VERSION,
        "has_key": identity.exists(id_dir + "/" + identity.KEY_FILE),
        "has_cert": cert is not None,
        "cert_sha256": binascii.hexlify(hashlib.sha256(cert).digest()).decode() if cert is not None else None,
        "platform": sys.platform,
        "max_frame": MAX_LINE,
    }


def op_config(storage, req):
    cfg = req.get("node_json")
    if not isinstance(cfg, dict):
        raise Fail("bad_args", "node_json: expected a JSON object")
    path = storage + "/node.json"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(cfg))
    cfg = None
    try:
        node.load_config(tmp)
    except node.ConfigError as e:
        _remove(tmp)
        # The technician knows the file as node.json, not as our temp copy.
        raise Fail("config_invalid", str(e).replace(tmp, path))
    os.rename(tmp, path)
    return {"stored": True}


def op_csr(storage, req):
    node_id = _name_arg(req, "node_id", True)
    if "/" in node_id or "+" in node_id or "#" in node_id:
        raise Fail("bad_args", "node_id: no / + # (it is an MQTT topic level)")
    serial = _name_arg(req, "serial", False)
    if serial is not None:
        for c in serial.encode():
            if c not in _PRINTABLE:
                raise Fail("bad_args", "serial: only letters, digits, space and '()+,-./:=? (X.520 PrintableString)")
    cfg = _config_or_none(storage)
    if cfg is not None and cfg["node_id"] != node_id:
        # The certificate's CN must be the payload's src, which node.json sets.
        raise Fail("bad_args", "node_id %r differs from node.json's %r" % (node_id, cfg["node_id"]))
    id_dir = _id_dir(storage)
    d, pub = identity.load_or_create_key(id_dir)
    der = identity.write_csr(id_dir, d, pub, node_id, serial)
    d = None
    return {"csr_b64": _b64(der), "public_key_hex": binascii.hexlify(pub).decode()}


def _check_file(name, data, pub):
    try:
        certs = identity.split_ders(data)
        if not certs:
            raise identity.IdentityError("empty")
        if name == identity.CERT_FILE:
            if len(certs) != 1:
                raise identity.IdentityError("expected one certificate, got %d" % len(certs))
            if pub is None:
                raise Fail("no_key", "the node has no key yet: ask for its request (csr) first")
            if identity.cert_public_key(data) != pub:
                raise Fail("cert_mismatch", "node.crt certifies another key than this node's")
        elif name == identity.IOC_FILE:
            identity.cert_public_key(certs[0])  # readings are encrypted to a P-256 key
    except identity.IdentityError as e:
        raise Fail("bad_file", "%s: %s" % (name, e))


def op_install(storage, req):
    files = req.get("files")
    if not isinstance(files, dict) or not files:
        raise Fail("bad_args", "files: an object of file name -> base64")
    for name in files:
        if name not in INSTALLABLE:
            raise Fail("bad_args", "files: %r is not one of %s" % (name, ", ".join(INSTALLABLE)))
    id_dir = _id_dir(storage)
    key = _read(id_dir + "/" + identity.KEY_FILE)
    pub = identity.parse_key_der(key)[1] if key is not None else None
    key = None
    decoded = {}
    for name in INSTALLABLE:
        if name not in files:
            continue
        text = files[name]
        files[name] = None  # the base64 text can go as soon as it is decoded
        if not isinstance(text, str):
            raise Fail("bad_args", "files[%s]: base64 text expected" % name)
        try:
            data = binascii.a2b_base64(text)
        except ValueError:
            raise Fail("bad_args", "files[%s]: not base64" % name)
        text = None
        _check_file(name, data, pub)
        decoded[name] = data
    # Every file checked before any is written: a refused install changes nothing.
    for name in INSTALLABLE:
        if name in decoded:
            _write_atomic(id_dir + "/" + name, decoded[name])
            del decoded[name]
    names = [n for n in INSTALLABLE if n in files]
    return {"installed": names}


def op_status(storage, req):
    cfg = _config_or_none(storage)
    id_dir = storage + "/id"
    pending = dropped = None
    log_dir = storage + "/log"
    if cfg is not None and identity.exists(log_dir):
        # Opened exactly as the agent opens it (same geometry), so recovery does what the next
        # boot would have done anyway; without a valid config the geometry is unknown: not read.
        from ue.flashlog import FlashLog

        lg = cfg.get("log", {})
        flog = FlashLog(log_dir, seg_size=lg.get("seg_size", 16384), n_segs=lg.get("n_segs", 8),
                        keep_prio=node.ALARM)
        try:
            pending = flog.pending()
            dropped = flog.dropped
        finally:
            flog.close()
    return {
        "node_id": cfg["node_id"] if cfg else None,
        "site": cfg["site"] if cfg else None,
        "has_key": identity.exists(id_dir + "/" + identity.KEY_FILE),
        "has_cert": identity.exists(id_dir + "/" + identity.CERT_FILE),
        "pending": pending, "dropped": dropped,
    }


def op_wipe(storage, req):
    # Decommissioning: the key first (what matters), then what points at the old identity.
    id_dir = storage + "/id"
    identity.wipe(id_dir)
    for name in INSTALLABLE + (identity.CSR_FILE,):
        _remove(id_dir + "/" + name)
        _remove(id_dir + "/" + name + ".tmp")
    _remove(storage + "/node.json")
    _remove(storage + "/node.json.tmp")
    log_dir = storage + "/log"
    if identity.exists(log_dir):
        for name in os.listdir(log_dir):
            _remove(log_dir + "/" + name)
        try:
            os.rmdir(log_dir)
        except OSError:
            pass
    return {"wiped": True}


def op_reboot(storage, req):
    return {"rebooting": True}


OPS = {"hello": op_hello, "config": op_config, "csr": op_csr, "install": op_install,
       "status": op_status, "wipe": op_wipe, "reboot": op_reboot}


def handle(storage, req):
    """The answer (a dict with id and ok) to one decoded request."""
    rid = req["id"]
    op = req["op"]
    fn = OPS.get(op)
    try:
        if fn is None:
            raise Fail("unknown_op", "unknown op %r (this node speaks %s)" % (op, ", ".join(sorted(OPS))))
        out = fn(storage, req)
    except Fail as e:
        return {"id": rid, "ok": False, "reason": e.reason, "detail": e.detail}
    except identity.IdentityError as e:
        return {"id": rid, "ok": False, "reason": "identity_error", "detail": str(e)}
    except OSError as e:
        return {"id": rid, "ok": False, "reason": "storage_error", "detail": "%s: %r" % (op, e)}
    except MemoryError:
        return {"id": rid, "ok": False, "reason": "no_memory", "detail": "%s: out of memory" % op}
    except Exception as e:  # a bug must not end provisioning mode: say what, keep serving
        return {"id": rid, "ok": False, "reason": "internal", "detail": "%s: %r" % (op, e)}
    out["id"] = rid
    out["ok"] = True
    return out


# --- the loop -------------------------------------------------------------------------------

def _read_line(rd, buf, one):
    # Bytes up to a newline into buf: the line's length (larger than len(buf) when it did not
    # fit; the excess is dropped), or -1 when the console closed.
    n = 0
    size = len(buf)
    while True:
        try:
            got = rd.readinto(one)
        except OSError:
            return -1
        if not got:
            return -1
        c = one[0]
        if c == 10:
            return n
        if n < size:
            buf[n] = c
        n += 1


def serve(storage, rd, wr, log=None):
    """Answer requests from rd (bytes in) on wr (bytes out) until `reboot` (returns "reboot")
    or until the console closes (returns "eof"). log(line) prints a log line (default: on wr)."""
    emit = log or (lambda line: _send(wr, line.encode() + b"\n"))
    gc.collect()
    buf = bytearray(MAX_LINE)
    view = memoryview(buf)
    one = bytearray(1)
    last_key = None  # (id, crc) of the last request answered, and the answer's bytes
    last_out = b""
    while True:
        n = _read_line(rd, buf, one)
        if n < 0:
            return "eof"
        if n > MAX_LINE:
            if bytes(view[:len(MAGIC)]) != MAGIC:
                continue  # someone else's long line
            emit("event=provisioning_bad_frame problem=too_long bytes=%d" % n)
            rid = recover_id(view[:MAX_LINE])
            if rid is not None:
                _send(wr, encode({"id": rid, "ok": False, "reason": "bad_frame",
                                  "detail": "frame longer than %d bytes" % MAX_LINE}))
            continue
        line = view[:n]
        try:
            req = decode(line)
        except Fail as e:
            emit("event=provisioning_bad_frame problem=%s" % node._q(e.detail))
            rid = recover_id(line)
            if rid is not None:
                _send(wr, encode({"id": rid, "ok": False, "reason": e.reason, "detail": e.detail}))
            continue
        if req is None:
            continue
        key = (req["id"], binascii.crc32(line))
        if key == last_key:
            # The laptop repeats a request whose answer it lost: the same answer again, not a
            # second execution (a second csr would sign a new request; a repeated reboot would
            # cut the answer the laptop is waiting for).
            if not _send(wr, last_out):
                return "eof"
            continue
        op = req["op"]
        out = handle(storage, req)
        req = None
        ok = out["ok"]
        if ok:
            emit("event=provisioning_request op=%s ok=1" % op)
        else:
            emit("event=provisioning_request op=%s ok=0 reason=%s" % (op, out["reason"]))
        last_out = encode(out)
        last_key = key
        out = None
        gc.collect()
        if not _send(wr, last_out):
            return "eof"
        if ok and op == "reboot":
            return "reboot"


def _send(wr, data):
    try:
        wr.write(data)
        return True
    except OSError:  # the console went away (cable out; on unix the pty closed)
        return False


def console():
    """(rd, wr): the raw byte streams under sys.stdin/sys.stdout (no \\r\\n translation)."""
    rd = getattr(sys.stdin, "buffer", sys.stdin)
    wr = getattr(sys.stdout, "buffer", sys.stdout)
    return rd, wr
