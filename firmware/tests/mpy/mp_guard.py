# The guard policy: impressions, forced stamps, permits, fail-closed journal faults, tamper,
# battery; on the real journal on an emulated flash, under micropython.
# heapsize: 96k  (test code: the rig's flash image and its test chip's enrolment signer, with
# sealproto.messages, beside the firmware; the firmware alone: test_host_absent.py)
from mpyunit import equal
from rig import NOW_S, Rig
from sealproto import messages as M


async def test_press_while_shut_is_forced_and_alarmed():
    rig = Rig("forced")
    await rig.guard.on_press(1)
    await rig.guard.on_press(0)
    equal(rig.event(1)[M.EV_KIND], M.KIND_FORCED)
    equal(rig.alarms, [M.AL_FORCED_STAMP])
    equal(rig.lock.v, 0)
    equal(rig.reports[-2:], [("counter", 1), ("alarm", M.AL_FORCED_STAMP)])


async def test_permit_opens_lock_until_count_used():
    rig = Rig("permit")
    equal(rig.grant(count=2), M.R_OK)
    equal(rig.lock.v, 1)
    equal(rig.led.v, 1)
    equal(rig.guard.flags() & (M.F_LOCKED | M.F_PERMIT_ACTIVE), M.F_PERMIT_ACTIVE)
    await rig.guard.on_press(1)
    equal(rig.lock.v, 1, "one left")
    await rig.guard.on_press(1)
    equal(rig.lock.v, 0, "count used up: shut")
    for c in (1, 2):
        e = rig.event(c)
        equal((e[M.EV_KIND], e[M.EV_PERMIT], e[M.EV_OPERATOR]), (M.KIND_IMPRESSION, 7, 42))
    await rig.guard.on_press(1)
    equal(rig.event(3)[M.EV_KIND], M.KIND_FORCED)
    equal(rig.alarms, [M.AL_FORCED_STAMP])


async def test_expired_permit_shuts_lock():
    rig = Rig("expiry")
    rig.grant()
    rig.clock.t = NOW_S + 3601
    rig.guard.update_lock()
    equal(rig.lock.v, 0)


async def test_journal_full_refuses_unlock_and_alarms():
    # SPEC §10.2, §12: the lock shuts before the reserve; FORCED records take the reserve.
    rig = Rig("full", capacity=6, reserve=3)
    rig.grant(count=10)
    for _ in range(3):
        await rig.guard.on_press(1)
    equal(rig.journal.full, True)
    equal(rig.lock.v, 0, "full: no unlock")
    equal(rig.alarms, [M.AL_JOURNAL_FULL])
    equal(rig.guard.flags() & (M.F_JOURNAL_FULL | M.F_RESERVE_EXHAUSTED), M.F_JOURNAL_FULL)
    alarm = rig.event(4)
    equal((alarm[M.EV_KIND], alarm[M.EV_CAUSE]), (M.KIND_ALARM, M.AL_JOURNAL_FULL), "journaled")
    await rig.guard.on_press(1)
    equal(rig.event(5)[M.EV_KIND], M.KIND_FORCED, "a press on the shut seal, from the reserve")
    equal(rig.alarms[-1], M.AL_FORCED_STAMP)
    equal(rig.permits.left, 7, "the permit's count is for impressions only")
    rig.journal.ack(3)
    rig.guard.update_lock()
    equal(rig.lock.v, 1, "acked: room again, the permit still has count")


async def test_flash_fault_fails_closed():
    # The flash dies after its 12th block write from the mount on (the appends then fail).
    rig = Rig("fault", cut_at=12)
    rig.grant(count=100)
    counted = 0
    for _ in range(20):
        if rig.guard.faulted:
            break
        await rig.guard.on_press(1)
        counted = (rig.journal.next_counter - 1)
    equal(rig.guard.faulted, True, "the dead flash must fault")
    equal(rig.lock.v, 0, "fault: lock shut")
    equal(rig.alarms[-1], M.AL_JOURNAL_FAULT)
    equal(rig.permits.left, 100 - counted, "the failed impression did not count")
    await rig.guard.on_press(1)
    equal(rig.lock.v, 0, "stays shut while the flash is dead")
    equal(rig.alarms[-1], M.AL_JOURNAL_FAULT, "no record for the press: no FORCED_STAMP")


async def test_tamper_records_alarms_and_locks():
    rig = Rig("tamper")
    rig.grant()
    await rig.guard.on_tamper(1)
    equal(rig.event(1)[M.EV_KIND], M.KIND_TAMPER)
    equal(rig.alarms, [M.AL_TAMPER])
    equal(rig.lock.v, 0)
    await rig.guard.on_tamper(0)
    equal(rig.lock.v, 1)


def test_low_battery_once_with_hysteresis():
    rig = Rig("battery")
    rig.guard.check_battery(3300)
    rig.guard.check_battery(3200)
    rig.guard.check_battery(3450)
    equal((rig.journal.next_counter - 1), 1)
    equal(rig.event(1)[M.EV_KIND], M.KIND_LOW_BATTERY)
    rig.guard.check_battery(3600)
    rig.guard.check_battery(3300)
    equal((rig.journal.next_counter - 1), 2)


