# A journal on a fresh emulated flash plus the recorder, permits and guard around it, for the
# firmware tests; the lock and LED are recorded values (the unit under test is the policy).
import asyncio
from micropython import const

import flashimg
from sealproto import messages
from testchip import AUTHORITY, TestChip, certificate

from seal.enrol import Enrolment
from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.permits import Permits

_PE_ID = const(1)
_PE_COUNT = const(2)
_PE_NOT_BEFORE = const(3)
_PE_NOT_AFTER = const(4)
_PE_OPERATOR = const(5)
_PERMIT = const(8)

KEY = bytes(range(32))
NOW_S = 1700000000


class Out:
    # Stands in for the lock and LED pins: only their last value matters to the policy.
    def __init__(self):
        self.v = None

    def value(self, v):
        self.v = v


class Clock:
    def __init__(self, t=NOW_S):
        self.t = t

    def __call__(self):
        return self.t

    def set_ms(self, ms):
        self.t = ms // 1000


def fresh(name, capacity=1000, blocks=64, cut_at=0, reserve=0):
    path = flashimg.tmpdir() + "/" + name + ".img"
    flashimg.fresh(path, blocks)
    if cut_at:
        flashimg.mount(path, cut_at)
    j = Journal(flashimg.root(), capacity_events=capacity, reserve_events=reserve).open()
    return j, j.new_boot()


class Rig:
    def __init__(self, name, capacity=1000, cut_at=0, blocks=64, reserve=0):
        self.journal, self.boot = fresh(name, capacity, blocks, cut_at, reserve)
        self.clock = Clock()
        self.ticks = [1000]
        self.chip = TestChip()
        self.recorder = Recorder(self.journal, KEY, self.chip, self.clock, Uptime(self.now_ms))
        self.permits = Permits(self.clock, self.journal)
        self.lock = Out()
        self.led = Out()
        self.reports = []
        # The link's wake event, as seal.app makes it: set by the guard, cleared by the sender.
        self.wake = asyncio.Event()
        self.guard = Guard(self.journal, self.recorder, self.permits, self.lock, self.led,
                           self._report, self.clock, self.clock.set_ms, 3400, self.wake)

    @property
    def alarms(self):
        # The codes of the alarms the guard holds for the link (the newest 8).
        return [a[0] for a in self.guard.alarms]

    def now_ms(self):
        return self.ticks[0]

    def _report(self, name, value):
        if len(self.reports) >= 16:
            self.reports.pop(0)
        self.reports.append((name, value))

    def grant(self, permit=7, count=2, operator=42):
        msg = {_PE_ID: permit, _PE_COUNT: count, _PE_NOT_BEFORE: NOW_S - 10,
               _PE_NOT_AFTER: NOW_S + 3600, _PE_OPERATOR: operator}
        return self.guard.command(_PERMIT, msg)

    def enrolment(self, device, enrolled=True):
        # The seal's enrolment (SPEC §5.11), enrolled with testchip.GATEWAY unless told not.
        e = Enrolment(self.journal.root + ".enrol", device, AUTHORITY, self.chip)
        if enrolled:
            e.command(12, certificate(device))
        return e

    def event(self, counter):
        return messages.decode(self.journal.read(counter))


