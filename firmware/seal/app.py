# Entry point the board's main.py calls: mount flash, load provisioning, open the journal,
# start a new boot, then run the sensor, link and housekeeping tasks under asyncio.
import asyncio
import sys
from micropython import const

import board
import hal

from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.link import Link
from seal.permits import Permits
from seal.sensor import count_presses, watch
from seal.uart import StreamPort, serve

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_AL_JOURNAL_FAULT = const(5)

FIRMWARE = "seal-0.1.0"
_HOUSEKEEPING_MS = const(1000)
_BATTERY_EVERY = const(30)


def run():
    try:
        root = hal.mount()
        device_id, key = hal.load_provisioning()
        journal = Journal(root, capacity_events=board.JOURNAL_CAPACITY).open()
        journal.new_boot()
    except OSError:
        # Nothing can be recorded, so nothing may be unlocked: the lock stays shut.
        hal.lock.value(0)
        hal.report("alarm", _AL_JOURNAL_FAULT)
        raise
    try:
        asyncio.run(_main(device_id, key, journal))
    finally:
        # However the firmware stops, nobody counts presses any more: the lock must be shut.
        hal.lock.value(0)
        hal.report("lock", 0)


async def _main(device_id, key, journal):
    # The link's wake event: the guard sets it for every record, alarm and change of state.
    wake = asyncio.Event()
    uptime = Uptime()
    recorder = Recorder(journal, key, hal.chip(), hal.time_s, uptime)
    permits = Permits(hal.time_s, journal)
    guard = Guard(journal, recorder, permits, hal.lock, hal.led, hal.report, hal.time_s,
                  hal.set_time_ms, board.LOW_BATTERY_MV, wake)
    port = StreamPort(hal.uart())
    link = Link(device_id, key, FIRMWARE + "/" + board.NAME, journal, guard, hal.battery_mv,
                hal.urandom, port.send, wake)
    # A torn record means power was cut while an event was being journaled: the act it stood
    # for may have happened without counting, so the boot says so with a REBOOT event.
    if journal.discarded:
        guard.record_reboot()
    if hal.tamper.value():
        await guard.on_tamper(1)
    stamp_flag = asyncio.ThreadSafeFlag()
    tamper_flag = asyncio.ThreadSafeFlag()
    asyncio.get_event_loop().set_exception_handler(_task_died)

    asyncio.create_task(count_presses(hal.stamp, stamp_flag, guard.on_press))
    asyncio.create_task(watch(hal.tamper, tamper_flag, guard.on_tamper))
    asyncio.create_task(serve(link, port))
    rounds = 0
    while True:
        # The inputs' slow poll (seal/sensor.py): a lost edge is caught within a round.
        stamp_flag.set()
        tamper_flag.set()
        uptime.ms()
        if rounds % _BATTERY_EVERY == 0:
            guard.check_battery(hal.battery_mv())
        guard.update_lock()
        rounds += 1
        await asyncio.sleep_ms(_HOUSEKEEPING_MS)


def _task_died(loop, context):
    # A task that dies would leave nobody counting presses or talking to the host: stop the
    # whole firmware instead (SystemExit leaves asyncio.run; run() then shuts the lock). The
    # loop's handler, not a wrapper coroutine per task: that would hold RAM for every task.
    e = context["exception"]
    hal.report("error", type(e).__name__)
    sys.print_exception(e)
    raise SystemExit(1)
