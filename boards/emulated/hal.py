# hal.py for the emulated board: the board HAL contract on the MicroPython unix port.
# UART = pty, flash = littlefs2 on an image file, GPIO = stdin/stdout lines, RTC = host clock,
# security chip = the launcher's chip model behind an emulated I2C bus (i2cbus.py).
import asyncio
import os
import sys
import time
import vfs
from micropython import const

import board
from flashdev import FileBlockDevice, filesystem

from seal.uart import readable

# The launcher (sealink_sim.emulator) configures the board through these variables.
# Private consts, strings too: folded into the code, no name in the module's dict (RAM).
_ENV_FLASH = const("SEAL_FLASH")
_ENV_CUT_AT = const("SEAL_CUT_AT")
_ENV_UART_FD = const("SEAL_UART_FD")
_ENV_RTC_OFFSET_S = const("SEAL_RTC_OFFSET_S")
_ENV_BATTERY_MV = const("SEAL_BATTERY_MV")
_ENV_STAMP = const("SEAL_STAMP")
_ENV_TAMPER = const("SEAL_TAMPER")
_ENV_HEAP_PROBE_MS = const("SEAL_HEAP_PROBE_MS")
_ENV_RESET_CAUSE = const("SEAL_RESET_CAUSE")
_ENV_JOURNAL_CAPACITY = const("SEAL_JOURNAL_CAPACITY")
_ENV_AUTHORITY = const("SEAL_AUTHORITY")
_ENV_LINKS = const("SEAL_LINKS")

_MOUNT_POINT = const("/flash")


def report(name, value):
    # One write per line, so a report never interleaves with other output on the pipe. The
    # board's wall clock (us) goes along, so the harness can time what happened on the board.
    sys.stdout.write(f"@{name} {value} {time.time_ns() // 1000}\n")


def _lose_power(writes):
    # No os._exit and no signal module here, and sys.exit would run `finally` blocks that
    # write more flash: report, then hang until the launcher SIGKILLs the process.
    report("powercut", writes)
    while True:
        time.sleep(3600)


def _count_write(writes):
    report("writes", writes)


_bdev = None


def mount():
    global _bdev
    if _bdev is None:
        cut = os.getenv(_ENV_CUT_AT)
        _bdev = FileBlockDevice(os.getenv(_ENV_FLASH), int(cut) if cut else 0, _lose_power,
                                _count_write)
        # Never format here: a flash that does not mount is a fault to report, not to erase.
        vfs.mount(filesystem(_bdev), _MOUNT_POINT)
    return _MOUNT_POINT + "/journal"


def load_provisioning():
    import json

    mount()
    with open(_MOUNT_POINT + "/seal.json") as f:
        conf = json.load(f)
    key = bytes.fromhex(conf["key"])
    if len(key) != 32:
        raise ValueError("seal.json: key must be 32 bytes")
    return conf["device_id"], key


# --- GPIO: the control channel -------------------------------------------------------------
# The launcher writes one command a line on stdin: "press", "release", "open", "close",
# "battery <mv>", "stamp" (press, hold, release, hold), "cut <n>" (power lost at the n-th
# flash write from now), "keys <0-9*#...>" (each key pressed, held, released), "card <uid
# hex>" (a card held to the reader, then taken away).
# Holds are timed on the device's clock, so the debouncer sees real presses whatever the
# host's scheduling. After each command the
# board reports "@done <n>". Edges call the registered handlers from a task, as an IRQ would.
# Longer than the firmware's debounce (10 ms stable, sampled every 2 ms). A stalled host
# process cannot shorten a hold as the firmware sees it: its sampling task is always due
# before the control task's next change, so it samples each level first.
_HOLD_MS = const(20)
# A key is held, and let go, longer than the keypad's debounce (20 ms, seal/ident.py): a finger
# on a keypad takes ~100 ms a key. A card stays in the field as long as a hand holds it there.
_KEY_HOLD_MS = const(60)
_CARD_HOLD_MS = const(200)


class _Input:
    def __init__(self, level):
        self._level = level
        self._handler = None

    def value(self):
        return self._level

    def irq(self, handler=None, trigger=None):
        self._handler = handler

    def _set(self, level):
        if level != self._level:
            self._level = level
            if self._handler:
                self._handler(self)


class _Output:
    def __init__(self, name):
        self._name = name
        self._level = 0

    def value(self, v=None):
        if v is None:
            return self._level
        v = 1 if v else 0
        if v != self._level:
            self._level = v
            report(self._name, v)
        return None


def _env_int(name, default):
    v = os.getenv(name)
    return int(v) if v else default


# The board's journal size, unless the launcher makes it small (tests that fill it); and the
# MCU reset this boot follows, which the launcher gives (a REBOOT cause bit of SPEC §4.1; 0, a
# clean power-on, unless it gives one): there is no MCU here to have reset.
JOURNAL_CAPACITY = _env_int(_ENV_JOURNAL_CAPACITY, board.JOURNAL_CAPACITY)
RESET_CAUSE = _env_int(_ENV_RESET_CAUSE, 0)
# Which links this board has ("uart", "ble", in order of preference), as the launcher says.
LINKS = tuple(os.getenv(_ENV_LINKS).split(",")) if os.getenv(_ENV_LINKS) else board.LINKS
# Its operator inputs ("keypad", "nfc"), as board.py declares them.
INPUTS = board.INPUTS

