# bluetooth.py for the emulated board: MicroPython's documented bluetooth.BLE (the peripheral
# subset), bridged by sealink_sim.air to a bumble device; the NimBLE binding where docs are silent.
import asyncio
import errno
import os
import select
import sys
from asyncio import core
from micropython import const, schedule

FLAG_READ = const(0x0002)
FLAG_WRITE_NO_RESPONSE = const(0x0004)
FLAG_WRITE = const(0x0008)
FLAG_NOTIFY = const(0x0010)
FLAG_INDICATE = const(0x0020)

_ENV_BLE_FD = const("SEAL_BLE_FD")

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

# The socket's frames, [length u16 LE][kind u8][payload] (sealink_sim/air.py's docstring has
# them all): kinds board -> air in capitals, air -> board in small letters.
_K_ACTIVE = const(0x41)  # A [on]                      -> a [addr_type][addr 6]
_K_REGISTER = const(0x52)  # R [services]               -> r [status][handle u16 ...]
_K_ADVERTISE = const(0x56)  # V [interval_us u32][connectable][n][adv][m][resp]
_K_DISCONNECT = const(0x44)  # D [conn u16]
_K_NOTIFY = const(0x54)  # T [conn u16][handle u16][data]
_K_VALUE = const(0x57)  # W [handle u16][send_update][data]
_K_MTU = const(0x4D)  # M [mtu u16]
_K_ACTIVE_OK = const(0x61)
_K_REGISTERED = const(0x72)
_K_CONNECTED = const(0x43)  # C [conn u16][addr_type][addr 6]
_K_GONE = const(0x58)  # X [conn u16][addr_type][addr 6]
_K_WRITTEN = const(0x77)  # w [conn u16][handle u16][data]
_K_EXCHANGED = const(0x6D)  # m [conn u16][mtu u16]
_K_FREED = const(0x66)  # f [count]

# "Characteristics and descriptors have a default maximum size of 20 bytes" (bluetooth.rst).
_DEFAULT_ATTR_LEN = const(20)
_ATT_MTU_MIN = const(23)
_ATT_MTU_MAX = const(517)
# NimBLE's preferred MTU when MicroPython leaves it alone: ESP-IDF's
# CONFIG_BT_NIMBLE_ATT_PREFERRED_MTU default.
_PREFERRED_MTU = const(256)
# gatts_notify takes one NimBLE mbuf (ble_hs_mbuf_from_flat) until the controller sent it; with
# none free it fails with ENOMEM (modbluetooth_nimble.c). The pool: ESP-IDF's
# CONFIG_BT_NIMBLE_MSYS_1_BLOCK_COUNT default for the ESP32, 12 blocks.
_NOTIFY_POOL = const(12)
_ADV_MAX = const(31)
# Holds the largest frame: a write at the largest ATT MTU (517 - 3 bytes) and its 7-byte head.
_RX_SIZE = const(528)
_REPLY_TIMEOUT_MS = const(5000)
_NO_CONN = const(-1)


async def _readable(stream):
    yield core._io_queue.queue_read(stream)


def _u16(buf, i):
    return buf[i] | buf[i + 1] << 8


def _put16(buf, i, v):
    buf[i] = v & 0xFF
    buf[i + 1] = v >> 8


def _keep(buf, data):
    # Advertising payloads: any buffer, a str too, at most a legacy PDU's 31 bytes.
    if isinstance(data, str):
        data = data.encode()
    if len(data) > _ADV_MAX:
        raise OSError(errno.EINVAL)
    buf[: len(data)] = data
    return len(data)


def _hex(text):
    digits = text.replace("-", "")
    raw = bytes.fromhex(digits)
    return bytes(reversed(raw))


class UUID:
    def __init__(self, value):
        if isinstance(value, UUID):
            self._data = value._data
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError("invalid UUID")
            self._data = value.to_bytes(2 if value <= 0xFFFF else 4, "little")
        elif isinstance(value, str):
            self._data = _hex(value)
        else:
            self._data = bytes(value)
        if len(self._data) not in (2, 4, 16):
            raise ValueError("invalid UUID")

    def __eq__(self, other):
        return isinstance(other, UUID) and self._data == other._data

    def __hash__(self):
        return hash(self._data)

    def __repr__(self):
        d = bytes(reversed(self._data)).hex()
        if len(d) < 32:
            return "UUID(0x" + d + ")"
        return "UUID('" + "-".join((d[:8], d[8:12], d[12:16], d[16:20], d[20:])) + "')"


