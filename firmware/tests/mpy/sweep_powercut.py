# Power-cut sweep, run under MicroPython by firmware/tests/test_powercut.py.
# Env: SEAL_SEED, SEAL_CUTS ("first:last", last "end" = max(200, the scenario's last write)),
# SEAL_TMP (image folder). For every cut index N the scenario starts again on a
# copy of the same fresh flash image whose block device dies after write N (the image keeps
# exactly writes 1..N); the board then reboots on that image, recovers, is checked, and makes
# more impressions, which are checked again after a second reboot.
import asyncio
import hashlib
import os
import random

import flashimg
from sealproto import auth, messages
from sealproto.messages import EV_COUNTER, EV_PREV
from testchip import TestChip

from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import GENESIS, Journal
from seal.permits import Permits

# The 20-impression scenario, then boots that must work after the cut (and a second cut).
_PHASES = (20, 3, 3, 3)
_AGAIN_MAX = 12
_MIN_CUTS = 200
_CLOCK_S = 1795000000
_PERMIT = 7
_OPERATOR = 42


class Pin:
    def __init__(self):
        self.level = 0

    def value(self, v=None):
        if v is not None:
            self.level = v
        return self.level


class Spy(Journal):
    # Remembers what each append that RETURNED wrote: those events have counted.
    def __init__(self, root, appended):
        super().__init__(root)
        self.appended = appended

    def append(self, counter, payload):
        super().append(counter, payload)
        self.appended[counter] = hashlib.sha256(payload).digest()


class Board:
    # The real firmware policy (Guard, Recorder, Permits, Journal) minus the asyncio plumbing.
    def __init__(self, key, appended, boots):
        self.counted = []
        self.journal = Spy(flashimg.root(), appended).open()
        boots.append(self.journal.new_boot())
        self.recorder = Recorder(self.journal, key, TestChip(), lambda: _CLOCK_S, Uptime())
        permits = Permits(lambda: _CLOCK_S)
        permits.grant(_PERMIT, 1000, _CLOCK_S - 60, _CLOCK_S + 3600, _OPERATOR)
        self.lock = Pin()
        self.guard = Guard(self.journal, self.recorder, permits, self.lock, Pin(), self._report,
                           lambda: _CLOCK_S, lambda ms: None, 3300, asyncio.Event())
        # Guard reports the counter it starts from; only what comes next is new.
        self.counted = []
        if self.journal.discarded:
            self.guard.record_reboot()
        self.guard.update_lock()

    def _report(self, name, value):
        if name == "counter" and value:
            self.counted.append(value)

    def press(self):
        asyncio.run(self.guard.on_press(1))
        asyncio.run(self.guard.on_press(0))


def check(cond, *what):
    if not cond:
        raise AssertionError(" ".join(str(w) for w in what))


def verify(key, appended, boots, cut):
    # Reboot on the image and check it against everything that had counted before the cut.
    j = Journal(flashimg.root()).open()
    newest = j.next_counter - 1
    counted = max(appended) if appended else 0
    check(sorted(appended) == list(range(1, counted + 1)), "cut", cut, "appends not contiguous")
    # At most one more: an append whose close committed before its return was cut.
    check(counted <= newest <= counted + 1, "cut", cut, "newest", newest, "counted", counted)
    first = newest
    while first > 1 and j.read(first - 1) is not None:
        first -= 1
    check(first - 1 <= j.acked, "cut", cut, "unacked record", first - 1, "compacted")
    prev = None
    for c in range(max(first, 1), newest + 1):
        payload = j.read(c)
        check(payload is not None, "cut", cut, "record", c, "missing")
        msg = messages.decode(payload)
        auth.verify(msg, key)
        check(msg[EV_COUNTER] == c, "cut", cut, "record", c, "has counter", msg[EV_COUNTER])
        if c == 1:
            check(msg[EV_PREV] == GENESIS, "cut", cut, "first prev")
        elif prev is not None:
            check(msg[EV_PREV] == prev, "cut", cut, "chain broken at", c)
        elif c - 1 in appended:
            check(msg[EV_PREV] == appended[c - 1], "cut", cut, "chain broken at", c)
        digest = hashlib.sha256(payload).digest()
        if c in appended:
            check(digest == appended[c], "cut", cut, "record", c, "changed")
        else:
            appended[c] = digest
        prev = digest
    check(j.last_hash == (prev if newest else GENESIS), "cut", cut, "last_hash")
    check(j.boot_id >= (boots[-1] if boots else 0), "cut", cut, "boot_id went back")
    return newest


