# The node's flash log: records survive resets and outages until the uplink acknowledges them.
#
# Layout under one directory:
#   s<N>     segment files, N increasing; at most n_segs exist (a ring of numbers, not of files)
#            [magic "UEL1"][supersedes u32][dropped u32]     12-byte header
#            then records [len u16][crc32 u32][prio u8][seq u32][payload]   (little-endian)
#            crc32 covers prio, seq and payload; len is the payload length.
#   ack      [magic "UEA1"][seg u32][off u32][hi u32][dropped u32][n u32][n x seq u32][crc32 u32]
#            (seg, off): every record before it is acknowledged; the n seqs after it are too
#            (alarms overtake telemetry); hi: the highest seq ever handed out.
#
# Why it survives a reset at any byte:
# - a record is appended with plain writes; a torn tail fails its length or CRC check and
#   recovery cuts the segment there (everything before it is intact);
# - files that must change as a whole (the ack file, a new segment with the alarms copied
#   forward, a segment cut to its good prefix) are written under a temp name and renamed over,
#   the one step littlefs and POSIX make atomic;
# - a segment that replaced an older one names it in its header ("supersedes"), so recovery
#   finishes a drop that a reset interrupted between the rename and the delete.
# Seqs are never reused: recovery continues after the larger of hi and the largest seq found.
#
# When the ring is full the oldest segment goes. Its unacknowledged alarms (prio <= keep_prio)
# are copied forward into the new segment (up to half of it); everything else unacknowledged
# in it is dropped and counted in `dropped`, which is persisted (segment headers and ack file).

import binascii
import os
import struct

# mypy takes TYPE_CHECKING as true; the device, which has no typing module, never imports it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_SEG_MAGIC = b"UEL1"
_ACK_MAGIC = b"UEA1"
_SEG_FMT = "<4sII"
_SEG_HDR = 12
_REC_FMT = "<HIBI"
_REC_HDR = 11
_ACK_FMT = "<4sIIIII"
_ACK_HDR = 24
_NONE = 0xFFFFFFFF
_PRIOS = 3  # 0 alarm, 1 event, 2 telemetry (docs/wire-format.md)
_COPY_CHUNK = 256


class FlashLogError(Exception):
    pass


def _size(path):
    return os.stat(path)[6]


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _rec_crc(hdr, payload):
    # hdr[6:11] is prio + seq: a flipped bit there must fail the check like one in the payload.
    return binascii.crc32(payload, binascii.crc32(memoryview(hdr)[6:11])) & 0xFFFFFFFF


