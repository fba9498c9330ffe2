# mcu.py: the part of the board HAL contract that every `machine`-based board shares.
# A board's hal.py star-imports this and adds what differs by chip: battery_mv() and uart().
import json
import machine
import os
import time
from machine import I2C, RTC, Pin
from micropython import const

from board import (
    CHIP_I2C_ID,
    CHIP_SCL_PIN,
    CHIP_SDA_PIN,
    INPUTS,  # also the HAL's: seal.app reads hal.INPUTS
    JOURNAL_CAPACITY,  # noqa: F401  (the HAL's: seal.app reads hal.JOURNAL_CAPACITY)
    LED_PIN,
    LINKS,  # noqa: F401  (the HAL's: seal.app reads hal.LINKS)
    LOCK_PIN,
    STAMP_ACTIVE_LOW,
    STAMP_PIN,
    TAMPER_ACTIVE_LOW,
    TAMPER_PIN,
)

# Any clock reading before 2024-01-01 is the RTC's power-on default, never a set time.
_VALID_AFTER_S = const(1704067200)
# Ports whose time.time() counts from 2000 need this added to be Unix time.
_EPOCH_S = 0 if time.gmtime(0)[0] == 1970 else 946684800
# REBOOT causes (SPEC §4.1, key 10) of the MCU's own reset.
_CA_WATCHDOG = const(8)
_CA_BROWNOUT = const(16)
_CA_HARD_RESET = const(32)


class _Input:
    def __init__(self, pin, active_low):
        self._pin = Pin(pin, Pin.IN, Pin.PULL_UP)
        self._invert = 1 if active_low else 0

    def value(self):
        return self._pin.value() ^ self._invert

    def irq(self, handler):
        self._pin.irq(handler, Pin.IRQ_RISING | Pin.IRQ_FALLING)


stamp = _Input(STAMP_PIN, STAMP_ACTIVE_LOW)
tamper = _Input(TAMPER_PIN, TAMPER_ACTIVE_LOW)
# Shut at boot: the pin is driven low from the moment it becomes an output.
lock = Pin(LOCK_PIN, Pin.OUT, value=0)
led = Pin(LED_PIN, Pin.OUT, value=0)


# Why the MCU last reset, as a REBOOT cause (seal.app reads it, with JOURNAL_CAPACITY): a
# power-on, waking from deep sleep and a soft reset (machine.soft_reset) are clean (0). Not
# every port names a brownout or a hard reset. Values, not functions: a function costs RAM.
_cause = machine.reset_cause()
if _cause == machine.WDT_RESET:
    RESET_CAUSE = _CA_WATCHDOG
elif _cause == getattr(machine, "BROWNOUT_RESET", -1):
    RESET_CAUSE = _CA_BROWNOUT
elif _cause == getattr(machine, "HARD_RESET", -1):
    RESET_CAUSE = _CA_HARD_RESET
else:
    RESET_CAUSE = 0
del _cause


# Operator inputs (SPEC §5.7), as board.py wires them: a 3x4 keypad, a PN532 on its own bus.
if "keypad" in INPUTS:
    from board import KEYPAD_COL_PINS, KEYPAD_ROW_PINS

    from seal.inputs import Keypad

    keypad = Keypad(KEYPAD_ROW_PINS, KEYPAD_COL_PINS)
if "nfc" in INPUTS:
    from board import NFC_I2C_ID, NFC_IRQ_PIN, NFC_SCL_PIN, NFC_SDA_PIN

    from seal.inputs import Pn532

    nfc = Pn532(I2C(NFC_I2C_ID, sda=Pin(NFC_SDA_PIN), scl=Pin(NFC_SCL_PIN), freq=100_000),
                NFC_IRQ_PIN)


def mount():
    return "/journal"


def load_provisioning():
    with open("/seal.json") as f:
        conf = json.load(f)
    key = bytes.fromhex(conf["key"])
    if len(key) != 32:
        raise ValueError("/seal.json: key must be 32 bytes")
    return conf["device_id"], key


_chip = None


def chip():
    # The ATECC608 on its own bus. 100 kHz: the wake pulse is a write to address 0x00, whose
    # 8 zero bits hold SDA low for 80 us at that rate, past the chip's 60 us (tWLO).
    global _chip
    if _chip is None:
        from seal.atecc import Atecc608

        bus = I2C(CHIP_I2C_ID, sda=Pin(CHIP_SDA_PIN), scl=Pin(CHIP_SCL_PIN), freq=100_000)
        _chip = Atecc608(bus)
    return _chip


def ble():
    # The radio of both boards (ESP32: NimBLE; Pico W: btstack on the CYW43439).
    import bluetooth

    return bluetooth.BLE()


def authority_key():
    # The enrolment authority's public key (SPEC §5.11), built into the image by
    # `tools/build.py --authority` as the frozen module `authority`: a key read from the
    # filesystem would enrol whoever wrote the file. None: this build enrols no gateway.
    try:
        from authority import KEY
    except ImportError:
        return None
    return KEY


def time_s():
    t = time.time() + _EPOCH_S
    return t if t >= _VALID_AFTER_S else 0


def set_time_ms(ms):
    # gmtime: (year, month, day, hour, minute, second, weekday, ...); RTC wants the weekday
    # fourth and sub-seconds last.
    t = time.gmtime(ms // 1000 - _EPOCH_S)
    RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], (ms % 1000) * 1000))


def ticks_ms():
    return time.ticks_ms()


def urandom(n):
    return os.urandom(n)


def report(name, value):
    print(f"@{name} {value}")
