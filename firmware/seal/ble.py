# BLE port: the GATT service of SPEC §6 on MicroPython's low-level bluetooth.BLE API (the same
# code on the ESP32's NimBLE and the Pico W's btstack), carrying the UART's byte stream in chunks.
import asyncio
from micropython import const

# bluetooth.BLE IRQ events and characteristic flags (MicroPython docs, "bluetooth").
_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)
_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_NOTIFY = const(0x0010)
_ENOMEM = const(12)

# SPEC §6, copies of sealproto.gatt (firmware/tests/test_wire_constants.py checks them).
_SERVICE_UUID = const("5ea10000-5ea1-4c1d-8e5e-a15ea1000000")
_RX_UUID = const("5ea10001-5ea1-4c1d-8e5e-a15ea1000000")
_TX_UUID = const("5ea10002-5ea1-4c1d-8e5e-a15ea1000000")
_ATT_MTU_MIN = const(23)
_ATT_MTU_WANTED = const(247)
_ATT_HEADER = const(3)
_NAME_MAX = const(26)

_AD_FLAGS = const(0x01)
_AD_SHORT_NAME = const(0x08)
_AD_COMPLETE_NAME = const(0x09)
_AD_UUID128_ALL = const(0x07)
_LE_ONLY_GENERAL_DISCOVERABLE = const(0x06)
# Found within a scan window of a gateway that is looking: a seal waiting for its gateway
# advertises fast, not at a beacon's 1 s.
_ADV_INTERVAL_US = const(100000)
# What the central may write before the link reads it (append mode): two frames of the longest
# message (SPEC §2), so an ACK arriving while a PERMIT is read is not cut off.
_RX_BUFFER = const(1024)
# Output waiting for the stack: a window of the longest EVENTs with a STATUS and ALARMs, as
# seal/uart.py's _OUT_MAX. Beyond it output is dropped; the link sends it again.
_OUT_MAX = const(3072)
# How long to wait when the stack has no buffer for a notification: it frees them as the
# controller sends, a connection event (7.5 ms and up) at a time, and tells nobody (the
# bluetooth docs give no event for a notification sent, only _IRQ_GATTS_INDICATE_DONE for an
# indication). Well inside one connection event, so a freed buffer waits at most 2 ms; a try
# that finds none costs one gatts_notify call, so 1 ms spent more than it gained
# (`tools/bench.py ble`, the emulated seal's drain at MTU 23, against 5 ms and 1 ms).
_BUSY_MS = const(2)


def _uuid_le(text):
    # The 16 bytes of a 128-bit UUID as the air carries them, least significant first.
    raw = bytes.fromhex(text.replace("-", ""))
    out = bytearray(16)
    for i in range(16):
        out[i] = raw[15 - i]
    return out


def advertising(device_id):
    # (advertising data, scan response) of SPEC §6: the flags and the device id as the local
    # name, complete or its first _NAME_MAX bytes, shortened; the service in the scan response.
    name = device_id.encode()
    kind = _AD_COMPLETE_NAME
    if len(name) > _NAME_MAX:
        name = name[:_NAME_MAX]
        kind = _AD_SHORT_NAME
    adv = bytes((2, _AD_FLAGS, _LE_ONLY_GENERAL_DISCOVERABLE, len(name) + 1, kind)) + name
    resp = bytes((17, _AD_UUID128_ALL)) + _uuid_le(_SERVICE_UUID)
    return adv, resp


