# Over-the-air update of the node's app (the ue/ package), file level, A/B slots.
#
# Storage (under the node's storage folder: /data on the ESP32, $UE_STORAGE on unix):
#
#   app/a/ue/*.py, app/b/ue/*.py   two app slots, each a whole release (never a delta)
#   app/boot.json                  {"active": "a"|"b"|"factory", "committed": ...,
#                                   "trial": null | {"slot", "tries", "version", "counter",
#                                                    "failed"?},
#                                   "counter": <highest committed release counter>,
#                                   "version": ..., "rolled_back"?: {...}, "bad"?: <counter>}
#   app/<slot>/ue/<f>.part         a file being downloaded (resumed with HTTP Range)
#
# "factory" is the app shipped with the loader (/ue on the board, firmware/ue on unix), the
# last-resort fallback. boot.json is only ever replaced by write-temp + rename, the one atomic
# step littlefs and POSIX give; a reset at any moment leaves the old or the new file.
#
# Flow: check (GET <url>nodes/<node_id>.manifest, verify: signature with a configured key,
# node, hw, expiry, counter, file list) -> stage into the inactive slot (each file: resume,
# length, SHA-256, temp name + rename; files already there with the right hash are kept) ->
# boot.json gets the trial -> reset. The loader (main.py, never updated) counts trial boots;
# the app commits after its self-test (MQTT up, a sensor polled, a sealed batch acknowledged)
# within trial_s, else marks the trial failed and resets; a crash or a watchdog reset before
# the commit also ends in the fallback, once the loader has counted MAX_TRIES boots.
#
# Memory: files are hashed and downloaded in 1 KB chunks; the manifest (<= 8 KB) is the
# largest buffer.

import asyncio
import binascii
import gc
import hashlib
import json
import os

from ue import cbor, hal, http, p256

RESET = 75  # the unix port's exit code for "reset me" (the loader's and the tests' contract)
MAX_TRIES = 2  # the loader's copy decides; kept equal
MAX_FILES = 64
MAX_FILE_SIZE = 128 * 1024
MAX_TOTAL_SIZE = 512 * 1024
MAX_MANIFEST = 8192
FETCH_RETRIES = 5
CLOCK_FLOOR = 1700000000  # 2023-11: a wall clock before this was never set
CHUNK = 1024
_SLOTS = ("a", "b")
_NAME_OK = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


# Rejections that look like an attack (a forged or tampered release, an older one), reported
# as security events too, in the gateway's words (agent/security/events.py). Not here: a
# manifest for another node or hardware, an expired one (operations problems first).
ATTACK_REASONS = {"signature": "bad-signature", "key": "bad-signature", "rollback": "rollback", "hash": "tampered"}


class Rejected(Exception):
    # reason: one word (format, key, signature, node, hw, expired, rollback, files, hash);
    # ota/node_manifest.py uses the same words.
    def __init__(self, reason, detail, version="", counter=0):
        super().__init__(reason + ": " + detail)
        self.reason = reason
        self.detail = detail
        self.version = version
        self.counter = counter


class DownloadFailed(OSError):
    pass


# --- boot.json ------------------------------------------------------------------------------

def read_boot(app_dir):
    try:
        with open(app_dir + "/boot.json") as f:
            st = json.load(f)
        if isinstance(st, dict):
            return st
    except (OSError, ValueError):
        pass  # missing or torn: the factory app, as the loader decides too
    return {"active": "factory", "committed": "factory", "trial": None, "counter": 0, "version": None}


def write_boot(app_dir, st):
    tmp = app_dir + "/boot.json.tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.rename(tmp, app_dir + "/boot.json")


# --- the manifest (sans-IO) -----------------------------------------------------------------

def key_id(pub65):
    return hashlib.sha256(pub65).digest()[:8]


def _check_path(path):
    if not path.startswith("ue/") or ".." in path:
        return False
    name = path[3:]
    dot = name.rfind(".")
    if dot <= 0 or dot > 40 or name[dot:] not in (".py", ".mpy"):
        return False
    for c in name[:dot]:
        if c not in _NAME_OK:
            return False
    return True