class FlashLog:
    def __init__(self, dir, seg_size=16384, n_segs=4, keep_prio=0):
        if n_segs < 2:
            raise ValueError("n_segs must be >= 2")
        if seg_size < 256:
            raise ValueError("seg_size must be >= 256")
        self.dir = dir
        self.seg_size = seg_size
        self.n_segs = n_segs
        self.keep_prio = keep_prio
        # One record may take at most half a segment: a roll then always makes room, even
        # after alarms were copied forward into the new segment.
        self.max_payload = (seg_size - _SEG_HDR) // 2 - _REC_HDR
        self._hdr = bytearray(_REC_HDR)
        self._buf = bytearray(_COPY_CHUNK)
        # The open tail segment (the stubs type open() as Any); None only while rolling.
        self._wf: "Any" = None
        try:
            os.mkdir(dir)
        except OSError:
            pass
        self._recover()

    # --- public ---------------------------------------------------------------------------

    @property
    def dropped(self):
        return self._dropped

    def pending(self, prio=None):
        if prio is None:
            return self._counts[0] + self._counts[1] + self._counts[2]
        return self._counts[prio]

    def append(self, prio, payload):
        """Store one record durably (flushed before returning); return its seq."""
        if prio < 0 or prio >= _PRIOS:
            raise ValueError("prio must be 0, 1 or 2")
        n = len(payload)
        if n > self.max_payload:
            raise ValueError("payload too large for this log")
        if self._wend + _REC_HDR + n > self.seg_size:
            self._roll()
        seq = self._next
        hdr = self._hdr
        struct.pack_into(_REC_FMT, hdr, 0, n, 0, prio, seq)
        struct.pack_into("<I", hdr, 2, _rec_crc(hdr, payload))
        self._wf.write(hdr)
        self._wf.write(payload)
        self._wf.flush()
        self._next: int = seq + 1
        self._wend += _REC_HDR + n
        self._counts[prio] += 1
        return seq

    def peek(self, max_n, prio=None):
        """Up to max_n unacknowledged records as (seq, prio, payload): alarms first, then
        events, then telemetry; each class in seq order."""
        out: "list[tuple[int, int, bytes]]" = []
        for p in range(_PRIOS):
            if (prio is not None and p != prio) or not self._counts[p] or len(out) >= max_n:
                continue
            part = []
            acked = self._acked

            def take(seg, off, rprio, seq, plen, f):
                if rprio == p and seq not in acked:
                    data = f.read(plen)
                    if len(data) == plen:
                        part.append((seq, rprio, data))
                return len(out) + len(part) >= max_n

            self._walk(take)
            part.sort(key=lambda r: r[0])
            out.extend(part)
        return out

    def ack(self, upto):
        """Acknowledge records: an int acks every pending seq <= it, a list/tuple acks those seqs.
        Returns how many pending records this acknowledged."""
        acked = self._acked
        counts = self._counts
        newly = [0]
        if isinstance(upto, int):
            def want(seq):
                return seq <= upto
        else:
            wanted = set(upto)

            def want(seq):
                return seq in wanted

        def mark(seg, off, prio, seq, plen, f):
            if seq not in acked and want(seq):
                acked.add(seq)
                counts[prio] -= 1
                newly[0] += 1
            return False

        self._walk(mark)
        if newly[0]:
            self._advance()
            self._write_ack()
            self._delete_before_pointer()
        return newly[0]

    def close(self):
        if self._wf is not None:
            self._wf.close()
            self._wf = None

    # --- paths and small files --------------------------------------------------------------

    def _path(self, n):
        return "%s/s%d" % (self.dir, n)

    def _write_seg_header(self, f, supersedes):
        f.write(struct.pack(_SEG_FMT, _SEG_MAGIC, supersedes, self._dropped))

    def _write_ack(self):
        extra = self._acked
        data = bytearray(struct.pack(_ACK_FMT, _ACK_MAGIC, self._pseg, self._poff, self._next - 1,
                                     self._dropped, len(extra)))
        for seq in extra:
            data.extend(struct.pack("<I", seq))
        data.extend(struct.pack("<I", binascii.crc32(data) & 0xFFFFFFFF))
        tmp = self.dir + "/ack.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.dir + "/ack")

    def _read_ack(self):
        # -> (seg, off, hi, dropped, acked set) or None when missing or corrupt
        try:
            with open(self.dir + "/ack", "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) < _ACK_HDR + 4 or data[:4] != _ACK_MAGIC:
            return None
        magic, seg, off, hi, dropped, n = struct.unpack_from(_ACK_FMT, data, 0)
        end = _ACK_HDR + 4 * n
        if len(data) != end + 4:
            return None
        if struct.unpack_from("<I", data, end)[0] != binascii.crc32(memoryview(data)[:end]) & 0xFFFFFFFF:
            return None
        acked = set()
        for i in range(n):
            acked.add(struct.unpack_from("<I", data, _ACK_HDR + 4 * i)[0])
        return seg, off, hi, dropped, acked

    # --- recovery ---------------------------------------------------------------------------

    def _recover(self):
        segs = []
        for name in os.listdir(self.dir):
            if name.endswith(".tmp"):
                _remove(self.dir + "/" + name)  # a rename that never happened: the old file stands
            elif name[:1] == "s" and name[1:].isdigit():
                segs.append(int(name[1:]))
        segs.sort()
        state = self._read_ack()
        if state is None:
            pseg, poff, hi, dropped, acked = -1, 0, 0, 0, set()
        else:
            pseg, poff, hi, dropped, acked = state
        self._dropped = dropped
        self._acked = acked

        # Segment headers: finish interrupted drops, take the largest drop count.
        hdr = bytearray(_SEG_HDR)
        supersedes = []
        for n in segs:
            with open(self._path(n), "rb") as f:
                got = f.readinto(hdr)
            if got != _SEG_HDR or hdr[:4] != _SEG_MAGIC:
                # Headers are written whole (temp file + rename); a bad one is rot: the
                # segment's contents cannot be trusted, start it afresh.
                self._new_segment_file(n, _NONE)
                continue
            magic, sup, d = struct.unpack(_SEG_FMT, hdr)
            if d > self._dropped:
                self._dropped = d
            if sup != _NONE:
                supersedes.append(sup)
        for old in supersedes:
            if old in segs:
                _remove(self._path(old))
                segs.remove(old)
                if pseg == old:
                    pseg, poff = -1, 0

        # The pointer: segments wholly before it are acknowledged (a delete a reset interrupted).
        if segs and pseg in segs:
            for n in segs[:]:
                if n < pseg:
                    _remove(self._path(n))
                    segs.remove(n)
        elif segs:
            pseg, poff = segs[0], _SEG_HDR
        if not segs:
            n = pseg + 1 if pseg >= 0 else 0
            self._new_segment_file(n, _NONE)
            segs.append(n)
            pseg, poff = n, _SEG_HDR
        self._segs = segs
        if poff < _SEG_HDR:
            poff = _SEG_HDR

        # Scan everything after the pointer: count, find the largest seq, cut torn tails.
        self._counts = [0, 0, 0]
        self._seen: "set[int]" = set()
        top = hi
        for n in segs:
            start = poff if n == pseg else _SEG_HDR
            end, top_here = self._scan_valid(n, start)
            if top_here > top:
                top = top_here
            size = _size(self._path(n))
            if end < size:
                self._cut(n, end)
            if n == pseg and poff > end:
                poff = end
        self._pseg, self._poff = pseg, poff
        # Out-of-order acks of records that no longer exist (cut or dropped) are forgotten.
        self._acked = self._seen
        del self._seen
        self._next = top + 1
        last = segs[-1]
        self._wend: int = _size(self._path(last))
        self._wf = open(self._path(last), "ab")

    def _scan_valid(self, n, start):
        # -> (offset after the last good record, largest seq seen); counts pending records
        hdr = self._hdr
        top = 0
        off = start
        limit = self.seg_size
        with open(self._path(n), "rb") as f:
            f.seek(start)
            while True:
                if f.readinto(hdr) != _REC_HDR:
                    break
                plen, crc, prio, seq = struct.unpack(_REC_FMT, hdr)
                if prio >= _PRIOS or off + _REC_HDR + plen > limit:
                    break
                data = f.read(plen)
                if len(data) != plen or _rec_crc(hdr, data) != crc:
                    break
                off += _REC_HDR + plen
                if seq > top:
                    top = seq
                if seq in self._acked:
                    self._seen.add(seq)
                else:
                    self._counts[prio] += 1
        return off, top

    def _cut(self, n, end):
        # No truncate() in MicroPython's file objects: copy the good prefix and rename over.
        path = self._path(n)
        tmp = path + ".tmp"
        buf = self._buf
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            left = end
            while left > 0:
                got = src.readinto(buf)
                if not got:
                    break
                take = got if got < left else left
                dst.write(memoryview(buf)[:take])
                left -= take
        os.rename(tmp, path)

    def _new_segment_file(self, n, supersedes):
        tmp = self._path(n) + ".tmp"
        with open(tmp, "wb") as f:
            self._write_seg_header(f, supersedes)
        os.rename(tmp, self._path(n))

    # --- walking the unacknowledged part ------------------------------------------------------

    def _walk(self, fn):
        """Call fn(seg, off, prio, seq, plen, f) for every record from the ack pointer on, in log
        order, until it returns True. fn may read the payload from f (positioned on it)."""
        hdr = self._hdr
        last = self._segs[-1]
        for n in self._segs:
            if n < self._pseg:
                continue
            off = self._poff if n == self._pseg else _SEG_HDR
            end = self._wend if n == last else self.seg_size
            with open(self._path(n), "rb") as f:
                f.seek(off)
                while off + _REC_HDR <= end:
                    if f.readinto(hdr) != _REC_HDR:
                        break
                    plen, crc, prio, seq = struct.unpack(_REC_FMT, hdr)
                    if fn(n, off, prio, seq, plen, f):
                        return
                    off += _REC_HDR + plen
                    f.seek(off)

    def _advance(self):
        # Move the pointer over the acknowledged prefix; forget those seqs from the set.
        acked = self._acked
        pos = [self._pseg, self._poff]

        def step(seg, off, prio, seq, plen, f):
            if seq not in acked:
                pos[0], pos[1] = seg, off
                return True
            acked.discard(seq)
            pos[0], pos[1] = seg, off + _REC_HDR + plen
            return False

        self._walk(step)
        # Reached the end of a segment that is not the active one: point at the next one.
        seg, off = pos
        last = self._segs[-1]
        while seg != last and off >= _size(self._path(seg)):
            seg = self._segs[self._segs.index(seg) + 1]
            off = _SEG_HDR
        self._pseg, self._poff = seg, off

    def _delete_before_pointer(self):
        for n in self._segs[:]:
            if n < self._pseg:
                _remove(self._path(n))
                self._segs.remove(n)

    # --- the ring -----------------------------------------------------------------------------

    def _roll(self):
        self._wf.close()
        self._wf = None
        new = self._segs[-1] + 1
        if len(self._segs) < self.n_segs:
            self._new_segment_file(new, _NONE)
        else:
            old = self._segs[0]
            if old < self._pseg:
                self._new_segment_file(new, _NONE)
                _remove(self._path(old))
                self._segs.remove(old)
            else:
                self._drop_into(old, new)
        self._segs.append(new)
        self._wend = _size(self._path(new))
        self._wf = open(self._path(new), "ab")

    def _drop_into(self, old, new):
        """Replace segment old by a new segment holding its unacknowledged alarms."""
        acked = self._acked
        counts = self._counts
        keep = self.keep_prio
        room = (self.seg_size - _SEG_HDR) // 2
        start = self._poff if old == self._pseg else _SEG_HDR
        hdr = bytearray(_REC_HDR)
        lost = 0
        survivors = []  # (offset, length) of records to copy, found before any is written
        used = 0
        with open(self._path(old), "rb") as f:
            f.seek(start)
            off = start
            while True:
                if f.readinto(hdr) != _REC_HDR:
                    break
                plen, crc, prio, seq = struct.unpack(_REC_FMT, hdr)
                size = _REC_HDR + plen
                if seq not in acked:
                    if prio <= keep and used + size <= room:
                        survivors.append((off, size))
                        used += size
                    else:
                        lost += 1
                        counts[prio] -= 1
                else:
                    acked.discard(seq)  # leaves the log with its segment
                off += size
                f.seek(off)
            self._dropped += lost
            tmp = self._path(new) + ".tmp"
            buf = self._buf
            with open(tmp, "wb") as dst:
                self._write_seg_header(dst, old)
                for off, size in survivors:
                    f.seek(off)
                    while size > 0:
                        got = f.readinto(buf)
                        if not got:
                            raise FlashLogError("segment shrank while copying alarms forward")
                        take = got if got < size else size
                        dst.write(memoryview(buf)[:take])
                        size -= take
        # The rename commits the drop; the delete after it is redone by recovery if need be.
        os.rename(tmp, self._path(new))
        self._segs.remove(old)
        if self._pseg == old:
            self._pseg, self._poff = self._segs[0], _SEG_HDR
        self._write_ack()
        _remove(self._path(old))