class BlePort:
    # The seal as the GATT peripheral of one central at a time. It can carry the link from the
    # central's first write of a connection on (up()): the host enables notifications before
    # it writes (SPEC §6), and neither stack tells the peripheral of a subscription (a CCCD
    # write raises no IRQ), so what is sent before that is lost and is not sent at all.
    def __init__(self, ble, device_id):
        import bluetooth

        self._ble = ble
        ble.active(True)
        # The largest ATT MTU the seal accepts when the central asks (it never asks itself).
        ble.config(mtu=_ATT_MTU_WANTED)
        ((self._rx, self._tx),) = ble.gatts_register_services((
            (bluetooth.UUID(_SERVICE_UUID), (
                (bluetooth.UUID(_RX_UUID), _FLAG_WRITE_NO_RESPONSE),
                (bluetooth.UUID(_TX_UUID), _FLAG_NOTIFY),
            )),
        ))
        ble.gatts_set_buffer(self._rx, _RX_BUFFER, True)
        self._adv, self._resp = advertising(device_id)
        # Set for the port's reader on a write and on a disconnect (the link may move to a UART).
        self._event = asyncio.ThreadSafeFlag()
        self._conn = None
        self._heard = False
        self._due = False
        self._chunk = _ATT_MTU_MIN - _ATT_HEADER
        self._buf = bytearray(_OUT_MAX)
        self._view = memoryview(self._buf)
        self._head = 0
        self._tail = 0
        self.dropped_bytes = 0
        self.connections = 0
        ble.irq(self._irq)
        self._advertise()

    def _advertise(self):
        self._ble.gap_advertise(_ADV_INTERVAL_US, adv_data=self._adv, resp_data=self._resp)

    def _irq(self, event, data):
        # Scheduler context on both ports: short bookkeeping here, the reading in the reader.
        if event == _IRQ_CENTRAL_CONNECT:
            self._conn = data[0]
            self.connections += 1
            self._heard = False
            self._chunk = _ATT_MTU_MIN - _ATT_HEADER
            self._head = self._tail = 0
        elif data[0] != self._conn:
            return
        elif event == _IRQ_GATTS_WRITE and data[1] == self._rx:
            if not self._heard:
                self._heard = True
                self._due = True
            self._event.set()
        elif event == _IRQ_MTU_EXCHANGED:
            self._chunk = data[1] - _ATT_HEADER
        elif event == _IRQ_CENTRAL_DISCONNECT:
            self._conn = None
            self._heard = False
            self._head = self._tail = 0
            # Both stacks stop advertising on a connection; a seal must be findable again.
            self._advertise()
            self._event.set()

    def up(self):
        return self._heard

    def refresh(self):
        # Advertising again costs nothing while it runs (the stack restarts it) and finds a
        # seal whose stack stopped it without a word; connected, the seal stays unseen.
        if self._conn is None:
            self._advertise()

    def session_due(self):
        # True once per connection, at its first write: a new central starts a new session.
        due = self._due
        self._due = False
        return due

    def send(self, frame):
        if not self._heard:
            self.dropped_bytes += len(frame)
            return
        n = len(frame)
        if self._tail + n > _OUT_MAX:
            # Move what waits to the front rather than allocate: the heap never moves objects.
            waiting = self._tail - self._head
            self._buf[:waiting] = self._view[self._head:self._tail]
            self._head = 0
            self._tail = waiting
            if waiting + n > _OUT_MAX:
                self.dropped_bytes += n
                return
        self._buf[self._tail:self._tail + n] = frame
        self._tail += n

    def flush(self):
        # True while output waits for the stack's buffers.
        while self._head < self._tail:
            n = min(self._tail - self._head, self._chunk)
            try:
                self._ble.gatts_notify(self._conn, self._tx, self._view[self._head:self._head + n])
            except OSError as e:
                if e.args[0] == _ENOMEM and self._heard:
                    return True
                # The central is gone (the disconnect IRQ is on its way): what waits is lost,
                # as on a cut cable; the link sends it again in the next session.
                self.dropped_bytes += self._tail - self._head
                self._head = self._tail = 0
                return False
            self._head += n
        self._head = self._tail = 0
        return False

    async def writable(self):
        await asyncio.sleep_ms(_BUSY_MS)

    async def readable(self):
        await self._event.wait()

    def receive(self):
        # Append mode: the read takes everything written since the last and empties the value.
        data = self._ble.gatts_read(self._rx)
        return data if data else None
