# The event record (SPEC §4.1): built in the journal's own record buffer, signed by the seal's
# security chip, MACed with the link key, then journaled durably before it counts. The journal
# owns the counter and chain head; the chip owns the key that makes the record the seal's, and
# counts every record in a counter nobody can set back: a flash image restored from earlier
# holds fewer records than the chip counted (SPEC §10.4).
import hashlib
import struct
from micropython import const
from time import ticks_diff, ticks_ms

from seal.journal import JournalFull

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_EV_BOOT = const(2)
_EV_CAUSE = const(10)
_EV_COUNTER = const(1)
_EV_KIND = const(5)
_EV_OPERATOR = const(7)
_EV_PERMIT = const(6)
_EV_PREV = const(8)
_EV_SIG = const(9)
_EV_TIME = const(4)
_EV_UPTIME = const(3)
_EVENT = const(4)
_K_MAC = const(15)
_K_TYPE = const(0)
_KIND_IMPRESSION = const(0)
_KIND_REBOOT = const(4)
_CA_ROLLBACK = const(2)
_CA_NEW_JOURNAL = const(4)
_CA_MISSING_SHIFT = const(8)

_COUNTER_MAX = const(0xFFFFFFFF)
# CBOR heads (RFC 8949 §3): a map of 9 entries (the record without its signature and MAC), a
# 32-byte and a 64-byte string.
_MAP9 = const(0xA9)
_BYTES32 = const(0x5820)
_BYTES64 = const(0x5840)
_SIG_LEN = const(64)
# The chip's key slot that holds the seal key (seal/atecc.py provisions it).
_SEAL_KEY_SLOT = const(0)
# The chip's monotonic counters: 0 counts every record made, 1 every record a journal lost (a
# rollback found, counted so that it is reported once). So at every boot, unless flash was lost:
# counter 0 == counter 1 + the records the journal holds and held (next_counter - 1). Both in
# the chip, where no copy of the flash reaches them; they stop at 2,097,151.
_MADE = const(0)
_LOST = const(1)
_CHIP_COUNTER_MAX = const(2097151)
# HMAC-SHA256 (RFC 2104): the key padded to SHA-256's 64-byte block, XORed with these.
_BLOCK = const(64)
_IPAD = const(0x36)
_OPAD_FROM_IPAD = const(0x6A)  # 0x36 ^ 0x5C
# The padded key is made in the draft buffer behind the longest EVENT (192 bytes, with a cause).
_PAD_AT = const(192)


class Uptime:
    # ticks_ms wraps (2**30 ms on boards, ~12 days); adding up the deltas keeps uptime
    # monotonic as long as ms() runs more often than every half wrap (housekeeping does).
    def __init__(self, ticks=ticks_ms):
        self._ticks = ticks
        self._last = ticks()
        self._ms = 0

    def ms(self):
        now = self._ticks()
        self._ms += ticks_diff(now, self._last)
        self._last = now
        return self._ms


def _uint(buf, i, key, value):
    # Map key, then the shortest head of an unsigned integer (SPEC §3): the bytes
    # sealproto.codec.encode writes, proven equal by mp_wire.py.
    buf[i] = key
    if value < 24:
        buf[i + 1] = value
        return i + 2
    if value < 0x100:
        buf[i + 1] = 0x18
        buf[i + 2] = value
        return i + 3
    if value < 0x10000:
        buf[i + 1] = 0x19
        struct.pack_into(">H", buf, i + 2, value)
        return i + 4
    if value < 0x100000000:
        buf[i + 1] = 0x1A
        struct.pack_into(">I", buf, i + 2, value)
        return i + 6
    buf[i + 1] = 0x1B
    struct.pack_into(">Q", buf, i + 2, value)
    return i + 10