stamp = _Input(_env_int(_ENV_STAMP, 0))
tamper = _Input(_env_int(_ENV_TAMPER, 0))
# A 3x4 matrix keypad as the scan of a real one reads it: value() the ASCII code of the key
# held, 0 for none; and an NFC reader (a PN532 on a real board): value() the UID of the card in
# the field, else None. Their handlers run on every change, as the lines' IRQs would.
keypad = _Input(0)
nfc = _Input(None)
lock = _Output("lock")
led = _Output("led")
_battery_mv = _env_int(_ENV_BATTERY_MV, 3700)


def battery_mv():
    return _battery_mv


async def _apply(words):
    # Every level is held _HOLD_MS before the next command: no finger is faster than that,
    # and the debouncer must see each level settle.
    global _battery_mv
    cmd = words[0]
    if cmd == "stamp":
        stamp._set(1)
        await asyncio.sleep_ms(_HOLD_MS)
        stamp._set(0)
    elif cmd == "press" or cmd == "release":
        stamp._set(1 if cmd == "press" else 0)
    elif cmd == "open" or cmd == "close":
        tamper._set(1 if cmd == "open" else 0)
    elif cmd == "battery":
        _battery_mv = int(words[1])
        return
    elif cmd == "keys":
        for key in words[1]:
            keypad._set(ord(key))
            await asyncio.sleep_ms(_KEY_HOLD_MS)
            keypad._set(0)
            await asyncio.sleep_ms(_KEY_HOLD_MS)
        return
    elif cmd == "card":
        nfc._set(bytes.fromhex(words[1]))
        await asyncio.sleep_ms(_CARD_HOLD_MS)
        nfc._set(None)
    elif cmd == "cut":
        # Lose power at the N-th flash write from now (the launcher's arm_power_cut).
        _bdev.cut_at = _bdev.writes + int(words[1])
        return
    else:
        report("error", "unknown-command")
        return
    await asyncio.sleep_ms(_HOLD_MS)


async def _control():
    # A finger does not act before the firmware watches its inputs: commands wait until both
    # inputs have handlers and their debouncers had time to learn the level found at boot.
    while stamp._handler is None or tamper._handler is None or (
            "keypad" in INPUTS and keypad._handler is None) or (
            "nfc" in INPUTS and nfc._handler is None):
        await asyncio.sleep_ms(_HOLD_MS)
    await asyncio.sleep_ms(_HOLD_MS)
    # The launcher writes whole lines, so a readable stdin holds a whole command.
    done = 0
    while True:
        await readable(sys.stdin)
        line = sys.stdin.readline()
        if not line:
            return
        words = line.split()
        if words:
            await _apply(words)
            done += 1
            report("done", done)


# Queued now, runs as soon as the firmware starts its event loop (asyncio.run).
asyncio.create_task(_control())


async def _heap_probe(interval_ms):
    # For the firmware bench: the live heap (collected first, so garbage waiting for the GC
    # does not count) at a scheduling point every interval_ms; each new peak is reported.
    import gc

    peak = 0
    while True:
        gc.collect()
        used = gc.mem_alloc()
        if used > peak:
            peak = used
            report("heap", peak)
        await asyncio.sleep_ms(interval_ms)


if os.getenv(_ENV_HEAP_PROBE_MS):
    asyncio.create_task(_heap_probe(int(os.getenv(_ENV_HEAP_PROBE_MS))))


# --- UART, RTC, randomness ------------------------------------------------------------------

_uart = None


def uart():
    # The pty master, opened non-blocking by the launcher; its slave is the host's serial port.
    # It stays open as long as the board runs, as a UART does.
    global _uart
    if _uart is None:
        _uart = open(int(os.getenv(_ENV_UART_FD)), "r+b")  # noqa: SIM115
    return _uart


def ble():
    # The stand-in for the port's `bluetooth` module (bluetooth.py beside this file): the
    # documented bluetooth.BLE API over a socket to the launcher's bumble peripheral.
    import bluetooth

    return bluetooth.BLE()


_rtc_offset_ms = 0
_rtc_set = False
if os.getenv(_ENV_RTC_OFFSET_S) not in (None, "none"):
    _rtc_offset_ms = int(float(os.getenv(_ENV_RTC_OFFSET_S)) * 1000)
    _rtc_set = True


def time_s():
    if not _rtc_set:
        return 0
    return (time.time_ns() // 1000000 + _rtc_offset_ms) // 1000


def set_time_ms(ms):
    global _rtc_offset_ms, _rtc_set
    _rtc_offset_ms = ms - time.time_ns() // 1000000
    _rtc_set = True


_chip = None


def chip():
    # The firmware's own ATECC608 driver; the chip's keys and counters stay with the launcher.
    global _chip
    if _chip is None:
        from i2cbus import I2C

        from seal.atecc import Atecc608

        _chip = Atecc608(I2C())
    return _chip


def authority_key():
    # The enrolment authority's public key (SPEC §5.11). A real seal has it built into its
    # firmware image (seal/mcu.py); the launcher gives it here, outside the flash, as an image
    # would: a key read from the filesystem would enrol whoever wrote the file.
    key = os.getenv(_ENV_AUTHORITY)
    return bytes.fromhex(key) if key else None


# The functions themselves: a wrapper would be one more function object in RAM.
ticks_ms = time.ticks_ms
urandom = os.urandom
