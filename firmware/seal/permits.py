# The permit from the host (SPEC §5.7): one installed at a time, `count` impressions inside
# [not_before_s, not_after_s] (both 0: no window); ids only ever increase, across reboots too.
# Durable (SPEC §10.1, §12): the journal keeps the permit in `state` and counts its use from
# the IMPRESSION records, so neither a reboot nor a power cut gives an impression back.
import asyncio
import hashlib
import os
from micropython import const
from time import ticks_diff, ticks_ms

from seal.sensor import Debouncer

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_R_BAD_FIELD = const(1)
_R_EXPIRED = const(2)
_R_NO_TIME = const(4)
_R_OK = const(0)
_R_UNKNOWN_PERMIT = const(3)
_OP_ID = const(1)
_OP_SALT = const(2)
_OP_PIN = const(3)
_OP_CARD = const(4)
_AL_PIN_LOCKOUT = const(11)
_MAX_OPERATORS = const(16)
_IDENT_WINDOW_MS = const(60000)
_DIGIT_TIMEOUT_MS = const(5000)
_PIN_FAILURES = const(3)
_PIN_LOCKOUT_MS = const(300000)
_ENOENT = const(2)

# The journal stores the permit's fields as u32: a larger count or time is clamped to this,
# which only ever allows less (fewer impressions, a later start, 2106 as the end).
_U32 = const(0xFFFFFFFF)


class Permits:
    def __init__(self, clock, journal=None, ident=None):
        self._clock = clock
        # Who identified at the seal (Ident below), None on a board with no keypad or reader.
        self.ident = ident
        # The operator who held the permit open when active() last looked (SPEC §5.7).
        self._held = 0
        # The journal keeps the permit; without one (the permit unit tests, no flash)
        # this object keeps the same two fields in RAM and use() counts.
        self._ram = journal is None
        self._store = self if journal is None else journal
        self.permit = (0, 0, 0, 0, 0)
        self.permit_used = 0
        self.operators = ()

    def set_permit(self, permit, used=0, operators=None):
        # The RAM-only store (no journal); the journal's own set_permit writes `state`.
        self.permit = permit
        self.permit_used = used
        if operators is not None:
            self.operators = operators

    @property
    def id(self):
        # The installed permit, 0 if none was ever installed.
        return self._store.permit[0]

    @property
    def left(self):
        s = self._store
        left = s.permit[1] - s.permit_used
        return left if left > 0 else 0

    @property
    def operator(self):
        # The operator the records name: under a permit that names operators (SPEC §4.1,
        # §5.7), the one who identified and so opened it, as active() decided with the lock.
        return self._held if self._store.operators else self._store.permit[4]

    def grant(self, permit, count, not_before_s, not_after_s, operator, operators=b""):
        # Raises OSError when the permit could not be stored: it is then not installed.
        # operators: PERMIT key 6 as sent, big-endian u32 ids (absent: b"").
        ops = operators
        if not_before_s > not_after_s:
            return _R_BAD_FIELD
        ids = tuple(int.from_bytes(ops[i:i + 4], "big") for i in range(0, len(ops), 4))
        if 0 in ids:
            return _R_BAD_FIELD
        installed = self.id
        if permit == installed:
            return _R_OK  # a resend after a lost RESULT or a reboot: the remaining count stays
        if permit < installed:
            return _R_UNKNOWN_PERMIT
        if not_after_s:
            now = self._clock()
            if now == 0:
                return _R_NO_TIME
            if not_after_s < now:
                return _R_EXPIRED
        self._store.set_permit((permit, min(count, _U32), min(not_before_s, _U32),
                                min(not_after_s, _U32), operator), 0, ids)
        return _R_OK

    def revoke(self, permit):
        # Durable as a grant is: the count shrinks to what was used. Raises OSError if not stored.
        s = self._store
        if permit > s.permit[0] or permit == 0:
            return _R_UNKNOWN_PERMIT
        if permit == s.permit[0] and self.left:
            p = s.permit
            s.set_permit((p[0], s.permit_used, p[2], p[3], p[4]), s.permit_used)
        return _R_OK

    def installed(self):
        # The permit is installed and neither exhausted, expired nor revoked.
        if self.left == 0:
            return False
        not_after_s = self._store.permit[3]
        return not_after_s == 0 or self._clock() <= not_after_s

    def active(self):
        # The permit id if it allows an impression right now, else 0.
        if not self.installed():
            return 0
        p = self._store.permit
        if p[3]:
            now = self._clock()
            if now == 0 or now < p[2]:
                return 0
        named = self._store.operators
        if named:
            # Only while one of the operators it names has identified (SPEC §5.7).
            self._held = self.ident.active() if self.ident else 0
            if self._held not in named:
                return 0
        return p[0]

    def use(self):
        # After an IMPRESSION's append returned. The journal counted it in that append already.
        if self._ram and self.left:
            self._store.permit_used += 1


