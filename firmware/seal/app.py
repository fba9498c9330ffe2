# Entry point the board's main.py calls: mount flash, load provisioning, open the journal,
# start a new boot, then run the sensor, link and housekeeping tasks under asyncio.
import asyncio
import gc
import sys
from micropython import const

import board
import hal

from seal.enrol import Enrolment
from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.link import Link
from seal.permits import Ident, Permits
from seal.ports import Ports, serve
from seal.sensor import count_presses, watch

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_AL_JOURNAL_FAULT = const(5)

FIRMWARE = "seal-0.1.0"
_HOUSEKEEPING_MS = const(1000)
_BATTERY_EVERY = const(30)
# How often (housekeeping rounds) a port redoes what a glitch may have undone: a BLE seal with
# no central advertises again, so that a stack that stopped advertising does not hide it.
_REFRESH_PORTS_EVERY = const(10)
# The journal's reserve (SPEC §10.2): slots only a record that is not an IMPRESSION may take,
# once the lock has shut on a full journal. 64 holds a minute of someone pressing a shut seal
# once a second, a tamper, a low battery and a boot's records; past it every press is still
# counted (one `state` write each). At most a quarter of a small journal.
_RESERVE_EVENTS = const(64)


def run():
    # Importing the firmware from ROMFS leaves ~18 KB of the loader's garbage between the
    # modules' objects (micropython.mem_info(): 65 KB used, 48 KB once collected, BLE board).
    # Collected now, before the first object that lives as long as the firmware, those holes
    # take the small objects and the large buffers below find the heap's end still whole;
    # uncollected, they fill up first and leave no 1 KB block by the time the chip's driver
    # loads (SPEC §13).
    gc.collect()
    try:
        root = hal.mount()
        device_id, key = hal.load_provisioning()
    except OSError:
        _flash_failed()
        raise
    # Before the journal: the ports' buffers are the largest blocks the firmware holds (BLE's
    # output 3 KB in one piece), found whole only in a heap that opening the journal (its
    # recovery after a power cut most of all) has not yet cut up.
    ports = Ports(_ports(device_id))
    try:
        capacity = hal.JOURNAL_CAPACITY
        journal = Journal(root, capacity_events=capacity,
                          reserve_events=min(_RESERVE_EVENTS, capacity // 4)).open()
        journal.new_boot()
    except OSError:
        _flash_failed()
        raise
    try:
        asyncio.run(_main(device_id, key, journal, ports))
    finally:
        # However the firmware stops, nobody counts presses any more: the lock must be shut.
        hal.lock.value(0)
        hal.report("lock", 0)


def _flash_failed():
    # Nothing can be recorded, so nothing may be unlocked: the lock stays shut.
    hal.lock.value(0)
    hal.report("alarm", _AL_JOURNAL_FAULT)


async def _main(device_id, key, journal, ports):
    # The link's wake event: the guard sets it for every record, alarm and change of state.
    wake = asyncio.Event()
    uptime = Uptime()
    chip = hal.chip()
    recorder = Recorder(journal, key, chip, hal.time_s, uptime)
    # Operator identity (SPEC §5.7) only on a board with a keypad or a card reader.
    ident = Ident(journal.root) if hal.INPUTS else None
    permits = Permits(hal.time_s, journal, ident)
    guard = Guard(journal, recorder, permits, hal.lock, hal.led, hal.report, hal.time_s,
                  hal.set_time_ms, board.LOW_BATTERY_MV, wake)
    enrolment = Enrolment(journal.root + ".enrol", device_id, hal.authority_key(), chip)
    link = Link(device_id, key, FIRMWARE + "/" + board.NAME, journal, guard, enrolment,
                hal.battery_mv, hal.urandom, ports.send, wake)
    # After the objects that live as long as the firmware: its garbage then leaves no holes
    # between them (MicroPython's heap does not move objects).
    try:
        enrolment.load()
    except OSError:
        # A chip that cannot verify now enrols nobody: the seal records and sends, and frees
        # no journal space, until a boot where the chip answers.
        hal.report("alarm", _AL_JOURNAL_FAULT)
    # An unclean boot says so first: a REBOOT record with its cause (a torn record, records
    # the chip counted and the flash lacks, the MCU's reset cause).
    guard.boot(hal.RESET_CAUSE)
    if hal.tamper.value():
        await guard.on_tamper(1)
    stamp_flag = asyncio.ThreadSafeFlag()
    tamper_flag = asyncio.ThreadSafeFlag()
    asyncio.get_event_loop().set_exception_handler(_task_died)

    asyncio.create_task(count_presses(hal.stamp, stamp_flag, guard.on_press))
    asyncio.create_task(watch(hal.tamper, tamper_flag, guard.on_tamper))
    asyncio.create_task(serve(link, ports))
    if ident:
        inputs = hal.INPUTS
        asyncio.create_task(ident.watch(hal.keypad if "keypad" in inputs else None,
                                        hal.nfc if "nfc" in inputs else None, guard,
                                        hal.report))
    rounds = 0
    while True:
        # The inputs' slow poll (seal/sensor.py): a lost edge is caught within a round.
        stamp_flag.set()
        tamper_flag.set()
        uptime.ms()
        if rounds % _BATTERY_EVERY == 0:
            guard.check_battery(hal.battery_mv())
        if rounds % _REFRESH_PORTS_EVERY == 0:
            ports.refresh()
        guard.update_lock()
        rounds += 1
        gc.collect()
        await asyncio.sleep_ms(_HOUSEKEEPING_MS)


def _ports(device_id):
    # The board's links in its order of preference (SPEC §6): only what it names is imported.
    ports = []
    for name in hal.LINKS:
        if name == "ble":
            from seal.ble import BlePort

            ports.append(BlePort(hal.ble(), device_id))
        else:
            from seal.uart import StreamPort

            ports.append(StreamPort(hal.uart()))
    return ports


def _task_died(loop, context):
    # A task that dies would leave nobody counting presses or talking to the host: stop the
    # whole firmware instead (SystemExit leaves asyncio.run; run() then shuts the lock). The
    # loop's handler, not a wrapper coroutine per task: that would hold RAM for every task.
    e = context["exception"]
    hal.report("error", type(e).__name__)
    sys.print_exception(e)
    raise SystemExit(1)
