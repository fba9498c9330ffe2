# heapsize: 96k
# Operator identity at the seal (SPEC §5.7): the operator table on flash (also across power
# cuts while it is written), PINs and cards, the lockout after wrong PINs, the keypad's
# debounce and digit timeout, and a permit that names operators. The keypad and the reader are
# stand-ins with the HAL's contract (value(), irq()): the unix port has no GPIO or NFC.
import asyncio
import hashlib

import flashimg
from mpyunit import equal
from rig import NOW_S, Rig
from sealproto import messages as M
from sealproto import timers as T

from seal.guard import Guard
from seal.permits import Ident, Permits

_SALT = bytes(range(16))


def _cred(secret, salt=_SALT):
    return hashlib.sha256(salt + secret).digest()


def _op(op, pin=None, card=None, salt=_SALT):
    return {M.OP_ID: op, M.OP_SALT: salt, M.OP_PIN: _cred(pin, salt) if pin else b"",
            M.OP_CARD: _cred(card, salt) if card else b""}


class _Ticks:
    def __init__(self):
        self.ms = 5000

    def __call__(self):
        return self.ms


def _reboot(name):
    # What a power cut and a boot do to the flash: the image mounted again.
    flashimg.mount(flashimg.tmpdir() + "/" + name + ".img")


def _rig(name):
    rig = Rig(name)
    ticks = _Ticks()
    ident = _Ident(rig.journal.root, ticks)
    rig.permits = Permits(rig.clock, rig.journal, ident)
    rig.guard = Guard(rig.journal, rig.recorder, rig.permits, rig.lock, rig.led, rig._report,
                      rig.clock, rig.clock.set_ms, 3400, rig.wake)
    return rig, ident, ticks


class _Ident(Ident):
    # The firmware's Ident, with names for its two checks (offsets of the table's entry): the
    # firmware spells them _check(..., 20 or 52), since each name costs RAM on the board.
    def pin(self, digits):
        return self._check(digits, 20)

    def card(self, uid):
        return self._check(uid, 52)


def _permit(rig, permit, ops):
    msg = {M.PE_ID: permit, M.PE_COUNT: 5, M.PE_NOT_BEFORE: NOW_S - 10,
           M.PE_NOT_AFTER: NOW_S + 3600, M.PE_OPERATOR: 0}
    if ops:
        msg[M.PE_OPERATORS] = b"".join(op.to_bytes(4, "big") for op in ops)
    return rig.guard.command(M.PERMIT, msg)


def test_pin_and_card_identify_their_operator_and_survive_a_reboot():
    rig, ident, _ = _rig("ident_table")
    equal(rig.guard.command(M.OPERATOR, _op(1, pin=b"1234")), M.R_OK)
    equal(rig.guard.command(M.OPERATOR, _op(2, pin=b"9876", card=b"\x04\xa2\x2b\x91")), M.R_OK)
    equal(ident.pin(b"9876"), 2)
    equal(ident.pin(b"1234"), 1)
    equal(ident.card(b"\x04\xa2\x2b\x91"), 2)
    equal(ident.card(b"\x04\xa2\x2b\x92"), 0, "an unknown card")
    _reboot("ident_table")
    again = _Ident(rig.journal.root)
    equal((again.pin(b"9876"), again.active()), (2, 2), "the table is on flash")
    equal(again.command(_op(2)), M.R_OK, "neither credential: removed")
    equal(again.pin(b"9876"), 0)
    equal(again.pin(b"1234"), 1, "the others stay")


def test_a_full_table_refuses_a_new_operator_but_updates_a_known_one():
    _r, ident, _ = _rig("ident_full")
    for op in range(1, M.MAX_OPERATORS + 1):
        equal(ident.command(_op(op, pin=str(1000 + op).encode())), M.R_OK)
    equal(ident.command(_op(99, pin=b"0000")), M.R_BAD_FIELD, "no room")
    equal(ident.command(_op(3, pin=b"3333")), M.R_OK, "a known one is replaced in place")
    equal((ident.pin(b"3333"), ident.pin(b"1016"), ident.pin(b"0000")), (3, 16, 0))


