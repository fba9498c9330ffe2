# Event building (SPEC §4.1) on the real journal on an emulated flash, under micropython.
import flashimg
from mpyunit import equal
from rig import KEY, NOW_S, Clock, Rig
from sealproto import auth, messages
from sealproto import messages as M
from testchip import TestChip

from seal.events import Recorder, Uptime
from seal.journal import Journal, JournalFull


def test_event_fields_mac_and_chain():
    rig = Rig("fields")
    rig.ticks[0] = 1250
    c1 = rig.recorder.record(M.KIND_IMPRESSION, 7, 42)
    c2 = rig.recorder.record(M.KIND_TAMPER)
    equal((c1, c2), (1, 2))
    p1 = rig.journal.read(1)
    e1 = messages.decode(p1)
    auth.verify(e1, KEY)
    equal(e1[M.EV_COUNTER], 1)
    equal(e1[M.EV_BOOT], rig.boot)
    equal(e1[M.EV_UPTIME], 250)
    equal(e1[M.EV_TIME], NOW_S)
    equal((e1[M.EV_KIND], e1[M.EV_PERMIT], e1[M.EV_OPERATOR]), (M.KIND_IMPRESSION, 7, 42))
    equal(e1[M.EV_PREV], auth.GENESIS)
    e2 = rig.event(2)
    auth.verify(e2, KEY)
    equal(e2[M.EV_PREV], auth.record_hash(p1), "prev = hash of the previous full payload")
    equal(rig.journal.last_hash, auth.record_hash(rig.journal.read(2)))
    equal(rig.journal.next_counter, 3)


def test_counter_and_chain_continue_after_reopen():
    rig = Rig("reopen")
    rig.recorder.record(M.KIND_IMPRESSION)
    j2 = Journal(flashimg.root()).open()
    j2.new_boot()
    rec2 = Recorder(j2, KEY, TestChip(), Clock(), Uptime())
    equal(rec2.record(M.KIND_FORCED), 2)
    e2 = messages.decode(j2.read(2))
    equal(e2[M.EV_PREV], auth.record_hash(j2.read(1)))
    equal(e2[M.EV_BOOT], rig.boot + 1)


def test_uptime_survives_tick_wrap():
    from time import ticks_add

    ticks = [ticks_add(0, -100)]  # 100 ms before the port's ticks period wraps
    up = Uptime(lambda: ticks[0])
    ticks[0] = 50  # wrapped: 150 ms later
    equal(up.ms(), 150)


def test_journal_full_raises_before_anything_advances():
    rig = Rig("fullrec", capacity=1)
    rig.recorder.record(M.KIND_FORCED)
    try:
        rig.recorder.record(M.KIND_FORCED)
        raise AssertionError("JournalFull not raised")
    except JournalFull:
        pass
    equal(rig.journal.next_counter, 2)
