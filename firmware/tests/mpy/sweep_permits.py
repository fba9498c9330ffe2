# Power-cut sweep of a permit, run under MicroPython by firmware/tests/test_powercut_permits.py.
# Env: SEAL_SEED, SEAL_TMP. The scenario: install permit 7 with count 2, press three times
# (the third must be FORCED), reboot, the host resends PERMIT 7, press (FORCED); then a last,
# uncut boot resends it again and presses three more times. Segments hold one record and acks
# come at random, so compaction deletes impression records while the permit is in use. It is
# run once whole, then once per block-write index N with the power cut after write N (the
# index runs on across the boots), the boot after the cut cut again at a seeded write (a cut
# during recovery), half of the cut writes torn.
# Across all runs: IMPRESSION records under permit 7 never exceed 2, every press that counted
# has its record, and after the last boot the permit has given exactly 2 (none lost either).
import asyncio
import os
import random

import flashimg
from sealproto import messages as M
from sweep_powercut import Pin, Spy, check, verify
from testchip import TestChip

from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.permits import Permits

_CLOCK_S = 1795000000
_PERMIT_ID = 7
_COUNT = 2
_OPERATOR = 42
_AGAIN_MAX = 12
# (resend the PERMIT, presses) per boot; the last boot runs outside the cut index.
_PHASES = ((True, 3), (True, 1))
_LAST = (True, 3)
_PERMIT_MSG = {M.PE_ID: _PERMIT_ID, M.PE_COUNT: _COUNT, M.PE_NOT_BEFORE: 0, M.PE_NOT_AFTER: 0,
               M.PE_OPERATOR: _OPERATOR}


class Board:
    def __init__(self, key, appended, boots, kinds, chip):
        self.kinds = kinds
        self.counted = []
        self.journal = Spy(flashimg.root(), appended)
        self.journal._seg_events = 1  # every ack that moves compacts: records go early
        self.journal.open()
        boots.append(self.journal.new_boot())
        self.recorder = Recorder(self.journal, key, chip, lambda: _CLOCK_S, Uptime())
        self.permits = Permits(lambda: _CLOCK_S, self.journal)
        self.guard = Guard(self.journal, self.recorder, self.permits, Pin(), Pin(),
                           self._report, lambda: _CLOCK_S, lambda ms: None, 3300,
                           asyncio.Event())
        self.counted = []
        self.guard.boot(0)
        self.guard.update_lock()

    def _report(self, name, value):
        if name == "counter" and value:
            self.counted.append(value)
            msg = M.decode(self.journal.read(value))
            self.kinds[value] = (msg[M.EV_KIND], msg[M.EV_PERMIT])

    def press(self):
        asyncio.run(self.guard.on_press(1))
        asyncio.run(self.guard.on_press(0))


def scan(kinds):
    # Records on flash that counted without their append returning are part of the record.
    j = Journal(flashimg.root()).open()
    for c in range(1, j.next_counter):
        payload = j.read(c)
        if payload is not None:
            msg = M.decode(payload)
            kinds[c] = (msg[M.EV_KIND], msg[M.EV_PERMIT])


def under_permit(kinds):
    return sum(1 for k in kinds.values() if k == (M.KIND_IMPRESSION, _PERMIT_ID))


def boot(key, appended, boots, kinds, resend, presses, rnd, dev, cut, log, chip):
    try:
        board = Board(key, appended, boots, kinds, chip)
        if resend:
            code = board.guard.command(M.PERMIT, _PERMIT_MSG)
            check(code == M.R_OK or dev.dead, "cut", cut, "PERMIT answered", code)
        for i in range(presses):
            board.press()
            if dev.dead:
                return
            c = board.counted[-1] if board.counted else 0
            check(c and c == max(appended), "cut", cut, "press", i, "did not count")
            log.append(kinds[c][0])
            if rnd.getrandbits(1):
                board.journal.ack(board.journal.next_counter - 1 - rnd.getrandbits(1))
    except OSError:
        check(dev.dead, "cut", cut, "OSError without a power cut")


def scenario(key, image, cut, rnd):
    again = rnd.randint(1, _AGAIN_MAX) if cut else 0
    tear = bool(rnd.getrandbits(1))
    appended = {}
    kinds = {}
    boots = []
    log = []
    writes = 0
    cuts = 0
    # The seal's chip: outside the flash, through every cut.
    chip = TestChip()
    for resend, presses in _PHASES:
        if cut > writes:
            left = cut - writes
        elif cuts == 1:
            left = again
        else:
            left = 0
        dev = flashimg.mount(image, cut_at=left, tear=tear)
        boot(key, appended, boots, kinds, resend, presses, rnd, dev, cut, log, chip)
        writes += dev.writes
        cuts += dev.dead
        flashimg.mount(image)
        verify(key, appended, boots, cut, chip)
        scan(kinds)
        check(under_permit(kinds) <= _COUNT, "cut", cut, "permit gave", under_permit(kinds))
    dev = flashimg.mount(image)
    boot(key, appended, boots, kinds, _LAST[0], _LAST[1], rnd, dev, cut, log, chip)
    flashimg.mount(image)
    verify(key, appended, boots, cut, chip)
    scan(kinds)
    # Every press that counted has its record (verify: byte for byte, or compacted once acked).
    check(all(c in kinds for c in appended), "cut", cut, "a counted press has no record")
    check(under_permit(kinds) == _COUNT, "cut", cut, "permit gave", under_permit(kinds),
          "of", _COUNT, "kinds", kinds)
    return writes, cuts, tear, log


def main():
    seed = int(os.getenv("SEAL_SEED"))
    tmp = os.getenv("SEAL_TMP")
    base = tmp + "/permit-base.img"
    image = tmp + "/permit-cut.img"
    key = bytes(range(32))
    flashimg.fresh(base, blocks=64)
    flashimg.copy(base, image)
    random.seed(seed)
    total, _, _, log = scenario(key, image, 0, random)
    i, f = M.KIND_IMPRESSION, M.KIND_FORCED
    check(log == [i, i, f, f, f, f, f], "uncut run made", log)
    print("seed", seed, "scenario writes", total, "uncut kinds", log)
    cuts = doubles = torn = 0
    n = 1
    while n <= total:
        random.seed(seed * 100003 + n)
        flashimg.copy(base, image)
        _, dead, tear, _ = scenario(key, image, n, random)
        cuts += dead > 0
        doubles += dead > 1
        torn += tear and dead > 0
        n += 1
    print("cuts 1 ..", n - 1, "real cuts", cuts, "torn writes", torn,
          "second cuts in recovery", doubles, "permit never over-used")
