# Power-cut sweep, run under MicroPython by firmware/tests/test_powercut.py.
# Env: SEAL_SEED, SEAL_CUTS ("first:last", last "end" = max(200, the scenario's last write)),
# SEAL_TMP (image folder). For every cut index N the scenario starts again on a
# copy of the same fresh flash image whose block device dies after write N (the image keeps
# exactly writes 1..N); the board then reboots on that image, recovers, is checked, and makes
# more impressions, which are checked again after a second reboot. The seal's chip (its record
# counters) lives outside the image and through every cut: no cut may make the chip count more
# records than the flash holds (a false rollback). A second scenario fills a small journal past
# its reserve, so presses are only counted in `state`: no cut may lose one of those counts.
import asyncio
import hashlib
import os
import random

import flashimg
from sealproto import auth, messages
from sealproto import messages as M
from sealproto.messages import EV_COUNTER, EV_PREV
from testchip import TestChip

from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import GENESIS, Journal
from seal.permits import Permits

# The 20-impression scenario, then boots that must work after the cut (and a second cut).
_PHASES = (20, 3, 3, 3)
# The full journal: 4 impressions, its ALARM record and a FORCED press fill 4 + a reserve of 2,
# then presses only count; each later boot acks all but one record first (the count recorded).
_FULL_CAPACITY = 6
_FULL_RESERVE = 2
_FULL_PHASES = (9, 6, 5, 3)
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
    # Remembers what each append that RETURNED wrote: those events have counted; and how many
    # presses were counted in `state` (missed() returned) instead.
    def __init__(self, root, appended, tally=None, capacity=1000, reserve=0):
        super().__init__(root, capacity_events=capacity, reserve_events=reserve)
        self.appended = appended
        self.tally = tally if tally is not None else [0, 0]

    def append(self, counter, payload):
        super().append(counter, payload)
        self.appended[counter] = hashlib.sha256(payload).digest()
        if M.decode(payload)[M.EV_KIND] <= M.KIND_FORCED:
            self.tally[0] += 1

    def missed(self, code=0):
        super().missed(code)
        if not code:
            self.tally[1] += 1


class Board:
    # The real firmware policy (Guard, Recorder, Permits, Journal) minus the asyncio plumbing,
    # with the seal's chip, which outlives every boot.
    def __init__(self, key, appended, boots, chip, tally, capacity=1000, reserve=0):
        self.counted = []
        self.journal = Spy(flashimg.root(), appended, tally, capacity, reserve).open()
        boots.append(self.journal.new_boot())
        self.recorder = Recorder(self.journal, key, chip, lambda: _CLOCK_S, Uptime())
        permits = Permits(lambda: _CLOCK_S)
        permits.grant(_PERMIT, 1000, _CLOCK_S - 60, _CLOCK_S + 3600, _OPERATOR)
        self.lock = Pin()
        self.guard = Guard(self.journal, self.recorder, permits, self.lock, Pin(), self._report,
                           lambda: _CLOCK_S, lambda ms: None, 3300, asyncio.Event())
        # Guard reports the counter it starts from; only what comes next is new.
        self.counted = []
        self.guard.boot(0)
        check(all(a[0] != M.AL_ROLLBACK for a in self.guard.alarms), "a false ROLLBACK alarm")
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


def verify(key, appended, boots, cut, chip, causes=None):
    # Reboot on the image and check it against everything that had counted before the cut, and
    # the chip's count against the records: the flash may hold one record the chip has not
    # counted yet (its append committed, then the cut), never fewer than it counted.
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
        check(msg[M.EV_KIND] != M.KIND_REBOOT
              or not msg[M.EV_CAUSE] & (M.CA_ROLLBACK | M.CA_NEW_JOURNAL),
              "cut", cut, "record", c, "reports a rollback that never was")
        digest = hashlib.sha256(payload).digest()
        if c in appended:
            check(digest == appended[c], "cut", cut, "record", c, "changed")
        else:
            appended[c] = digest
        if causes is not None:
            causes[c] = (msg[M.EV_KIND], msg.get(M.EV_CAUSE, 0))
        prev = digest
    check(j.last_hash == (prev if newest else GENESIS), "cut", cut, "last_hash")
    check(j.boot_id >= (boots[-1] if boots else 0), "cut", cut, "boot_id went back")
    made, lost = chip.counters
    check(newest - 1 <= made - lost <= newest, "cut", cut, "the chip counted", made - lost,
          "records, the flash holds", newest)
    return newest, j.unrecorded


