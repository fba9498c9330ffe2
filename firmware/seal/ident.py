# Operator identity at the seal (SPEC §5.7): a PIN typed on the keypad or a card held to the NFC
# reader, checked against the operator table the host sets (OPERATOR), which is kept on flash.
import asyncio
import hashlib
import os
from micropython import const
from time import ticks_diff, ticks_ms

from seal.sensor import Debouncer

# Wire numbers and timers of sealproto (SPEC §4, §5.1, §7) as const: a name imported from
# there costs RAM. firmware/tests/test_wire_constants.py checks them against sealproto.
_R_OK = const(0)
_R_BAD_FIELD = const(1)
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
_STABLE_MS = const(20)
_ENOENT = const(2)


class Ident:
    def __init__(self, root, now_ms=ticks_ms):
        self._path = root + ".ops"
        self._fails_path = root + ".pinfail"
        self._now = now_ms
        self._entry = bytearray(_ENTRY)
        self._who = 0
        self._at = 0
        # Wrong PINs in a row, on flash: a power cycle must not give an attacker new tries. A
        # seal that boots locked out starts the lockout again from its boot.
        self.failures = 0
        try:
            with open(self._fails_path, "rb") as f:
                self.failures = f.read(1)[0]
        except (OSError, IndexError):
            pass
        self._locked_at = now_ms() if self.failures >= _PIN_FAILURES else None

    def who(self):
        # The operator who identified within the window, else 0.
        if self._who and ticks_diff(self._now(), self._at) >= _IDENT_WINDOW_MS:
            self._who = 0
        return self._who

    def locked(self):
        if self._locked_at is None:
            return False
        if ticks_diff(self._now(), self._locked_at) < _PIN_LOCKOUT_MS:
            return True
        self._locked_at = None
        self._fail(0)
        return False

    def pin(self, digits):
        # The operator whose PIN this is, else 0; -1 while locked out (nothing is checked).
        if self.locked():
            return -1
        op = self._find(digits, _PIN_AT)
        if op:
            if self.failures:
                self._fail(0)
        else:
            self._fail(min(self.failures + 1, 255))
            if self.failures >= _PIN_FAILURES:
                self._locked_at = self._now()
        return self._seen(op)

    def card(self, uid):
        # A card UID is no secret to guess one digit at a time: an unknown card counts no failure.
        if self.locked():
            return -1
        return self._seen(self._find(uid, _CARD_AT))

    def _seen(self, op):
        if op:
            self._who = op
            self._at = self._now()
        return op

    def _fail(self, n):
        # Written before it counts, as the journal's `state` is: tmp then an atomic rename.
        tmp = self._fails_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(bytes((n,)))
        os.rename(tmp, self._fails_path)
        self.failures = n

    def _find(self, secret, at):
        # No table, or one that cannot be read: nobody identifies (fail closed).
        entry = self._entry
        view = memoryview(entry)
        try:
            with open(self._path, "rb") as f:
                while f.readinto(entry) == _ENTRY:
                    digest = hashlib.sha256(view[4:20])
                    digest.update(secret)
                    if _same(digest.digest(), view[at:at + 32]):
                        return int.from_bytes(view[:4], "little")
        except OSError:
            pass
        return 0

    def command(self, msg):
        # OPERATOR: set (or, with neither credential, remove) one operator's entry. The table
        # is rewritten beside itself and renamed over it: a power cut leaves the old or the new.
        # Raises OSError with nothing changed.
        op = msg[_OP_ID]
        pin = msg[_OP_PIN]
        card = msg[_OP_CARD]
        entry = self._entry
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
        if self._who == op:
            self._who = 0  # a changed credential identifies again
        return _R_OK


def _same(a, b):
    # Every byte compared whatever the first difference: the time taken tells nothing.
    d = 0
    for i in range(32):
        d |= a[i] ^ b[i]
    return d == 0


def _entered(op, ident, failures, guard, report):
    report("ident", op)
    if ident.failures >= _PIN_FAILURES > failures:
        guard.record_alarm(_AL_PIN_LOCKOUT, ident.failures)
    guard.update_lock()


async def keys(keypad, flag, ident, guard, report, digit_timeout_ms=_DIGIT_TIMEOUT_MS):
    # A matrix keypad: the IRQ on any key's edge sets the flag; then the keys are sampled until
    # the reading settles. '#' ends an entry, '*' clears it, and digits more than
    # DIGIT_TIMEOUT_MS apart start a new one (an entry abandoned half-typed is not kept).
    keypad.irq(lambda _k: flag.set())
    deb = Debouncer(_STABLE_MS)
    digits = bytearray(_MAX_DIGITS + 1)
    n = 0
    last = 0
    while True:
        while True:
            now = ticks_ms()
            key = deb.sample(keypad.key(), now)
            if key:
                if n and ticks_diff(now, last) > digit_timeout_ms:
                    n = 0
                last = now
                if key == _KEY_ENTER and n:
                    before = ident.failures
                    _entered(ident.pin(bytes(digits[:n])), ident, before, guard, report)
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


async def cards(nfc, flag, ident, guard, report):
    # The reader's IRQ line says a card came into the field; its UID is read then.
    nfc.irq(lambda _n: flag.set())
    while True:
        await flag.wait()
        uid = nfc.uid()
        if uid:
            _entered(ident.card(uid), ident, ident.failures, guard, report)
