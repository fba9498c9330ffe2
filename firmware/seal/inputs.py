# Operator inputs of the `machine` boards (SPEC §5.7): a 3x4 matrix keypad on GPIOs and a PN532
# NFC reader on I2C, with the HAL's contract that seal.ident reads (value(), irq()).
# Written from the parts' datasheets; not yet run on hardware (the emulated board models both).
from machine import Pin
from micropython import const
from time import sleep_ms, ticks_diff, ticks_ms

# A common 3x4 membrane keypad (e.g. Adafruit 419): rows top to bottom, columns left to right.
_KEYS = b"123456789*0#"

# PN532 (NXP user manual UM0701-02): I2C address 0x24; a frame is 00 00 FF LEN LCS TFI DATA DCS
# 00, TFI D4 host to PN532, D5 back; a read starts with a status byte, 01 = ready.
_ADDR = const(0x24)
_SAM_CONFIGURATION = const(0x14)
_IN_LIST_PASSIVE_TARGET = const(0x4A)
_READY_MS = const(50)


class Keypad:
    # Rows are outputs held low while idle; columns inputs with pull-ups, so any key pulls its
    # column low and the column's IRQ fires. value() then drives one row low at a time to find
    # which key it is (its ASCII code, 0: none). Debounce is seal.ident's: this only reads.
    def __init__(self, row_pins, col_pins):
        self._rows = [Pin(p, Pin.OUT, value=0) for p in row_pins]
        self._cols = [Pin(p, Pin.IN, Pin.PULL_UP) for p in col_pins]

    def irq(self, handler):
        for col in self._cols:
            col.irq(handler, Pin.IRQ_FALLING | Pin.IRQ_RISING)

    def value(self):
        found = 0
        width = len(self._cols)
        for r, row in enumerate(self._rows):
            for other in self._rows:
                other.value(0 if other is row else 1)
            for c, col in enumerate(self._cols):
                if not found and not col.value():
                    found = _KEYS[r * width + c]
        for row in self._rows:
            row.value(0)
        return found


class Pn532:
    # InListPassiveTarget waits for a card and the PN532 pulls its IRQ line low once one is in
    # the field; value() reads the answer (the card's UID) and asks again for the next card. A
    # reader that does not answer reads no card: the seal goes on without it.
    def __init__(self, i2c, irq_pin):
        self._i2c = i2c
        self._irq = Pin(irq_pin, Pin.IN, Pin.PULL_UP)
        self._buf = bytearray(32)
        self._armed = False

    def irq(self, handler):
        self._irq.irq(handler, Pin.IRQ_FALLING)
        try:
            # Normal mode, no virtual-card timeout, the IRQ line in use.
            self._command(_SAM_CONFIGURATION, b"\x01\x14\x01")
            self._answer()
            self._arm()
        except OSError:
            self._armed = False

    def value(self):
        if not self._armed or self._irq.value():
            return None
        try:
            data = self._answer()
            # NbTg, Tg, SENS_RES (2), SEL_RES, NFCIDLength, NFCID1
            uid = bytes(data[6:6 + data[5]]) if data and data[0] else None
            self._arm()
            return uid
        except (OSError, IndexError):
            self._armed = False
            return None

    def _arm(self):
        # One target, 106 kbps type A (ISO/IEC 14443-3 A: MIFARE, NTAG and most badges).
        self._command(_IN_LIST_PASSIVE_TARGET, b"\x01\x00")
        self._armed = True

    def _command(self, cmd, data):
        n = len(data) + 2
        body = bytes((0xD4, cmd)) + data
        frame = bytes((0, 0, 0xFF, n, (0x100 - n) & 0xFF)) + body
        frame += bytes(((0x100 - sum(body)) & 0xFF, 0))
        self._i2c.writeto(_ADDR, frame)
        self._ready()
        ack = self._buf
        self._i2c.readfrom_into(_ADDR, memoryview(ack)[:7])
        if ack[1:7] != b"\x00\x00\xff\x00\xff\x00":
            raise OSError(5, "PN532: no ACK")

    def _answer(self):
        # The data of the answer to the last command, after its TFI and command code.
        self._ready()
        buf = self._buf
        self._i2c.readfrom_into(_ADDR, buf)
        if buf[1:4] != b"\x00\x00\xff" or buf[6] != 0xD5:
            raise OSError(5, "PN532: bad frame")
        return memoryview(buf)[8:6 + buf[4]]

    def _ready(self):
        start = ticks_ms()
        status = memoryview(self._buf)[:1]
        while True:
            self._i2c.readfrom_into(_ADDR, status)
            if status[0] == 1:
                return
            if ticks_diff(ticks_ms(), start) > _READY_MS:
                raise OSError(110, "PN532: not ready")
            sleep_ms(1)
