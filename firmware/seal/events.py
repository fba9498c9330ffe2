# The event record (SPEC §4.1): built in the journal's own record buffer, signed by the seal's
# security chip, MACed with the link key, then journaled durably before it counts. The journal
# owns the counter and chain head; the chip owns the key that makes the record the seal's.
import hashlib
import struct
from micropython import const
from time import ticks_diff, ticks_ms

from seal.journal import JournalFull

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_EV_BOOT = const(2)
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

_COUNTER_MAX = const(0xFFFFFFFF)
# CBOR heads (RFC 8949 §3): a map of 9 entries (the record without its signature and MAC), a
# 32-byte and a 64-byte string.
_MAP9 = const(0xA9)
_BYTES32 = const(0x5820)
_BYTES64 = const(0x5840)
_SIG_LEN = const(64)
# The chip's key slot that holds the seal key (seal/atecc.py provisions it).
_SEAL_KEY_SLOT = const(0)
# HMAC-SHA256 (RFC 2104): the key padded to SHA-256's 64-byte block, XORed with these.
_BLOCK = const(64)
_IPAD = const(0x36)
_OPAD_FROM_IPAD = const(0x6A)  # 0x36 ^ 0x5C
# The padded key is made in the draft buffer behind the longest EVENT (186 bytes).
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

    def record(self, kind, permit=0, operator=0):
        # Raises JournalFull or OSError with nothing advanced.
        journal = self._journal
        counter = journal.next_counter
        if counter > _COUNTER_MAX:
            raise JournalFull()
        # The longest EVENT is 186 bytes (SPEC §4.5): the journal's buffer holds 480.
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
        # A chip fault raises OSError with nothing journaled: the press fails closed.
        self._chip.sign_digest(
            _SEAL_KEY_SLOT,
            hashlib.sha256(buf[:n]).digest(),
            buf[n + 3 : n + 3 + _SIG_LEN],
        )
        buf[0] = _MAP9 + 1
        buf[n] = _EV_SIG
        struct.pack_into(">H", buf, n + 1, _BYTES64)
        n += 3 + _SIG_LEN
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
        buf[0] = _MAP9 + 2
        buf[n] = _K_MAC
        struct.pack_into(">H", buf, n + 1, _BYTES32)
        buf[n + 3 : n + 35] = h.digest()
        journal.append(counter, buf[: n + 35])
        return counter
