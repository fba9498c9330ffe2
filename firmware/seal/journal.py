# seal/journal.py: the durable event journal on littlefs (SPEC.md §10).
# Records live in append-only segment files; littlefs commits each close atomically. The
# installed permit lives in `state` too, its use counted from the IMPRESSION records themselves,
# and so do the traces of records that could not be made (presses without one, pending alarms).
import binascii
import hashlib
import os
import struct
from micropython import const

# Each record is framed: u16 payload length, u32 counter, u32 CRC32 over those six bytes
# and the payload. The counter in the frame lets recovery check contiguity without CBOR.
_HDR = const(10)
_MAX_PAYLOAD = const(480)
# boot_id, acked, the permit (id, count, not_before_s, not_after_s, operator), the counter from
# which the records still count, the permit's use, the presses without a record and the alarms
# without one (a bit per code) before that counter, the operators the permit names (4 u32, 0:
# none; SPEC §5.7); a CRC32. A 48-byte state, written before permits named operators, names none.
_STATE_SIZE = const(64)
_MISSED_STATE_SIZE = const(48)
_PERMIT_STATE_SIZE = const(40)
# Segments whose list storage is taken at open: the boards' 2000 events in 8-event segments.
_SEG_ROOM = const(256)
_OLD_STATE_SIZE = const(12)
# littlefs copies a file's last block to a new one on every append after a commit (copy on
# write), so each record costs an erase and the programs of its whole segment so far: smaller
# segments cost fewer programs, more files. 8 records keep the journal at its flash write
# budget (SPEC §10.2; `make bench`: firmware, flash_writes_per_event).
_SEG_EVENTS = const(8)
_MAX_U32 = const(0xFFFFFFFF)
_ENOENT = const(2)
_EIO = const(5)
_S_IFREG = const(0x8000)
# An EVENT record as seal.events builds it (SPEC §4.1): a map of 11 entries (12 with a cause),
# type 4, then counter, boot_id, uptime_ms, time_s, kind, permit, operator as uints, prev and
# sig (35 and 67 bytes), the cause as a uint, the MAC.
_MAP11 = const(0xAB)
_MAP12 = const(0xAC)
_EVENT = const(4)
_EV_KIND = const(5)
_EV_PERMIT = const(6)
_EV_OPERATOR = const(7)
_EV_CAUSE = const(10)
_PREV_AND_SIG = const(102)
_KIND_IMPRESSION = const(0)
_KIND_ALARM = const(5)
_KIND_UNRECORDED = const(6)
_NO_PERMIT = (0, 0, 0, 0, 0)

GENESIS = bytes(32)


class JournalFull(Exception):
    pass


# Flash corruption is an OSError (EIO) like any flash fault, and is handled as one: a class of
# its own would cost RAM the firmware cannot spare.
JournalCorrupt = OSError


def _seg_name(first):
    return f"s{first:08x}"


