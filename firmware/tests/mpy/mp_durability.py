# The seal against a flash that goes back and a journal with no room (SPEC §10.4, §12): the
# chip's counters find a restored flash image, an unclean boot makes a REBOOT record with its
# cause, presses past the reserve are counted, alarms without a record of their own are
# journaled; on the real journal on an emulated flash, under micropython.
# heapsize: 96k  (test code: the rig's flash images and its test chip's enrolment signer, with
# sealproto.messages, beside the firmware; the firmware alone: test_host_absent.py)
import flashimg
from mpyunit import equal
from rig import KEY, Rig
from sealproto import messages as M
from testchip import COUNTER_MAX

from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.permits import Permits


def _image(name):
    return flashimg.tmpdir() + "/" + name + ".img"


def reboot(rig, name, reset_cause=0, image=None):
    # Power off and on with the same chip: on the same flash, or on `image` copied over it.
    if image:
        flashimg.copy(image, _image(name))
    flashimg.mount(_image(name))
    old = rig.journal
    rig.journal = Journal(flashimg.root(), capacity_events=old.capacity_events,
                          reserve_events=old.reserve_events).open()
    rig.boot = rig.journal.new_boot()
    rig.recorder = Recorder(rig.journal, KEY, rig.chip, rig.clock, Uptime(rig.now_ms))
    rig.permits = Permits(rig.clock, rig.journal)
    rig.guard = Guard(rig.journal, rig.recorder, rig.permits, rig.lock, rig.led, rig._report,
                      rig.clock, rig.clock.set_ms, 3400, rig.wake)
    rig.guard.boot(reset_cause)


def newest(rig):
    return rig.event(rig.journal.next_counter - 1)


async def press(rig, times=1):
    for _ in range(times):
        await rig.guard.on_press(1)
        await rig.guard.on_press(0)


def _rollback_rig(name):
    # 2 records, the image saved, then 3 offline records and a tamper the image lacks.
    rig = Rig(name)
    rig.guard.boot(0)
    rig.recorder.record(M.KIND_FORCED)
    rig.recorder.record(M.KIND_FORCED)
    return rig, _saved(name)


def _saved(name):
    # A copy of the flash as it is now (remounted first: what littlefs holds is on the image).
    flashimg.mount(_image(name))
    saved = _image(name + "-saved")
    flashimg.copy(_image(name), saved)
    return saved


async def test_a_restored_flash_image_is_recorded_and_alarmed():
    rig, saved = _rollback_rig("rollback")
    await press(rig, 3)
    await rig.guard.on_tamper(1)
    await rig.guard.on_tamper(0)
    equal(rig.chip.counters, [6, 0], "the chip counted every record")
    reboot(rig, "rollback", image=saved)
    e = rig.event(3)
    equal(e[M.EV_KIND], M.KIND_REBOOT, "the first record after the restore")
    equal(e[M.EV_CAUSE], M.CA_ROLLBACK | 4 << M.CA_MISSING_SHIFT, "4 records missing")
    equal(rig.alarms, [M.AL_ROLLBACK])
    equal(rig.guard.alarms[0][2], 4, "the alarm's detail: how many")
    equal(rig.chip.counters, [7, 4], "counted as lost: reported once")
    reboot(rig, "rollback")
    equal(rig.journal.next_counter, 4, "a clean boot after: no second REBOOT")
    equal(rig.alarms, [])


async def test_a_journal_ahead_of_the_chip_is_no_rollback():
    # Power cut after an append, before the chip counted it: the chip catches up, no alarm.
    rig, _ = _rollback_rig("behind")
    rig.chip.counters[0] -= 1
    reboot(rig, "behind")
    equal((rig.journal.next_counter, rig.alarms, rig.chip.counters), (3, [], [2, 0]))


def test_a_fresh_journal_on_a_used_chip_says_so():
    rig = Rig("wiped")
    rig.chip.counters[0] = 9
    rig.guard.boot(0)
    e = rig.event(1)
    wiped = M.CA_NEW_JOURNAL | 9 << M.CA_MISSING_SHIFT
    equal((e[M.EV_KIND], e[M.EV_CAUSE]), (M.KIND_REBOOT, wiped), "9 records before this journal")
    equal(rig.alarms, [M.AL_ROLLBACK])
    equal(rig.chip.counters, [10, 9])


def test_past_its_maximum_the_chip_sees_only_a_rollback_below_it():
    rig = Rig("saturated")
    rig.chip.counters[:] = [COUNTER_MAX, COUNTER_MAX]
    rig.guard.boot(0)
    rig.recorder.record(M.KIND_FORCED)
    saved = _saved("saturated")
    rig.recorder.record(M.KIND_FORCED)
    equal(rig.chip.counters[0], COUNTER_MAX, "stopped, and no record refused for it")
    reboot(rig, "saturated")
    equal((rig.journal.next_counter, rig.alarms), (3, []), "no false alarm past the maximum")
    reboot(rig, "saturated", image=saved)
    equal(rig.alarms, [], "a rollback above the maximum goes unseen by the seal (SPEC §10.4)")
    # A journal holding fewer records than the stopped count is still seen.
    rig.chip.counters[1] = COUNTER_MAX - 2
    reboot(rig, "saturated")
    equal(newest(rig)[M.EV_CAUSE], M.CA_ROLLBACK | 1 << M.CA_MISSING_SHIFT, "one below it")


def test_every_reset_cause_makes_a_reboot_record():
    rig = Rig("causes")
    rig.guard.boot(0)
    equal(rig.journal.next_counter, 1, "a clean power-on makes none")
    for cause in (M.CA_WATCHDOG, M.CA_BROWNOUT, M.CA_HARD_RESET):
        reboot(rig, "causes", reset_cause=cause)
        e = newest(rig)
        equal((e[M.EV_KIND], e[M.EV_CAUSE], e[M.EV_BOOT]), (M.KIND_REBOOT, cause, rig.boot))
    equal(rig.alarms, [], "a reset is recorded, not alarmed")


