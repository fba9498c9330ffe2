# The event record (SPEC §4.1): built, MACed with the device key and journaled durably
# before it counts. The counter and chain advance only after the journal accepted the record.
from micropython import const
from time import ticks_diff, ticks_ms

from sealproto import auth, codec

from seal.journal import JournalFull

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_EV_BOOT = const(2)
_EV_COUNTER = const(1)
_EV_KIND = const(5)
_EV_OPERATOR = const(7)
_EV_PERMIT = const(6)
_EV_PREV = const(8)
_EV_TIME = const(4)
_EV_UPTIME = const(3)
_EVENT = const(4)
_K_TYPE = const(0)

_COUNTER_MAX = const(0xFFFFFFFF)


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


class Recorder:
    def __init__(self, journal, key, boot_id, clock, uptime):
        self._journal = journal
        self._key = key
        self._boot_id = boot_id
        self._clock = clock
        self._uptime = uptime
        self.resync()

    def resync(self):
        self.next_counter = self._journal.next_counter
        self.prev = self._journal.last_hash

    def record(self, kind, permit=0, operator=0):
        # Raises JournalFull or OSError with nothing advanced.
        counter = self.next_counter
        if counter > _COUNTER_MAX:
            raise JournalFull()
        msg = {
            _K_TYPE: _EVENT,
            _EV_COUNTER: counter,
            _EV_BOOT: self._boot_id,
            _EV_UPTIME: self._uptime.ms(),
            _EV_TIME: self._clock(),
            _EV_KIND: kind,
            _EV_PERMIT: permit,
            _EV_OPERATOR: operator,
            _EV_PREV: self.prev,
        }
        payload = codec.encode(auth.sign(msg, self._key))
        self._journal.append(counter, payload)
        self.prev = auth.record_hash(payload)
        self.next_counter = counter + 1
        return counter