def test_wrong_pins_lock_out_with_one_alarm_and_the_lockout_survives_a_reboot():
    rig, ident, ticks = _rig("ident_lockout")
    rig.guard.command(M.OPERATOR, _op(2, pin=b"2222", card=b"\x01\x02\x03\x04"))
    equal(ident.pin(b"1111"), 0)
    equal(ident.pin(b"2222"), 2, "a right PIN resets the count")
    equal(ident.failures, 0)
    for _ in range(T.PIN_FAILURES):
        ident.pin(b"0000")
    equal(ident.failures, T.PIN_FAILURES)
    equal(ident.pin(b"2222"), -1, "locked out: not even the right PIN")
    equal(ident.card(b"\x01\x02\x03\x04"), -1, "nor a card")
    _reboot("ident_lockout")
    rebooted = _Ident(rig.journal.root, ticks)
    equal(rebooted.pin(b"2222"), -1, "a power cycle gives no new tries")
    ticks.ms += T.PIN_LOCKOUT_MS
    equal(rebooted.pin(b"2222"), 2, "the lockout ends")
    equal(rebooted.failures, 0)


async def test_the_lockout_is_an_alarm_record():
    rig, ident, _ = _rig("ident_alarm")
    rig.guard.command(M.OPERATOR, _op(2, pin=b"2222"))
    pad = _Pad()
    task = asyncio.create_task(ident.watch(pad, None, rig.guard, rig._report))
    await asyncio.sleep_ms(30)
    for _ in range(T.PIN_FAILURES + 1):
        await pad.type("0000#")
    task.cancel()
    alarms = [c for c in rig.alarms if c == M.AL_PIN_LOCKOUT]
    equal(len(alarms), 1, "one alarm for one lockout")
    last = rig.event(rig.journal.next_counter - 1)
    equal((last[M.EV_KIND], last[M.EV_CAUSE]), (M.KIND_ALARM, M.AL_PIN_LOCKOUT))
    equal([v for n, v in rig.reports if n == "ident"][-2:], [0, -1])


def test_a_permit_naming_operators_opens_only_for_one_of_them():
    rig, ident, ticks = _rig("ident_permit")
    rig.guard.command(M.OPERATOR, _op(1, pin=b"1111"))
    rig.guard.command(M.OPERATOR, _op(2, pin=b"2222"))
    equal(_permit(rig, 7, (2, 5)), M.R_OK)
    equal(rig.guard.unlocked, False, "nobody identified")
    ident.pin(b"1111")
    rig.guard.update_lock()
    equal(rig.guard.unlocked, False, "operator 1 is not named")
    asyncio.run(rig.guard.on_press())
    last = rig.event(rig.journal.next_counter - 1)
    equal(last[M.EV_KIND], M.KIND_FORCED)
    ident.pin(b"2222")
    rig.guard.update_lock()
    equal(rig.guard.unlocked, True)
    asyncio.run(rig.guard.on_press())
    last = rig.event(rig.journal.next_counter - 1)
    equal((last[M.EV_KIND], last[M.EV_PERMIT], last[M.EV_OPERATOR]), (M.KIND_IMPRESSION, 7, 2))
    ticks.ms += T.IDENT_WINDOW_MS
    rig.guard.update_lock()
    equal(rig.guard.unlocked, False, "the window closed")
    _reboot("ident_permit")
    equal(rig.journal.open().operators, (2, 5), "the named operators are in `state`")


def test_a_permit_naming_none_behaves_as_before_and_id_0_is_refused():
    rig, _, _ = _rig("ident_none")
    equal(_permit(rig, 3, ()), M.R_OK)
    equal(rig.guard.unlocked, True)
    asyncio.run(rig.guard.on_press())
    equal(rig.event(rig.journal.next_counter - 1)[M.EV_OPERATOR], 0)
    equal(_permit(rig, 4, (0,)), M.R_BAD_FIELD)