class _BLE:
    def __init__(self, fd):
        self._sock = open(fd, "r+b") if fd is not None else None  # noqa: SIM115
        self._poll = None
        if self._sock is not None:
            self._poll = select.poll()
            self._poll.register(self._sock, select.POLLIN)
        self._rx = bytearray(_RX_SIZE)
        self._rxv = memoryview(self._rx)
        self._rxn = 0
        self._head = bytearray(8)
        self._addr = bytearray(6)
        self._addr_view = memoryview(self._addr)
        self._mac = None
        self._active = False
        self._handler = None
        self._name = b"MPY NIMBLE"
        self._mtu_pref = _PREFERRED_MTU
        self._values = {}
        self._adv = bytearray(_ADV_MAX)
        self._adv_n = 0
        self._resp = bytearray(_ADV_MAX)
        self._resp_n = 0
        self._reset_link()

    def _reset_link(self):
        self._conn = _NO_CONN
        self._mtu = _ATT_MTU_MIN
        self._free = _NOTIFY_POOL

    # --- the socket ---------------------------------------------------------------------

    def _send(self, head, data=None):
        self._write(head)
        if data:
            self._write(data)

    def _write(self, buf):
        view = memoryview(buf)
        while view:
            n = self._sock.write(view)
            if n:
                view = view[n:]
            else:
                # The air reads all the time; a full socket is a short wait, as a host
                # stack's command queue is.
                p = select.poll()
                p.register(self._sock, select.POLLOUT)
                if not p.poll(_REPLY_TIMEOUT_MS):
                    raise OSError(errno.ETIMEDOUT)

    def _frame(self, kind, size):
        head = self._head
        _put16(head, 0, size + 1)
        head[2] = kind
        return head

    def _fill(self):
        n = self._sock.readinto(self._rxv[self._rxn :])
        if n == 0:
            raise OSError(errno.EIO)
        if n:
            self._rxn += n

    def _await_reply(self, kind):
        # Blocks as a call into the host stack does. Frames before the reply stay queued and
        # are delivered from the scheduler right after, as the port's IRQs are.
        rx = self._rxv
        while True:
            off = 0
            while off + 2 <= self._rxn:
                size = _u16(rx, off)
                end = off + 2 + size
                if end > self._rxn:
                    break
                if rx[off + 2] == kind:
                    reply = bytes(rx[off + 3 : end])
                    rest = self._rxn - end
                    rx[off : off + rest] = rx[end : end + rest]
                    self._rxn = off + rest
                    if self._rxn:
                        schedule(_pump, None)
                    return reply
                off = end
            if self._rxn == _RX_SIZE:
                # Full of events and no reply yet: only then are they delivered from here.
                self._pump()
            if not self._poll.poll(_REPLY_TIMEOUT_MS):
                raise OSError(errno.ETIMEDOUT)
            self._fill()

    def _pump(self):
        rx = self._rxv
        off = 0
        while off + 2 <= self._rxn:
            end = off + 2 + _u16(rx, off)
            if end > self._rxn:
                break
            self._dispatch(rx, off + 2, end)
            off = end
        rest = self._rxn - off
        if off:
            rx[0:rest] = rx[off : off + rest]
        self._rxn = rest

    def _dispatch(self, rx, at, end):
        kind = rx[at]
        if kind == _K_FREED:
            # Two bytes long: read no connection handle past it (at the buffer's end it is
            # past the buffer).
            self._free = min(_NOTIFY_POOL, self._free + rx[at + 1])
            return
        conn = _u16(rx, at + 1)
        if kind in (_K_CONNECTED, _K_GONE):
            self._addr_view[:] = rx[at + 4 : at + 10]
            data = (conn, rx[at + 3], self._addr_view)
            if kind == _K_CONNECTED:
                # Legacy connectable advertising ends when a central connects (both stacks).
                self._reset_link()
                self._conn = conn
                self._irq(_IRQ_CENTRAL_CONNECT, data)
            else:
                if conn == self._conn:
                    self._reset_link()
                self._irq(_IRQ_CENTRAL_DISCONNECT, data)
        elif kind == _K_WRITTEN:
            handle = _u16(rx, at + 3)
            if self._store(handle, rx[at + 5 : end]):
                self._irq(_IRQ_GATTS_WRITE, (conn, handle))
        elif kind == _K_EXCHANGED:
            if conn == self._conn:
                self._mtu = _u16(rx, at + 3)
            self._irq(_IRQ_MTU_EXCHANGED, (conn, _u16(rx, at + 3)))

    def _store(self, handle, data):
        # A remote write: truncated to the buffer, or appended up to it (gatts_set_buffer).
        entry = self._values.get(handle)
        if entry is None:
            return False
        buf = entry[0]
        start = entry[1] if entry[2] else 0
        n = min(len(data), len(buf) - start)
        buf[start : start + n] = data[:n]
        entry[1] = start + n
        return True

    def _irq(self, event, data):
        handler = self._handler
        if handler is None:
            return
        try:
            handler(event, data)
        except Exception as e:
            # modbluetooth.c calls the handler "protected": it prints and carries on.
            sys.print_exception(e)

    async def _events(self):
        while True:
            await _readable(self._sock)
            try:
                self._fill()
            except OSError:
                return  # the air is gone: the radio is off
            self._pump()

    # --- the documented API ------------------------------------------------------------

    def _need_active(self):
        if not self._active:
            raise OSError(errno.ENODEV)

    def active(self, *args):
        if args:
            on = bool(args[0])
            if on and self._sock is None:
                raise OSError(errno.ENODEV)
            if on != self._active and self._sock is not None:
                head = self._frame(_K_ACTIVE, 1)
                head[3] = 1 if on else 0
                self._send(memoryview(head)[:4])
                if on:
                    reply = self._await_reply(_K_ACTIVE_OK)
                    self._mac = (reply[0], reply[1:7])
                else:
                    self._values = {}
                    self._reset_link()
                self._active = on
        return self._active

    def config(self, *args, **kwargs):
        if not kwargs:
            if len(args) != 1:
                raise TypeError("must query one param")
            name = args[0]
            if name == "gap_name":
                return self._name
            self._need_active()
            if name == "mac":
                return self._mac
            if name == "mtu":
                return self._mtu_pref
            raise ValueError("unknown config param")
        if args:
            raise TypeError("can't specify pos and kw args")
        for name, value in kwargs.items():
            if name == "gap_name":
                # Any buffer, a str too (the C binding takes the buffer protocol).
                self._name = value.encode() if isinstance(value, str) else bytes(value)
            elif name == "mtu":
                self._need_active()
                if not _ATT_MTU_MIN <= value <= _ATT_MTU_MAX:
                    raise OSError(errno.EINVAL)
                self._mtu_pref = value
                head = self._frame(_K_MTU, 2)
                _put16(head, 3, value)
                self._send(memoryview(head)[:5])
            else:
                raise ValueError("unknown config param")
        return None

    def irq(self, handler):
        self._handler = handler

    def gap_advertise(self, interval_us=500000, adv_data=None, *, resp_data=None,
                      connectable=True):
        self._need_active()
        if interval_us is None:
            interval_us = 0
        else:
            # "if adv_data (or resp_data) is None, then the data passed to the previous call
            # to gap_advertise will be reused" (bluetooth.rst).
            if adv_data is not None:
                self._adv_n = _keep(self._adv, adv_data)
            if resp_data is not None:
                self._resp_n = _keep(self._resp, resp_data)
        head = self._frame(_K_ADVERTISE, 7 + self._adv_n + self._resp_n)
        head[3:7] = interval_us.to_bytes(4, "little")
        head[7] = 1 if connectable else 0
        self._send(head)
        self._send(bytes((self._adv_n,)), memoryview(self._adv)[: self._adv_n])
        self._send(bytes((self._resp_n,)), memoryview(self._resp)[: self._resp_n])

    def gap_disconnect(self, conn_handle):
        self._need_active()
        if conn_handle != self._conn:
            return False
        head = self._frame(_K_DISCONNECT, 2)
        _put16(head, 3, conn_handle)
        self._send(memoryview(head)[:5])
        return True

    def gatts_register_services(self, services):
        self._need_active()
        if self._conn != _NO_CONN:
            # NimBLE's ble_gatts_reset() refuses while a connection is up (BLE_HS_EBUSY).
            raise OSError(errno.EBUSY)
        body = bytearray((len(services),))
        shape = []
        for service in services:
            uuid, chars = service
            if not isinstance(uuid, UUID):
                raise ValueError("invalid service UUID")
            body += bytes((len(uuid._data),)) + uuid._data + bytes((len(chars),))
            count = 0
            for char in chars:
                if not 2 <= len(char) <= 3 or not isinstance(char[0], UUID):
                    raise ValueError("invalid characteristic tuple")
                descriptors = char[2] if len(char) == 3 else ()
                body += bytes((len(char[0]._data),)) + char[0]._data
                body += char[1].to_bytes(2, "little") + bytes((len(descriptors),))
                for desc in descriptors:
                    if not isinstance(desc[0], UUID):
                        raise ValueError("invalid descriptor UUID")
                    body += bytes((len(desc[0]._data),)) + desc[0]._data
                    body += desc[1].to_bytes(2, "little")
                count += 1 + len(descriptors)
            shape.append(count)
        self._send(self._frame(_K_REGISTER, len(body))[:3], body)
        reply = self._await_reply(_K_REGISTERED)
        if reply[0]:
            raise OSError(reply[0])
        handles = [_u16(reply, 1 + 2 * i) for i in range(sum(shape))]
        self._values = {}
        for handle in handles:
            self._values[handle] = [bytearray(_DEFAULT_ATTR_LEN), 0, False]
        result = []
        at = 0
        for count in shape:
            result.append(tuple(handles[at : at + count]))
            at += count
        return tuple(result)

    def _entry(self, handle):
        self._need_active()
        entry = self._values.get(handle)
        if entry is None:
            raise OSError(errno.EINVAL)
        return entry

    def gatts_read(self, value_handle):
        entry = self._entry(value_handle)
        value = bytes(entry[0][: entry[1]])
        if entry[2]:
            entry[1] = 0
        return value

    def gatts_write(self, value_handle, data, send_update=False):
        entry = self._entry(value_handle)
        n = len(data)
        # "any local write will increase the maximum size" (bluetooth.rst).
        if n > len(entry[0]):
            entry[0] = bytearray(n)
        entry[0][:n] = data
        entry[1] = n
        head = self._frame(_K_VALUE, 3 + n)
        _put16(head, 3, value_handle)
        head[5] = 1 if send_update else 0
        self._send(memoryview(head)[:6], data)

    def gatts_set_buffer(self, value_handle, len, append=False):
        entry = self._entry(value_handle)
        entry[0] = bytearray(len)
        entry[1] = 0
        entry[2] = bool(append)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        entry = self._entry(value_handle)
        if conn_handle != self._conn:
            raise OSError(errno.ENOTCONN)
        if data is None:
            data = memoryview(entry[0])[: entry[1]]
        if not self._free:
            raise OSError(errno.ENOMEM)
        self._free -= 1
        # "Truncate at the MTU-3 (to match NimBLE)" (modbluetooth_btstack.c).
        n = min(len(data), self._mtu - 3)
        head = self._frame(_K_NOTIFY, 4 + n)
        _put16(head, 3, conn_handle)
        _put16(head, 5, value_handle)
        self._send(memoryview(head)[:7], memoryview(data)[:n])


_ble = None


def _pump(_):
    _ble._pump()


def BLE():
    global _ble
    if _ble is None:
        fd = os.getenv(_ENV_BLE_FD)
        _ble = _BLE(int(fd) if fd else None)
        if _ble._sock is not None:
            # Runs once the firmware's event loop starts: IRQs arrive between its tasks, as
            # the port's scheduler delivers them.
            asyncio.create_task(_ble._events())
    return _ble