async def test_presses_past_the_reserve_are_counted_then_recorded():
    rig = Rig("exhausted", capacity=4, reserve=2)
    rig.grant(count=10)
    await press(rig, 2)
    equal(newest(rig)[M.EV_CAUSE], M.AL_JOURNAL_FULL, "the lock shut: an ALARM record")
    await press(rig, 1)
    equal((newest(rig)[M.EV_KIND], rig.journal.exhausted), (M.KIND_FORCED, True))
    await press(rig, 3)
    equal(rig.journal.next_counter, 5, "no room for a record")
    code, _, detail = rig.guard.alarms[-1]
    equal((code, detail), (M.AL_RESERVE_EXHAUSTED, 3), "each press alarmed, counted")
    equal(rig.guard.flags() & M.F_RESERVE_EXHAUSTED, M.F_RESERVE_EXHAUSTED)
    reboot(rig, "exhausted")
    equal(rig.journal.unrecorded, 3, "the count survives a reboot")
    rig.journal.ack(4)
    rig.guard.update_lock()
    e = rig.event(5)
    equal((e[M.EV_KIND], e[M.EV_CAUSE]), (M.KIND_UNRECORDED, 3), "room again: the count first")
    equal((rig.journal.unrecorded, rig.lock.v), (0, 1))
    reboot(rig, "exhausted")
    equal(rig.journal.unrecorded, 0, "reported once")


async def test_a_chip_fault_fails_closed_is_no_journal_fault_and_is_journaled():
    rig = Rig("chipfault")
    rig.guard.boot(0)
    rig.grant(count=5)
    rig.chip.fail = True
    await press(rig, 1)
    equal(rig.journal.next_counter, 1, "no record without the chip")
    equal((rig.guard.faulted, rig.guard.chip_fault, rig.lock.v), (False, True, 0))
    equal(M.AL_JOURNAL_FAULT in rig.alarms, False)
    equal(rig.alarms[0], M.AL_CHIP_FAULT)
    equal(rig.guard.flags() & (M.F_CHIP_FAULT | M.F_LOCKED), M.F_CHIP_FAULT | M.F_LOCKED)
    equal((rig.permits.left, rig.journal.unrecorded), (5, 1), "not an impression: counted")
    await rig.guard.on_tamper(1)
    await rig.guard.on_tamper(0)
    reboot(rig, "chipfault")
    equal(rig.journal.next_counter, 1, "still failing: nothing recorded, nothing lost")
    equal((rig.journal.unrecorded, rig.journal.pending),
          (1, 1 << M.AL_TAMPER | 1 << M.AL_CHIP_FAULT))
    rig.chip.fail = False
    rig.guard.update_lock()
    kinds = [(rig.event(c)[M.EV_KIND], rig.event(c)[M.EV_CAUSE]) for c in (1, 2, 3)]
    equal(kinds, [(M.KIND_UNRECORDED, 1), (M.KIND_ALARM, M.AL_TAMPER),
                  (M.KIND_ALARM, M.AL_CHIP_FAULT)], "the chip answers again: what was owed")
    equal((rig.guard.chip_fault, rig.journal.pending), (False, 0))


async def test_a_record_the_chip_did_not_count_is_counted_before_the_next():
    rig = Rig("lag")
    rig.guard.boot(0)
    rig.chip.fail_counting = True
    await press(rig, 1)
    equal((rig.journal.next_counter, rig.recorder.lag, rig.guard.chip_fault), (2, 1, True),
          "journaled, so it counts; the chip's count waits")
    await press(rig, 1)
    equal((rig.journal.next_counter, rig.journal.unrecorded), (2, 1), "none before it is counted")
    rig.chip.fail_counting = False
    await press(rig, 1)
    equal(rig.chip.counters[0], rig.journal.next_counter - 1, "every record counted")
    equal(rig.event(2)[M.EV_KIND], M.KIND_UNRECORDED)


def test_clock_unset_is_journaled_once_a_boot():
    rig = Rig("clock")
    rig.clock.t = 0
    for _ in range(3):
        equal(rig.grant(), M.R_NO_TIME)
    equal(rig.alarms, [M.AL_CLOCK_UNSET] * 3)
    equal((rig.journal.next_counter, rig.event(1)[M.EV_CAUSE]), (2, M.AL_CLOCK_UNSET))


def test_records_with_a_cause_are_the_wire_encoding():
    from sealproto import auth, codec
    from testchip import signature_of

    rig = Rig("wire", blocks=128)
    for kind, cause in ((M.KIND_REBOOT, 0x1234502), (M.KIND_ALARM, 7), (M.KIND_UNRECORDED, 0),
                        (M.KIND_UNRECORDED, 0xFFFFFFFF)):
        prev = rig.journal.last_hash
        counter = rig.recorder.record(kind, cause=cause)
        payload = rig.journal.read(counter)
        msg = M.decode(payload)
        want = {M.K_TYPE: M.EVENT, M.EV_COUNTER: counter, M.EV_BOOT: rig.boot,
                M.EV_UPTIME: msg[M.EV_UPTIME], M.EV_TIME: rig.clock.t, M.EV_KIND: kind,
                M.EV_PERMIT: 0, M.EV_OPERATOR: 0, M.EV_PREV: prev, M.EV_CAUSE: cause}
        want[M.EV_SIG] = signature_of(auth.seal_digest(want))
        equal(payload, codec.encode(auth.sign(want, KEY)), f"record {counter}")
        equal(len(payload) <= 192, True, "within the seal's frame buffer")