def check_files(files):
    if not isinstance(files, list) or not files:
        raise Rejected("files", "no file list")
    if len(files) > MAX_FILES:
        raise Rejected("files", "%d files, at most %d" % (len(files), MAX_FILES))
    seen = set()
    total = 0
    for f in files:
        if not (isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and isinstance(f[1], int)
                and isinstance(f[2], bytes) and len(f[2]) == 32):
            raise Rejected("format", "files: each entry is [path, length, sha256]")
        path, n = f[0], f[1]
        if not _check_path(path):
            raise Rejected("files", "path %r is not ue/<module>.py" % path)
        if path in seen:
            raise Rejected("files", "path %r appears twice" % path)
        seen.add(path)
        if not 0 <= n <= MAX_FILE_SIZE:
            raise Rejected("files", "%s: length %d outside 0..%d" % (path, n, MAX_FILE_SIZE))
        total += n
    if total > MAX_TOTAL_SIZE:
        raise Rejected("files", "%d bytes in all, at most %d" % (total, MAX_TOTAL_SIZE))
    if "ue/app.py" not in seen:
        raise Rejected("files", "ue/app.py (the entry point) is missing")


def verify_manifest(data, keys, node_id, hw, now_s, committed):
    """The manifest map, checked (module docstring of ota/node_manifest.py); Rejected names
    the reason. A counter equal to `committed` passes: the caller calls it installed."""
    if len(data) > MAX_MANIFEST:
        raise Rejected("format", "%d bytes, at most %d" % (len(data), MAX_MANIFEST))
    try:
        obj = cbor.loads(data)
    except (ValueError, IndexError) as e:
        raise Rejected("format", "not CBOR: %s" % e)
    if isinstance(obj, cbor.Tag):
        if obj.tag != 18:
            raise Rejected("format", "CBOR tag %d is not COSE_Sign1" % obj.tag)
        obj = obj.value
    if not (isinstance(obj, list) and len(obj) == 4 and isinstance(obj[0], bytes) and isinstance(obj[1], dict)
            and isinstance(obj[2], bytes) and isinstance(obj[3], bytes)):
        raise Rejected("format", "not a COSE_Sign1")
    protected, unprotected, payload, sig = obj
    if protected != b"\xa1\x01\x26":  # {1: -7}: ES256, the only algorithm accepted
        raise Rejected("format", "protected header must be {1: -7} (ES256)")
    kid = unprotected.get(4)
    pub = None
    for k in keys:
        if key_id(k) == kid:
            pub = k
    if pub is None:
        raise Rejected("key", "signed by a key this node does not trust")
    # Sig_structure ["Signature1", protected, h'', payload], hashed without copying the payload
    h = bytearray(b"\x84\x6aSignature1")
    cbor.enc_bytes(h, protected)
    h.append(0x40)
    cbor.head(h, 2, len(payload))
    d = hashlib.sha256(h)
    d.update(payload)
    if not p256.verify(pub[1:], d.digest(), sig):
        raise Rejected("signature", "does not verify")
    obj = sig = data = None
    try:
        m = cbor.loads(payload)
    except (ValueError, IndexError) as e:
        raise Rejected("format", "payload: %s" % e)
    if not isinstance(m, dict) or m.get("v") != 1:
        raise Rejected("format", "payload must be a map with v = 1")
    for name, kind in (("node", str), ("hw", str), ("version", str), ("base", str), ("counter", int),
                       ("issued", int), ("expires", int)):
        v = m.get(name)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise Rejected("format", "field %s: expected %s" % (name, "text" if kind is str else "an integer"))
    version, counter = m["version"], m["counter"]
    if m["node"] != node_id:
        raise Rejected("node", "for node %r, this is %r" % (m["node"], node_id), version, counter)
    if m["hw"] != hw:
        raise Rejected("hw", "for hardware %r, this is %r" % (m["hw"], hw), version, counter)
    if now_s >= m["expires"]:
        raise Rejected("expired", "expired at %d, now %d" % (m["expires"], now_s), version, counter)
    if counter < committed:
        raise Rejected("rollback", "counter %d below the committed %d" % (counter, committed), version, counter)
    try:
        check_files(m.get("files"))
    except Rejected as e:
        raise Rejected(e.reason, e.detail, version, counter)
    base = m["base"]
    if ".." in base or base.startswith("/") or not base.endswith("/") or ":" in base:
        raise Rejected("files", "base %r must be a relative folder" % base, version, counter)
    return m


# --- files ----------------------------------------------------------------------------------

def file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def sha256_file(path, buf=None):
    h = hashlib.sha256()
    if buf is None:
        buf = bytearray(CHUNK)
    mv = memoryview(buf)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return h.digest()


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# --- the updater ----------------------------------------------------------------------------