class _Pad:
    # The HAL's input contract: value() the key's ASCII code held (0: none) or a card's UID
    # (None: none), irq(handler) on a change.
    def __init__(self, level=0):
        self.level = level
        self.handler = None

    def value(self):
        return self.level

    def irq(self, handler):
        self.handler = handler

    def set(self, level):
        self.level = level
        self.handler(self)

    async def type(self, text, hold_ms=40, bounce=False):
        for c in text:
            if bounce:
                # Contacts bounce for 8 ms before they close for good.
                for _ in range(4):
                    self.set(ord(c))
                    await asyncio.sleep_ms(1)
                    self.set(0)
                    await asyncio.sleep_ms(1)
            self.set(ord(c))
            await asyncio.sleep_ms(hold_ms)
            self.set(0)
            await asyncio.sleep_ms(hold_ms)


class _Guard:
    def __init__(self):
        self.alarms = []

    def record_alarm(self, code, detail=0):
        self.alarms.append(code)

    def update_lock(self):
        pass


class _Seen:
    def __init__(self):
        self.ops = []

    def __call__(self, name, value):
        self.ops.append(value)


async def test_keypad_debounce_clear_and_digit_timeout():
    _r, ident, _ = _rig("ident_keys")
    ident.command(_op(4, pin=b"4455"))
    pad = _Pad()
    seen = _Seen()
    task = asyncio.create_task(ident.watch(pad, None, _Guard(), seen, interval_ms=300))
    await asyncio.sleep_ms(30)
    await pad.type("4455#", bounce=True)
    equal(seen.ops, [4], "each bouncing key counted once")
    await pad.type("9*4455#")
    equal(seen.ops, [4, 4], "'*' clears")
    await pad.type("44")
    await asyncio.sleep_ms(400)
    await pad.type("55#")
    equal(seen.ops, [4, 4, 0], "digits after the timeout start a new entry")
    await pad.type("1", hold_ms=8)
    await pad.type("4455#")
    equal(seen.ops, [4, 4, 0, 4], "a touch shorter than the debounce is no key")
    task.cancel()


async def test_a_card_in_the_field_identifies_once():
    _r, ident, _ = _rig("ident_card")
    ident.command(_op(6, card=b"\x04\x11\x22\x33\x44\x55\x66"))
    reader = _Pad(None)
    pad = _Pad()
    seen = _Seen()
    task = asyncio.create_task(ident.watch(pad, reader, _Guard(), seen))
    await asyncio.sleep_ms(10)
    reader.set(b"\x04\x11\x22\x33\x44\x55\x66")
    await asyncio.sleep_ms(20)
    reader.set(None)
    await asyncio.sleep_ms(20)
    equal(seen.ops, [6])
    await pad.type("1")
    equal(seen.ops, [6], "a key with no card in the field reads no card")
    task.cancel()


def test_power_cut_while_the_table_is_written_leaves_the_old_or_the_new():
    # Every block write of one OPERATOR command, in turn, is the last before the power goes
    # (half of them torn): after the reboot operator 1 has its old PIN or its new one, and
    # operator 2 is untouched.
    path = flashimg.tmpdir() + "/ident_cut.img"
    seen = set()
    cut = 1
    while True:
        flashimg.fresh(path)
        root = flashimg.root()
        ident = _Ident(root)
        ident.command(_op(1, pin=b"1111"))
        ident.command(_op(2, pin=b"2222"))
        dev = flashimg.mount(path, tear=cut % 2 == 0)
        dev.cut_at = dev.writes + cut
        try:
            _Ident(root).command(_op(1, pin=b"1212"))
            finished = not dev.dead
        except OSError:
            finished = False
        flashimg.mount(path)
        after = _Ident(root)
        old, new = after.pin(b"1111"), after.pin(b"1212")
        equal(sorted((old, new)), [0, 1], f"cut at write {cut}: the old PIN or the new")
        equal(after.pin(b"2222"), 2, f"cut at write {cut}: operator 2 kept")
        seen.add(new)
        if finished:
            break
        cut += 1
    equal(seen, {0, 1}, "cuts before and after the rename were tried")
    print("operator table cut at writes 1 ..", cut)