def boot_and_press(key, appended, boots, presses, rnd, dev, newest, cut):
    # One boot of the board: recover, start a boot, make `presses` impressions, acking some.
    try:
        board = Board(key, appended, boots)
        check(board.journal.next_counter == newest + 1, "cut", cut, "counter reused")
        for i in range(presses):
            board.press()
            if dev.dead:
                return
            check(board.counted and board.counted[-1] == max(appended), "cut", cut,
                  "press", i, "did not count")
            if rnd.getrandbits(2) == 0:
                board.journal.ack(board.journal.next_counter - 1 - rnd.getrandbits(1))
    except OSError:
        check(dev.dead, "cut", cut, "OSError without a power cut")


def scenario(key, image, cut, rnd):
    # Boots of _PHASES impressions each, one reboot between boots; the block-write index `cut`
    # runs on across the boots, so power also fails during recovery and after it. The boot
    # after the cut is cut again, at its own write `again` (1.._AGAIN_MAX): a cut while
    # recovering from a cut. A last, uncut boot follows.
    again = rnd.randint(1, _AGAIN_MAX) if cut else 0
    # Half of the cuts also tear their write (only its first half reaches the flash).
    tear = bool(rnd.getrandbits(1))
    appended = {}
    boots = []
    newest = 0
    writes = 0
    cuts = 0
    for presses in _PHASES:
        if cut > writes:
            left = cut - writes
        elif cuts == 1:
            left = again
        else:
            left = 0
        dev = flashimg.mount(image, cut_at=left, tear=tear)
        boot_and_press(key, appended, boots, presses, rnd, dev, newest, cut)
        writes += dev.writes
        cuts += dev.dead
        flashimg.mount(image)
        newest = verify(key, appended, boots, cut)
    # A boot outside the indexed writes: whatever the cuts did, the board must work again.
    dev = flashimg.mount(image)
    boot_and_press(key, appended, boots, 1, rnd, dev, newest, cut)
    flashimg.mount(image)
    newest = verify(key, appended, boots, cut)
    check(newest == len(appended), "cut", cut, "newest", newest, "appended", len(appended))
    check(boots == sorted(set(boots)), "cut", cut, "boot ids", boots)
    return writes, cuts, tear


def main():
    seed = int(os.getenv("SEAL_SEED"))
    first, last = os.getenv("SEAL_CUTS").split(":")
    first = int(first)
    tmp = os.getenv("SEAL_TMP")
    base = tmp + "/base.img"
    image = tmp + "/cut.img"
    key = bytes(range(32))
    flashimg.fresh(base, blocks=64)
    flashimg.copy(base, image)
    random.seed(seed)
    total = scenario(key, image, 0, random)[0]
    print("seed", seed, "scenario writes", total)
    last = max(_MIN_CUTS, total) if last == "end" else int(last)
    cuts = 0
    doubles = 0
    torn = 0
    n = first
    while n <= last:
        # One stream per (seed, cut): any single cut replays alone with SEAL_CUTS=n:n.
        random.seed(seed * 100003 + n)
        flashimg.copy(base, image)
        _, dead, tear = scenario(key, image, n, random)
        cuts += dead > 0
        doubles += dead > 1
        torn += tear and dead > 0
        n += 1
    print("cuts", first, "..", n - 1, "real cuts", cuts, "torn writes", torn,
          "second cuts in recovery", doubles, "all consistent")