class Journal:
    def __init__(self, root, capacity_events=1000, segment_events=_SEG_EVENTS, reserve_events=0):
        self.root = root
        self.capacity_events = capacity_events
        # The last slots, which no IMPRESSION may take (SPEC §10.2): the lock shuts before them,
        # so a press on a shut seal, a tamper or a reboot is still recorded.
        self.reserve_events = reserve_events
        self._seg_events = segment_events
        self._buf = bytearray(_HDR + _MAX_PAYLOAD)
        self._mv = memoryview(self._buf)
        # The counter of the record _buf holds whole (0: none), so the link sends the record
        # appended last without reading it back from flash.
        self._held = 0
        self._state = bytearray(_STATE_SIZE)
        self._segs = []
        self._tail_count = 0
        self._broken = True
        self.boot_id = 0
        self.next_counter = 1
        self.last_hash = GENESIS
        self.acked = 0
        self.discarded = 0
        # The installed permit (id, count, not_before_s, not_after_s, operator), all 0 if none
        # was ever installed, and how many IMPRESSION records were made under it: counted again
        # from flash at every open, so a used impression is never forgotten (SPEC §10.1).
        self.permit = _NO_PERMIT
        self.permit_used = 0
        # The operator ids the permit names, () if none: then anyone may use it.
        self.operators = ()
        self._from = 1
        # Presses that got no record, and a bit per alarm code whose record could not be made:
        # counted in `state`, taken back by the UNRECORDED and ALARM records that report them.
        self.unrecorded = 0
        self.pending = 0

    @property
    def backlog(self):
        return self.next_counter - 1 - self.acked

    @property
    def free(self):
        # Room left for impressions.
        left = self.capacity_events - self.reserve_events - self.backlog
        return left if left > 0 else 0

    @property
    def full(self):
        # No room for an impression: only the reserve is left.
        return self.backlog >= self.capacity_events - self.reserve_events

    @property
    def exhausted(self):
        # No room for any record, the reserve used up too.
        return self.backlog >= self.capacity_events

    def _path(self, name):
        return self.root + "/" + name

    def open(self):
        self._broken = True
        self._held = 0
        try:
            os.mkdir(self.root)
        except OSError:
            pass
        # Storage for as many segments as a full journal has (up to _SEG_ROOM), taken before
        # the listing: a list that grows doubles its storage in one piece, and a 96 KB heap
        # had no such piece left for a full journal's 250 entries (at boot with 1,990 records
        # unacked; and at 33 segments, 512 bytes, in a 64 KB one). The listing is walked, not
        # kept: a segment number is a small int, which takes no heap. Slice deletion keeps
        # storage.
        segs = [0] * min(self.capacity_events // self._seg_events + 2, _SEG_ROOM)
        del segs[:]
        stale = []
        has_state = False
        for entry in os.ilistdir(self.root):
            name = entry[0]
            if name.endswith(".tmp"):
                # A replacement that was cut before its rename never took effect; removed
                # after the walk (removing entries while littlefs iterates is unsafe).
                stale.append(name)
            elif name == "state":
                has_state = True
            elif name[0] == "s" and len(name) == 9 and entry[1] == _S_IFREG:
                try:
                    segs.append(int(name[1:], 16))
                except ValueError:
                    raise JournalCorrupt(_EIO, "stray file " + name) from None
            else:
                raise JournalCorrupt(_EIO, "stray file " + name)
        for name in stale:
            os.remove(self._path(name))
        segs.sort()
        self.permit = _NO_PERMIT
        self.permit_used = 0
        self.operators = ()
        self._from = 1
        self.unrecorded = 0
        self.pending = 0
        self.boot_id, acked = self._read_state() if has_state else (0, 0)
        if segs and not has_state:
            raise JournalCorrupt(_EIO, "records without state")
        self._segs = segs
        self.discarded = 0
        self.next_counter = 1
        self.last_hash = GENESIS
        last = len(segs) - 1
        for i in range(len(segs)):
            self._scan(segs[i], i == 0, i == last)
        self._tail_count = self.next_counter - self._segs[-1] if self._segs else 0
        if self._segs:
            # Records of deleted segments had all been acked (compaction deletes nothing else).
            acked = max(acked, self._segs[0] - 1)
        if acked > self.next_counter - 1:
            raise JournalCorrupt(_EIO, "acked beyond last record")
        self.acked = acked
        self._broken = False
        self._compact()
        return self

    def _read_state(self):
        st = self._state
        with open(self._path("state"), "rb") as f:
            n = f.readinto(st)
        if n == _OLD_STATE_SIZE:
            # Written before permits were durable: no permit installed.
            crc = struct.unpack_from("<I", st, 8)[0]
            if binascii.crc32(memoryview(st)[:8]) != crc:
                raise JournalCorrupt(_EIO, "bad state")
            return struct.unpack_from("<II", st)
        if n != _STATE_SIZE and n != _MISSED_STATE_SIZE and n != _PERMIT_STATE_SIZE:
            raise JournalCorrupt(_EIO, "bad state")
        # A 40-byte state, written before the traces of missed records were kept, has none.
        v = struct.unpack_from("<IIIIIIIII", st)
        if binascii.crc32(memoryview(st)[: n - 4]) != struct.unpack_from("<I", st, n - 4)[0]:
            raise JournalCorrupt(_EIO, "bad state")
        self.permit = v[2:7]
        self._from = v[7]
        self.permit_used = v[8]
        if n >= _MISSED_STATE_SIZE:
            self.unrecorded, self.pending = struct.unpack_from("<II", st, 36)
        if n == _STATE_SIZE:
            ops = [struct.unpack_from("<I", st, 44 + 4 * i)[0] for i in range(4)]
            self.operators = tuple(op for op in ops if op)
        return v[0], v[1]

    def _write_state(self, boot_id, acked, permit=None, used=0, unrecorded=-1, pending=-1,
                     operators=None):
        # Also a snapshot of what the records count: the impressions before next_counter are in
        # `used` from now on, the UNRECORDED and ALARM records before it are taken off
        # `unrecorded` and `pending`, so compaction may delete those records.
        if permit is None:
            permit = self.permit
            used = self.permit_used
        if operators is None:
            operators = self.operators
        if unrecorded < 0:
            unrecorded = self.unrecorded
        if pending < 0:
            pending = self.pending
        st = self._state
        struct.pack_into("<IIIIIIIIIII", st, 0, boot_id, acked, permit[0], permit[1], permit[2],
                         permit[3], permit[4], self.next_counter, used, unrecorded, pending)
        for i in range(4):
            struct.pack_into("<I", st, 44 + 4 * i, operators[i] if i < len(operators) else 0)
        struct.pack_into("<I", st, _STATE_SIZE - 4,
                         binascii.crc32(memoryview(st)[: _STATE_SIZE - 4]))
        tmp = self._path("state.tmp")
        with open(tmp, "wb") as f:
            f.write(st)
        # littlefs renames atomically: a cut leaves either the old state or the new one.
        os.rename(tmp, self._path("state"))

    def _scan(self, first, is_first, is_tail):
        # Check every record of a segment; only the newest segment may end in a torn record.
        if first != self.next_counter and not is_first:
            raise JournalCorrupt(_EIO, f"gap before segment {first}")
        expect = first
        good = 0
        count = 0
        path = self._path(_seg_name(first))
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            while good < size:
                n = self._read_record(f, expect, size - good)
                if n < 0:
                    break
                rec = self._mv[_HDR:n]
                self.last_hash = hashlib.sha256(rec).digest()
                if expect >= self._from:
                    self._count(rec)
                good += n
                expect += 1
                count += 1
        self.next_counter = expect
        if good < size:
            if not is_tail:
                raise JournalCorrupt(_EIO, f"bad record in segment {first}")
            self.discarded += 1
        if count == 0:
            # An empty segment is a creation whose first record never committed.
            if not is_tail:
                raise JournalCorrupt(_EIO, f"empty segment {first}")
            os.remove(path)
            del self._segs[-1:]  # not pop(): that would give back half the storage
        elif good < size:
            self._truncate(path, good)

    def _count(self, rec):
        # What a record made after `state` was written counts for (SPEC §10.1): an IMPRESSION
        # its permit's use, an UNRECORDED record the presses it reports, an ALARM record its
        # alarm. Read by position, in the order seal.events writes the keys; anything else
        # counts for nothing.
        if len(rec) < 8 or not _MAP11 <= rec[0] <= _MAP12 or rec[1] != 0 or rec[2] != _EVENT:
            return
        i = 3
        key = 1
        while True:
            if i + 2 > len(rec) or rec[i] != key:
                return
            head = rec[i + 1]
            if head < 24:
                v = head
                i += 2
            elif head == 0x18 and i + 3 <= len(rec):
                v = rec[i + 2]
                i += 3
            elif head == 0x19 and i + 4 <= len(rec):
                v = struct.unpack_from(">H", rec, i + 2)[0]
                i += 4
            elif head == 0x1A and i + 6 <= len(rec):
                v = struct.unpack_from(">I", rec, i + 2)[0]
                i += 6
            elif head == 0x1B and i + 10 <= len(rec):
                v = struct.unpack_from(">Q", rec, i + 2)[0]
                i += 10
            else:
                return
            if key == _EV_KIND:
                kind = v
            elif key == _EV_PERMIT:
                permit = v
            elif key == _EV_CAUSE:
                break
            if key < _EV_OPERATOR:
                key += 1
            elif kind == _KIND_IMPRESSION:
                if self.permit[0] and permit == self.permit[0]:
                    self.permit_used += 1
                return
            elif rec[0] == _MAP11:
                return
            else:
                i += _PREV_AND_SIG
                key = _EV_CAUSE
        if kind == _KIND_UNRECORDED:
            self.unrecorded = self.unrecorded - v if v < self.unrecorded else 0
        elif kind == _KIND_ALARM and v < 32:
            self.pending &= ~(1 << v)

    def _read_record(self, f, expect, left):
        # Returns the record length, or -1 if the bytes at the file position are no record.
        mv = self._mv
        if left < _HDR or f.readinto(mv[:_HDR]) != _HDR:
            return -1
        length, counter, crc = struct.unpack_from("<HII", self._buf)
        if length == 0 or length > _MAX_PAYLOAD or counter != expect or _HDR + length > left:
            return -1
        if f.readinto(mv[_HDR : _HDR + length]) != length:
            return -1
        if binascii.crc32(mv[_HDR : _HDR + length], binascii.crc32(mv[:6])) != crc:
            return -1
        return _HDR + length

    def _truncate(self, path, good):
        tmp = path + ".tmp"
        mv = self._mv
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            left = good
            while left:
                n = src.readinto(mv[: min(left, len(mv))])
                dst.write(mv[:n])
                left -= n
        os.rename(tmp, path)

    def _check(self):
        if self._broken:
            raise OSError(_EIO, "not open")

    def new_boot(self):
        self._check()
        if self.boot_id >= _MAX_U32:
            raise OSError(_EIO, "boot_id exhausted")
        self._broken = True
        self._write_state(self.boot_id + 1, self.acked)
        self.boot_id += 1
        self._from = self.next_counter
        self._broken = False
        return self.boot_id

    def set_permit(self, permit, used=0, operators=None):
        # Install (or, with used = its use so far, revoke) a permit durably; it takes effect,
        # in RAM too, only once `state` was replaced. Raises OSError with nothing changed.
        # operators: the ones it names (None: those of the permit installed, for a revoke).
        self._check()
        self._broken = True
        self._write_state(self.boot_id, self.acked, permit, used, operators=operators)
        self.permit = permit
        self.permit_used = used
        if operators is not None:
            self.operators = operators
        self._from = self.next_counter
        self._broken = False

    def missed(self, code=0):
        # The trace of a record that could not be made, kept in `state` (one write) until a
        # record reports it: code 0, one more press without a record (UNRECORDED); else the
        # alarm `code` without its record (ALARM). Raises OSError with nothing changed.
        unrecorded = self.unrecorded + (0 if code else 1)
        pending = self.pending | (1 << code if code else 0)
        if pending == self.pending and unrecorded == self.unrecorded:
            return
        self._check()
        self._broken = True
        self._write_state(self.boot_id, self.acked, unrecorded=unrecorded, pending=pending)
        self.unrecorded = unrecorded
        self.pending = pending
        self._from = self.next_counter
        self._broken = False

    def draft(self):
        # The payload area of the journal's buffer, lent to whoever builds the next record
        # (seal.events): append(counter, draft[:n]) then has nothing to copy.
        self._held = 0
        return self._mv[_HDR:]

    def append(self, counter, payload):
        self._check()
        if not self.boot_id:
            raise ValueError("append before new_boot")
        if counter != self.next_counter:
            raise ValueError(f"counter {counter}, expected {self.next_counter}")
        n = len(payload)
        if n == 0 or n > _MAX_PAYLOAD:
            raise ValueError("payload size")
        # No room for any record; the reserve is kept from IMPRESSIONs by seal.events, which
        # knows what it records before it asks the chip to sign it.
        if self.exhausted:
            raise JournalFull()
        self._held = 0
        buf = self._buf
        struct.pack_into("<HI", buf, 0, n, counter)
        # A no-op when the payload was built in draft().
        buf[_HDR : _HDR + n] = payload
        mv = self._mv
        struct.pack_into("<I", buf, 6, binascii.crc32(mv[_HDR : _HDR + n], binascii.crc32(mv[:6])))
        new_seg = not self._segs or self._tail_count >= self._seg_events
        first = counter if new_seg else self._segs[-1]
        # Until close() returns, littlefs may or may not hold the record: any failure leaves
        # the journal unusable until open() rescans the flash.
        self._broken = True
        with open(self._path(_seg_name(first)), "ab") as f:
            f.write(mv[: _HDR + n])
        if new_seg:
            self._segs.append(first)
            self._tail_count = 0
        self._tail_count += 1
        self.next_counter = counter + 1
        self.last_hash = hashlib.sha256(mv[_HDR : _HDR + n]).digest()
        # An impression counts against its permit in the same append that records it, an
        # UNRECORDED or ALARM record takes back what it reports.
        self._count(mv[_HDR : _HDR + n])
        self._held = counter
        self._broken = False

    def read(self, counter):
        # A copy of record `counter`'s payload, or None if the journal does not hold it.
        view = self.record(counter)
        return None if view is None else bytes(view)

    def record(self, counter):
        # Record `counter`'s payload as a view of the journal's buffer, valid until the next
        # journal call (no copy: the link frames it straight away), or None if not held.
        self._check()
        segs = self._segs
        if not segs or counter < segs[0] or counter >= self.next_counter:
            return None
        if counter == self._held:
            return self._mv[_HDR : _HDR + struct.unpack_from("<H", self._buf)[0]]
        self._held = 0
        lo = 0
        hi = len(segs)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if segs[mid] <= counter:
                lo = mid
            else:
                hi = mid
        first = segs[lo]
        hdr = self._mv[:_HDR]
        with open(self._path(_seg_name(first)), "rb") as f:
            for _ in range(counter - first):
                if f.readinto(hdr) != _HDR:
                    raise JournalCorrupt(_EIO, "short segment")
                f.seek(struct.unpack_from("<H", self._buf)[0], 1)
            n = self._read_record(f, counter, _HDR + _MAX_PAYLOAD)
        if n < 0:
            raise JournalCorrupt(_EIO, f"bad record {counter}")
        self._held = counter
        return self._mv[_HDR:n]

    def ack(self, counter):
        self._check()
        if counter <= self.acked:
            return
        if counter >= self.next_counter:
            raise ValueError(f"ack {counter} beyond last record")
        self.acked = counter
        self._compact()

    def _compact(self):
        # Delete segments whose records are all acked, never the newest: it holds the
        # counter and hash the next record continues from.
        segs = self._segs
        dead = 0
        while dead < len(segs) - 1 and segs[dead + 1] - 1 <= self.acked:
            dead += 1
        if not dead:
            return
        self._broken = True
        # State first: were the cut to come between, acked is still known from it.
        self._write_state(self.boot_id, self.acked)
        self._from = self.next_counter
        for i in range(dead):
            os.remove(self._path(_seg_name(segs[i])))
        del segs[:dead]
        self._broken = False