class Updater:
    # emit(body): record an event (the node's flash log -> the IOC); log(line): console.
    def __init__(self, ota_cfg, node_id, hw, storage, slot, emit, log, factory_version):
        url = ota_cfg["url"]
        self.url = url if url.endswith("/") else url + "/"
        self.keys = [binascii.unhexlify(k) for k in ota_cfg.get("keys", ())]
        self.check_ms = int(ota_cfg.get("check_s", 3600) * 1000)
        self.trial_ms = int(ota_cfg.get("trial_s", 300) * 1000)
        self.node_id = node_id
        self.hw = hw
        self.slot = slot
        self.emit = emit
        self.log = log
        self.app_dir = hal.ensure_dir(storage + "/app")
        self.st = read_boot(self.app_dir)
        self.factory_version = factory_version
        self._last_reject = None
        # SHA-256 of the last manifest fully handled and its outcome: an unchanged manifest is
        # not verified again at every check (the signature check's big-int garbage fragments
        # the heap the uplink needs for its sealed batches).
        self._last_manifest = None

    def status(self, state, version, counter, reason=None):
        body = {"event": "ota_status", "state": state, "release": version or "", "counter": counter}
        if reason:
            body["reason"] = reason
        self.emit(body)
        self.log("event=ota_status state=%s release=%s counter=%d%s"
                 % (state, version, counter, (" reason=" + _q(reason)) if reason else ""))
        if state == "rejected" and reason:
            code, _, detail = reason.partition(": ")
            if code in ATTACK_REASONS:
                self.emit({"event": "security", "category": "update_rejected", "reason": ATTACK_REASONS[code],
                           "detail": detail[:300], "release": version or ""})

    def release(self):
        # the version of what runs now
        st = self.st
        t = st.get("trial")
        if t and t.get("slot") == self.slot:
            return t.get("version"), t.get("counter", 0)
        if self.slot != "factory" and self.slot == st.get("committed"):
            return st.get("version"), st.get("counter", 0)
        return self.factory_version, st.get("counter", 0)

    def sbom(self):
        from ue.node import sbom_body

        body = sbom_body(self.release()[0])
        self.emit(body)
        self.log("event=ota_sbom release=%s files=%d" % (body["release"], len(body["files"])))
        body = None
        gc.collect()

    def boot_report(self):
        # At every start: the fallback the loader made (if any), then the SBOM.
        st = self.st
        rb = st.get("rolled_back")
        if rb:
            self.status("rolled-back", rb.get("version"), rb.get("counter", 0), rb.get("reason"))
            st["bad"] = max(st.get("bad", 0), rb.get("counter", 0))
            st.pop("rolled_back")
            write_boot(self.app_dir, st)
        self.sbom()

    def in_trial(self):
        t = self.st.get("trial")
        return bool(t) and t.get("slot") == self.slot

    async def trial(self, ready):
        # ready() -> None once the self-test passed, else what is still missing.
        t = self.st["trial"]
        self.status("verifying", t.get("version"), t.get("counter", 0))
        deadline = hal.ticks_add(hal.ticks_ms(), self.trial_ms)
        missing = ready()
        while missing is not None:
            if hal.ticks_diff(deadline, hal.ticks_ms()) <= 0:
                reason = "self-test: %s within %d s" % (missing, self.trial_ms // 1000)
                self.status("failed", t.get("version"), t.get("counter", 0), reason)
                t["failed"] = reason
                write_boot(self.app_dir, self.st)
                return False
            await asyncio.sleep_ms(200)
            missing = ready()
        st = self.st
        st["committed"] = st["active"] = t["slot"]
        st["counter"] = t.get("counter", 0)
        st["version"] = t.get("version")
        st["trial"] = None
        write_boot(self.app_dir, st)
        self.status("success", st["version"], st["counter"])
        self.sbom()
        return True

    async def check(self, now_s):
        """One update check. Returns "none", "installed", "rejected", "failed" or "restart"
        (staged and flipped: the caller resets)."""
        st = self.st
        if st.get("trial"):
            return "none"  # a trial runs (or fell back and is reported): no new install now
        if now_s < CLOCK_FLOOR:
            # No NTP yet (an ESP32 counts from 2000 after a reset): expiry cannot be checked.
            self.log("event=ota_clock_unset now=%d" % now_s)
            return "none"
        url = self.url + "nodes/" + self.node_id + ".manifest"
        try:
            code, data = await http.get_small(url, MAX_MANIFEST)
        except (OSError, ValueError) as e:
            self.log("event=ota_check_failed url=%s reason=%s" % (url, _q(repr(e))))
            return "failed"
        if code == 404:
            self.log("event=ota_no_manifest url=%s" % url)
            return "none"
        if code != 200:
            self.log("event=ota_check_failed url=%s reason=http_%d" % (url, code))
            return "failed"
        digest = hashlib.sha256(data).digest()
        if self._last_manifest is not None and self._last_manifest[0] == digest:
            return self._last_manifest[1]
        result = await self._handle(data, now_s)
        if result != "failed":  # a failed download is retried at the next check
            self._last_manifest = (digest, result)
        return result

    async def _handle(self, data, now_s):
        st = self.st
        try:
            m = verify_manifest(data, self.keys, self.node_id, self.hw, now_s, st.get("counter", 0))
        except Rejected as e:
            data = None
            key = (e.reason, e.version, e.counter)
            if key != self._last_reject:  # once per boot and cause, not at every check
                self._last_reject = key
                self.status("rejected", e.version, e.counter, e.reason + ": " + e.detail)
            return "rejected"
        data = None
        version, counter = m["version"], m["counter"]
        if counter == st.get("counter", 0) and st.get("committed") != "factory":
            return "installed"
        if counter <= st.get("bad", -1):
            self.log("event=ota_skip_bad_release release=%s counter=%d" % (version, counter))
            return "none"
        return await self.install(m)

    async def install(self, m):
        st = self.st
        version, counter = m["version"], m["counter"]
        target = "b" if st.get("committed") == "a" else "a"
        slot_dir = hal.ensure_dir(self.app_dir + "/" + target)
        ue_dir = hal.ensure_dir(slot_dir + "/ue")
        self.status("queued", version, counter)
        self.status("downloading", version, counter)
        base = self.url + m["base"]
        files = m["files"]
        m = None
        wanted = set()
        try:
            for path, length, digest in files:
                wanted.add(path[3:])
                await self.fetch(base + path, slot_dir + "/" + path, length, digest)
        except Rejected as e:
            self.status("rejected", version, counter, e.reason + ": " + e.detail)
            return "rejected"
        except (OSError, ValueError) as e:
            self.status("failed", version, counter, "download: %r" % e)
            return "failed"
        # the slot holds exactly the release: leftovers of an older one go
        for name in os.listdir(ue_dir):
            if name not in wanted:
                _remove(ue_dir + "/" + name)
        self.status("installing", version, counter)
        st["trial"] = {"slot": target, "tries": 0, "version": version, "counter": counter}
        st["active"] = target
        write_boot(self.app_dir, st)
        self.status("restarting", version, counter)
        return "restart"

    async def fetch(self, url, final, length, digest):
        if file_size(final) == length and sha256_file(final) == digest:
            self.log("event=ota_file_kept path=%s" % final)
            return
        part = final + ".part"
        failures = 0
        while True:
            have = file_size(part)
            if have > length:
                _remove(part)
            if have < 0 or have > length:
                have = 0
                open(part, "wb").close()
            if have < length:
                try:
                    have = await http.download(url, part, have, length)
                except (OSError, ValueError) as e:
                    failures += 1
                    self.log("event=ota_download_retry url=%s have=%d failures=%d reason=%s"
                             % (url, file_size(part), failures, _q(repr(e))))
                    if failures > FETCH_RETRIES:
                        raise DownloadFailed("%s: %d attempts failed" % (url, failures))
                    await asyncio.sleep_ms(min(500 << failures, 8000))
                    continue
            if file_size(part) < length:
                failures += 1
                self.log("event=ota_download_short url=%s have=%d of=%d" % (url, file_size(part), length))
                if failures > FETCH_RETRIES:
                    raise DownloadFailed("%s: closed early %d times" % (url, failures))
                await asyncio.sleep_ms(min(500 << failures, 8000))
                continue
            if sha256_file(part) != digest:
                _remove(part)
                raise Rejected("hash", "%s: SHA-256 differs from the manifest" % url)
            os.rename(part, final)
            self.log("event=ota_file_staged path=%s bytes=%d" % (final, length))
            return

    async def run(self, ready, reset, now_s):
        # The node's OTA task: report, finish a trial, then check every check_ms.
        try:
            self.boot_report()
        except Exception as e:  # e.g. MemoryError: the report is lost, the update logic is not
            self.log("event=ota_error step=boot_report reason=%s" % _q(repr(e)))
        gc.collect()
        if self.in_trial():
            try:
                ok = await self.trial(ready)
            except Exception as e:  # an uncommitted trial must end in the fallback
                self.log("event=ota_error step=trial reason=%s" % _q(repr(e)))
                t = self.st["trial"]
                t["failed"] = "self-test error: %r" % e
                write_boot(self.app_dir, self.st)
                ok = False
            if not ok:
                reset()
                return
        while True:
            try:
                gc.collect()
                if await self.check(now_s()) == "restart":
                    reset()
                    return
            except Exception as e:  # the updater must never take the node down
                self.log("event=ota_error reason=%s" % _q(repr(e)))
            gc.collect()
            await asyncio.sleep_ms(self.check_ms)


def _q(text):
    return '"' + str(text).replace('"', "'") + '"'