class Recorder:
    def __init__(self, journal, key, chip, clock, uptime):
        self._journal = journal
        self._clock = clock
        self._uptime = uptime
        self._key = key
        self._chip = chip
        # Counter 0 as last read or incremented; 1 while a committed record is not yet counted
        # (its increment failed): the next record counts it first.
        self._made = 0
        self.lag = 0
        # Records the chip counted that the journal does not hold (found by audit()).
        self.missing = 0
        # The OSError record() raised came from the chip, not the journal (a flag, not a class
        # of exception: a class costs the heap more than the firmware can spare).
        self.chip_failed = False

    def audit(self):
        # At boot, before any record: compares the chip's count with the journal's. Returns 0,
        # or the REBOOT cause of records missing (ROLLBACK, or NEW_JOURNAL when the journal holds
        # none) with their number, which the chip counts as lost once a REBOOT has reported
        # them. Raises OSError: the chip failed.
        chip = self._chip
        made = chip.counter(_MADE)
        held = chip.counter(_LOST) + self._journal.next_counter - 1
        # Behind: power was cut after a record's append and before its count, which the chip's
        # count now catches up with. Never a rollback: that leaves the chip ahead.
        while made < held and made < _CHIP_COUNTER_MAX:
            made = chip.increment_counter(_MADE)
        self._made = made
        self.lag = 0
        # At its maximum the chip's count is a floor: a rollback is seen down to below it.
        self.missing = made - held if made > held else 0
        if not self.missing:
            return 0
        cause = _CA_ROLLBACK if self._journal.next_counter > 1 else _CA_NEW_JOURNAL
        return cause | self.missing << _CA_MISSING_SHIFT

    def check_chip(self):
        # Whether the chip answers: counts the record it did not count, or reads its count.
        # Raises OSError.
        if self.lag:
            self._made = self._chip.increment_counter(_MADE)
            self.lag = 0
        else:
            self._made = self._chip.counter(_MADE)

    def record(self, kind, permit=0, operator=0, cause=None):
        # Raises JournalFull or OSError (chip_failed says whose) with nothing advanced.
        # `cause`: SPEC §4.1 key 10, on REBOOT, ALARM and UNRECORDED records only.
        journal = self._journal
        counter = journal.next_counter
        # Checked before the chip's work too: with the reserve used up, every press comes here.
        if counter > _COUNTER_MAX or journal.exhausted or (
                kind == _KIND_IMPRESSION and journal.full):
            raise JournalFull()
        self.chip_failed = True
        if self.lag:
            self.check_chip()
        # The longest EVENT is 192 bytes (SPEC §4.5): the journal's buffer holds 480.
        buf = journal.draft()
        buf[0] = _MAP9
        buf[1] = _K_TYPE
        buf[2] = _EVENT
        n = _uint(buf, 3, _EV_COUNTER, counter)
        n = _uint(buf, n, _EV_BOOT, journal.boot_id)
        n = _uint(buf, n, _EV_UPTIME, self._uptime.ms())
        n = _uint(buf, n, _EV_TIME, self._clock())
        n = _uint(buf, n, _EV_KIND, kind)
        n = _uint(buf, n, _EV_PERMIT, permit)
        n = _uint(buf, n, _EV_OPERATOR, operator)
        buf[n] = _EV_PREV
        struct.pack_into(">H", buf, n + 1, _BYTES32)
        buf[n + 3 : n + 35] = journal.last_hash
        n += 35
        # The chip signs the map without keys 9 and 15 (SPEC §4.1), then key 9 follows: one
        # more map entry, 67 bytes, the signature written by the driver straight into place.
        # The cause (key 10) sorts after it, so it is written where it will stay and hashed
        # from there. A chip fault raises with nothing journaled: the press fails closed.
        end = n + 3 + _SIG_LEN
        if cause is not None:
            buf[0] = _MAP9 + 1
            end = _uint(buf, end, _EV_CAUSE, cause)
        h = hashlib.sha256(buf[:n])
        if cause is not None:
            h.update(buf[n + 3 + _SIG_LEN : end])
        self._chip.sign_digest(_SEAL_KEY_SLOT, h.digest(), buf[n + 3 : n + 3 + _SIG_LEN])
        self.chip_failed = False
        buf[0] += 1
        buf[n] = _EV_SIG
        struct.pack_into(">H", buf, n + 1, _BYTES64)
        n = end
        # The MAC covers the map without key 15; key 15 sorts last, so adding it is one more
        # map entry and 35 bytes at the end. The key's two padded blocks are made in place,
        # one after the other: nothing but the two hash objects is allocated, and no pad lives
        # on in RAM (sealproto.auth.hmac_sha256 builds them from big integers).
        key = self._key
        pad = buf[_PAD_AT : _PAD_AT + _BLOCK]
        for i in range(_BLOCK):
            pad[i] = key[i] ^ _IPAD if i < len(key) else _IPAD
        h = hashlib.sha256(pad)
        h.update(buf[:n])
        inner = h.digest()
        for i in range(_BLOCK):
            pad[i] ^= _OPAD_FROM_IPAD
        h = hashlib.sha256(pad)
        h.update(inner)
        buf[0] += 1
        buf[n] = _K_MAC
        struct.pack_into(">H", buf, n + 1, _BYTES32)
        buf[n + 3 : n + 35] = h.digest()
        journal.append(counter, buf[: n + 35])
        # The record counts now: so does the chip (past its maximum it cannot), else `lag`
        # stays for the next record to pay first. Once a REBOOT reported them, the missing
        # records count as lost, so no later boot reports them again; a cut before leaves the
        # rest for the next boot to report.
        chip = self._chip
        try:
            if self._made < _CHIP_COUNTER_MAX:
                self.lag = 1
                self._made = chip.increment_counter(_MADE)
            self.lag = 0
            while self.missing and kind == _KIND_REBOOT:
                chip.increment_counter(_LOST)
                self.missing -= 1
        except OSError:
            pass
        return counter