# --- Operator identity at the seal (SPEC §5.7) ----------------------------------------------
# A PIN typed on the keypad or a card held to the NFC reader, checked against the operator table
# the host sets (OPERATOR), kept on flash. The HAL's inputs: keypad.value() the ASCII code of the
# key held (0: none), nfc.value() the UID of the card in the field (None: none), irq(handler).
# Here, beside the permit it opens, and with names the firmware already has: every new name and
# module costs RAM (SPEC §13: the emulated BLE board's interned names fill a pool near 620).

# One entry of the table file: operator id (u32 little-endian), salt (16), SHA-256 of salt ||
# PIN (32), SHA-256 of salt || card UID (32); a hash of zeros: no such credential. Read one
# entry at a time into one buffer: the table never sits in RAM.
_ENTRY = const(84)
_PIN_AT = const(20)
_CARD_AT = const(52)
# Longer entries are typed, and refused as a wrong PIN, but not kept.
_MAX_DIGITS = const(8)
_KEY_ENTER = const(35)  # '#'
_KEY_CLEAR = const(42)  # '*'
# A keypad's contacts bounce for a few ms: a key counts once it read the same for 20 ms.
_SAMPLE_MS = const(5)
_KEY_STABLE_MS = const(20)


class Ident:
    def __init__(self, root, now_ms=ticks_ms):
        # The table, and beside it ("0") the count of wrong PINs in a row.
        self._path = root + ".ops"
        self._clock = now_ms
        self._buf = bytearray(_ENTRY)
        self.operator = 0
        self._since = 0
        # On flash: a power cycle must not give an attacker new tries. A seal that boots
        # locked out starts the lockout again from its boot.
        self.failures = 0
        try:
            with open(self._path + "0", "rb") as f:
                self.failures = f.read(1)[0]
        except (OSError, IndexError):
            pass
        # When the lockout began; None: not locked out.
        self._timer_ms = now_ms() if self.failures >= _PIN_FAILURES else None

    def active(self):
        # The operator who identified within the window, else 0.
        if self.operator and ticks_diff(self._clock(), self._since) >= _IDENT_WINDOW_MS:
            self.operator = 0
        return self.operator

    def _check(self, payload, offset):
        # The operator whose PIN (offset _PIN_AT) or card (_CARD_AT) this is, else 0; -1 while
        # locked out (nothing is checked). A card UID is no secret to guess digit by digit: an
        # unknown card counts no failure.
        now = self._clock()
        if self._timer_ms is not None:
            if ticks_diff(now, self._timer_ms) < _PIN_LOCKOUT_MS:
                return -1
            self._timer_ms = None
            self._write(0)
        op = 0
        entry = self._buf
        view = memoryview(entry)
        try:
            with open(self._path, "rb") as f:
                while not op and f.readinto(entry) == _ENTRY:
                    digest = hashlib.sha256(view[4:20])
                    digest.update(payload)
                    # Every byte compared whatever the first difference: the time tells nothing.
                    d = 0
                    for i, b in enumerate(digest.digest()):
                        d |= b ^ entry[offset + i]
                    if not d:
                        op = int.from_bytes(view[:4], "little")
        except OSError:
            pass  # no table, or one that cannot be read: nobody identifies (fail closed)
        if op:
            self.operator = op
            self._since = now
            if self.failures and offset == _PIN_AT:
                self._write(0)
        elif offset == _PIN_AT:
            self._write(min(self.failures + 1, 255))
            if self.failures >= _PIN_FAILURES:
                self._timer_ms = now
        return op

    def _write(self, n):
        # The count of wrong PINs, written before it counts, as the journal's `state` is: a tmp
        # file, then an atomic rename.
        path = self._path + "0"
        with open(path + ".tmp", "wb") as f:
            f.write(bytes((n,)))
        os.rename(path + ".tmp", path)
        self.failures = n

    def command(self, msg):
        # OPERATOR: set (or, with neither credential, remove) one operator's entry. The table
        # is rewritten beside itself and renamed over it: a power cut leaves the old or the new.
        # Raises OSError with nothing changed.
        op = msg[_OP_ID]
        pin = msg[_OP_PIN]
        card = msg[_OP_CARD]
        entry = self._buf
        tmp = self._path + ".tmp"
        kept = 0
        with open(tmp, "wb") as out:
            try:
                with open(self._path, "rb") as f:
                    while f.readinto(entry) == _ENTRY:
                        if int.from_bytes(entry[:4], "little") != op:
                            out.write(entry)
                            kept += 1
            except OSError as e:
                if e.errno != _ENOENT:
                    raise
            if pin or card:
                if kept >= _MAX_OPERATORS:
                    kept = -1
                else:
                    entry[:] = bytes(_ENTRY)
                    entry[:4] = op.to_bytes(4, "little")
                    entry[4:20] = msg[_OP_SALT]
                    if pin:
                        entry[_PIN_AT:_CARD_AT] = pin
                    if card:
                        entry[_CARD_AT:] = card
                    out.write(entry)
        if kept < 0:
            os.remove(tmp)
            return _R_BAD_FIELD
        os.rename(tmp, self._path)
        if self.operator == op:
            self.operator = 0  # a changed credential identifies again
        return _R_OK

    async def watch(self, keypad, nfc, guard, report, interval_ms=_DIGIT_TIMEOUT_MS):
        # One task for both inputs (a task costs RAM), woken by either one's IRQ. The keypad's
        # IRQ fires on any key's edge; the keys are then sampled until the reading settles.
        # '#' ends an entry, '*' clears it, and digits more than interval_ms apart start a new
        # one (an entry abandoned half-typed is not kept). The reader's IRQ says a card came
        # into the field; its UID is read then. None: the board lacks that input.
        flag = asyncio.ThreadSafeFlag()

        def _set(_pin):
            flag.set()

        def _record(op, failures):
            report("ident", op)
            if self.failures >= _PIN_FAILURES > failures:
                guard.record_alarm(_AL_PIN_LOCKOUT, self.failures)
            guard.update_lock()

        for source in (keypad, nfc):
            if source:
                source.irq(_set)
        deb = Debouncer(_KEY_STABLE_MS)
        digits = bytearray(_MAX_DIGITS + 1)
        n = 0
        last = 0
        while True:
            uid = nfc.value() if nfc else None
            if uid:
                _record(self._check(uid, _CARD_AT), self.failures)
            while keypad:
                now = ticks_ms()
                key = deb.sample(keypad.value(), now)
                if key:
                    if n and ticks_diff(now, last) > interval_ms:
                        n = 0
                    last = now
                    if key == _KEY_ENTER and n:
                        failures = self.failures
                        _record(self._check(bytes(digits[:n]), _PIN_AT), failures)
                        n = 0
                    elif key in (_KEY_CLEAR, _KEY_ENTER):
                        n = 0
                    else:
                        digits[min(n, _MAX_DIGITS)] = key
                        n = min(n + 1, _MAX_DIGITS + 1)
                if deb.settled():
                    break
                await asyncio.sleep_ms(_SAMPLE_MS)
            await flag.wait()