def boot_and_press(key, appended, boots, presses, rnd, dev, newest, cut, chip, tally):
    # One boot of the board: recover, start a boot, make `presses` impressions, acking some.
    try:
        board = Board(key, appended, boots, chip, tally)
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


def boot_full(key, appended, boots, presses, dev, cut, chip, tally):
    # One boot on the small journal: ack all but its newest record (the presses counted before
    # get their UNRECORDED record), then press on past the reserve.
    try:
        board = Board(key, appended, boots, chip, tally, _FULL_CAPACITY, _FULL_RESERVE)
        j = board.journal
        if j.next_counter > 2:
            j.ack(j.next_counter - 2)
        board.guard.update_lock()
        for _ in range(presses):
            if dev.dead:
                return
            board.press()
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
    chip = TestChip()
    tally = [0, 0]
    for presses in _PHASES:
        if cut > writes:
            left = cut - writes
        elif cuts == 1:
            left = again
        else:
            left = 0
        dev = flashimg.mount(image, cut_at=left, tear=tear)
        boot_and_press(key, appended, boots, presses, rnd, dev, newest, cut, chip, tally)
        writes += dev.writes
        cuts += dev.dead
        flashimg.mount(image)
        newest = verify(key, appended, boots, cut, chip)[0]
    # A boot outside the indexed writes: whatever the cuts did, the board must work again.
    dev = flashimg.mount(image)
    boot_and_press(key, appended, boots, 1, rnd, dev, newest, cut, chip, tally)
    flashimg.mount(image)
    newest = verify(key, appended, boots, cut, chip)[0]
    check(newest == len(appended), "cut", cut, "newest", newest, "appended", len(appended))
    check(boots == sorted(set(boots)), "cut", cut, "boot ids", boots)
    return writes, cuts, tear


def scenario_full(key, image, cut, rnd):
    # The small journal filled past its reserve, boot after boot, cut at write `cut` (and again
    # while recovering, as in scenario()). Every press that returned is a press record
    # (IMPRESSION, FORCED) or one more in `state`'s count; a count reported by an UNRECORDED
    # record has left `state`, whether or not a cut came before `state` was written again.
    # So records + UNRECORDED causes + `state`'s count == the presses that returned, plus at
    # most one per cut (a write that committed and never returned).
    again = rnd.randint(1, _AGAIN_MAX) if cut else 0
    tear = bool(rnd.getrandbits(1))
    appended = {}
    causes = {}
    boots = []
    writes = 0
    cuts = 0
    chip = TestChip()
    tally = [0, 0]
    for presses in _FULL_PHASES + (1,):
        if cut > writes:
            left = cut - writes
        elif cuts == 1:
            left = again
        else:
            left = 0
        dev = flashimg.mount(image, cut_at=left, tear=tear)
        boot_full(key, appended, boots, presses, dev, cut, chip, tally)
        writes += dev.writes
        cuts += dev.dead
        flashimg.mount(image)
        unrecorded = verify(key, appended, boots, cut, chip, causes)[1]
        recorded = sum(1 for k, _ in causes.values() if k <= M.KIND_FORCED)
        reported = sum(n for k, n in causes.values() if k == M.KIND_UNRECORDED)
        total = recorded + reported + unrecorded
        returned = tally[0] + tally[1]
        check(returned <= total <= returned + cuts, "cut", cut, "presses: returned", returned,
              "recorded", recorded, "reported", reported, "in state", unrecorded)
    # Uncut, the scenario must reach what it is for.
    check(cut or (tally[1] > 0 and reported > 0), "the reserve was never exhausted")
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
    for name, run in (("", scenario), ("full journal: ", scenario_full)):
        random.seed(seed)
        flashimg.copy(base, image)
        total = run(key, image, 0, random)[0]
        print(name + "seed", seed, "scenario writes", total)
        end = max(_MIN_CUTS, total) if last == "end" else int(last)
        cuts = 0
        doubles = 0
        torn = 0
        n = first
        while n <= end:
            # One stream per (seed, cut): any single cut replays alone with SEAL_CUTS=n:n.
            random.seed(seed * 100003 + n)
            flashimg.copy(base, image)
            _, dead, tear = run(key, image, n, random)
            cuts += dead > 0
            doubles += dead > 1
            torn += tear and dead > 0
            n += 1
        print(name + "cuts", first, "..", n - 1, "real cuts", cuts, "torn writes", torn,
              "second cuts in recovery", doubles, "all consistent")
