# heapsize: 192k  (test code: the peer host and its stored records beside the firmware; each test
# leaves a Rig and a port in a fragmented heap)
# seal.ble and seal.ports: the seal as a GATT peripheral (SPEC §6) and the choice of port.
# The unix port has no radio, so `bluetooth` here is a model of the documented bluetooth.BLE
# calls the port makes, as NimBLE (ESP32) answers them: writes appended into the RX value until
# read (gatts_set_buffer append mode), no IRQ for a CCCD write, notifications from a fixed pool
# of buffers (OSError ENOMEM when it is empty), advertising stopped by a connection. The real
# stack runs in the emulated board's tests (its bumble-backed bluetooth.py).
import asyncio
import io
import os
import random
import sys
import time

from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S, Rig
from sealproto import messages as M
from testchip import stored_proof

_SEED = 4242
_ENOMEM = 12
_POLL = 3  # MP_STREAM_POLL
_POLLIN = 1
_POLLOUT = 4


class _UUID:
    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return self.text == other.text


class _Module:
    UUID = _UUID


sys.modules["bluetooth"] = _Module()

from seal.ble import BlePort, advertising  # noqa: E402
from seal.link import HELLO_SENT, UP, Link  # noqa: E402
from seal.ports import Ports, serve  # noqa: E402
from seal.uart import StreamPort  # noqa: E402

_SERVICE = "5ea10000-5ea1-4c1d-8e5e-a15ea1000000"


class FakeBle:
    def __init__(self, rnd, pool=4):
        self._rnd = rnd
        self.calls = []
        self.handler = None
        self.advertising = None
        self.services = None
        self.values = {}
        self.buffers = {}
        self.notified = []  # (conn, handle, bytes) in order
        self.pool = pool
        self.busy = 0
        self.mtu = None
        self.conn = None

    def active(self, on=None):
        self.calls.append(("active", on))
        return True

    def config(self, **kw):
        self.mtu = kw.get("mtu", self.mtu)

    def gatts_register_services(self, services):
        self.services = services
        return ((1, 3),)  # NimBLE: value handles, the TX CCCD at 4

    def gatts_set_buffer(self, handle, n, append=False):
        self.buffers[handle] = (n, append)
        self.values[handle] = b""

    def gatts_read(self, handle):
        value = self.values[handle]
        if self.buffers[handle][1]:
            self.values[handle] = b""
        return value

    def gatts_notify(self, conn, handle, data):
        if conn is None:
            raise OSError(107)  # ENOTCONN
        if self.busy >= self.pool:
            raise OSError(_ENOMEM)
        self.busy += 1
        self.notified.append(bytes(data))

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None):
        self.advertising = (interval_us, adv_data, resp_data)

    def irq(self, handler):
        self.handler = handler

    # The central's side: each schedules the IRQ as the port's scheduler runs it.
    def connect(self, conn=0):
        self.conn = conn
        self.advertising = None
        self.handler(1, (conn, 0, b"\x00" * 6))

    def disconnect(self):
        self.handler(2, (self.conn, 0, b"\x00" * 6))

    def exchange_mtu(self, mtu):
        self.handler(21, (self.conn, mtu))

    def write(self, data):
        n, append = self.buffers[1]
        value = (self.values[1] + data) if append else data
        self.values[1] = value[:n]
        self.handler(3, (self.conn, 1))

    def sent(self):
        # The controller sent what was queued: the pool is free again.
        self.busy = 0


def _setup(name, pool=64, device="seal-ble", uart=None):
    random.seed(_SEED)
    print("seed", _SEED)
    rig = Rig(name, blocks=64)
    ble = FakeBle(random, pool)
    port = BlePort(ble, device)
    ports = Ports([port] if uart is None else [port, uart])
    link = Link(device, KEY, "fw", rig.journal, rig.guard, rig.enrolment(device), lambda: 3700,
                os.urandom, ports.send, rig.wake)
    return rig, ble, port, link, asyncio.create_task(serve(link, ports))


async def _until(condition, what, timeout_ms=5000):
    t0 = time.ticks_ms()
    while not condition():
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what}")
        await asyncio.sleep_ms(1)


async def _central(ble, peer, until, timeout_ms=20000, chunk=20):
    # The gateway on the far side: reads notifications, writes its answers in chunks.
    t0 = time.ticks_ms()
    while not until():
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            raise AssertionError(f"timed out after {timeout_ms} ms; host saw {peer.errors}")
        if ble.notified:
            data = b"".join(ble.notified)
            ble.notified = []
            ble.sent()
            answer = peer.feed(data)
            for i in range(0, len(answer), chunk):
                ble.write(answer[i:i + chunk])
        await asyncio.sleep_ms(1)


def test_the_service_and_advertising_are_spec_6s():
    ble = FakeBle(None)
    port = BlePort(ble, "seal-0042")
    ((service, chars),) = ble.services
    equal(service.text, _SERVICE)
    equal([(c[0].text, c[1]) for c in chars],
          [("5ea10001-5ea1-4c1d-8e5e-a15ea1000000", 0x0004),
           ("5ea10002-5ea1-4c1d-8e5e-a15ea1000000", 0x0010)])
    equal(ble.buffers[1], (1024, True), "RX appends what the central writes until it is read")
    equal(ble.mtu, 247)
    interval, adv, resp = ble.advertising
    equal(interval, 100000)
    equal(adv, b"\x02\x01\x06\x0a\x09seal-0042")
    equal(resp, bytes((17, 7)) + bytes(reversed(bytes.fromhex(_SERVICE.replace("-", "")))))
    equal(port.up(), False)


def test_a_long_id_is_advertised_shortened():
    device = "seal-" + "x" * 27  # 32 bytes, the most a device id has (SPEC §8)
    adv, _ = advertising(device)
    equal(adv, b"\x02\x01\x06\x1b\x08" + device.encode()[:26])
    equal(len(adv), 31, "a legacy advertisement is full at 31 bytes")


async def test_a_session_starts_at_the_centrals_first_write_and_records_flow():
    rig, ble, _, link, serving = _setup("ble-flow")
    await asyncio.sleep_ms(50)
    equal(ble.notified, [], "nobody connected: nothing is sent")
    ble.connect()
    await asyncio.sleep_ms(50)
    equal(ble.notified, [], "connected, not yet written to: the central may not hear yet")
    peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    ble.exchange_mtu(247)
    ble.write(peer.sync())
    for _ in range(30):
        await rig.guard.on_press()
    await _central(ble, peer, lambda: link.acked == 30, chunk=244)
    serving.cancel()
    equal(len(peer.hellos), 1, "one HELLO for the connection: the SYNC found it sent")
    equal(peer.counters(), list(range(1, 31)))
    equal([e for e in peer.errors if e[0] != "session"], [])


async def test_chunks_follow_the_att_mtu():
    rig, ble, _, link, serving = _setup("ble-mtu")
    ble.connect()
    peer = Peer(KEY, NOW_S * 1000)
    ble.write(peer.sync())
    await _until(lambda: ble.notified, "the HELLO")
    equal(max(len(c) for c in ble.notified), 20, "ATT MTU 23 until an exchange: 20-byte chunks")
    await _central(ble, peer, lambda: link.state == UP)
    ble.exchange_mtu(185)
    await rig.guard.on_press()
    await _until(lambda: ble.notified and len(b"".join(ble.notified)) > 182, "the record")
    serving.cancel()
    equal(max(len(c) for c in ble.notified), 182)


async def test_a_full_notification_pool_is_waited_out_in_order():
    rig, ble, _, link, serving = _setup("ble-pool", pool=2)
    ble.connect()
    peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    ble.write(peer.sync())
    for _ in range(12):
        await rig.guard.on_press()
    # The central empties the pool only now and then: the port must retry, never skip.
    t0 = time.ticks_ms()
    while link.acked < 12:
        if time.ticks_diff(time.ticks_ms(), t0) > 20000:
            raise AssertionError("timed out")
        await asyncio.sleep_ms(30)
        data = b"".join(ble.notified)
        ble.notified = []
        ble.sent()
        answer = peer.feed(data)
        for i in range(0, len(answer), 20):
            ble.write(answer[i:i + 20])
    serving.cancel()
    equal(peer.counters(), list(range(1, 13)))
    equal([e for e in peer.errors if e[0] not in ("session",)], [])


async def test_a_new_central_gets_a_new_session_and_the_unacked_again():
    rig, ble, _, link, serving = _setup("ble-again")
    ble.connect()
    peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    ble.write(peer.sync())
    await _central(ble, peer, lambda: link.state == UP and peer.of_type(M.STATUS))
    hellos = len(peer.hellos)
    ble.disconnect()
    await asyncio.sleep_ms(20)
    equal(ble.advertising is not None, True, "advertising again after the disconnect")
    for _ in range(3):
        await rig.guard.on_press()  # recorded while nobody listens
    await asyncio.sleep_ms(20)
    ble.notified = []
    ble.connect(conn=1)
    ble.write(peer.sync())
    await _central(ble, peer, lambda: link.acked == 3)
    serving.cancel()
    equal(len(peer.hellos), hellos + 1, "the new central's first write started a session")
    equal(peer.counters(), [1, 2, 3])


class _Pipe(io.IOBase):
    # The spare UART: keeps what it is sent, hands out what the test puts in `to_device`.
    def __init__(self):
        self.out = bytearray()
        self.to_device = b""

    def ioctl(self, req, arg):
        if req != _POLL:
            return -1
        return ((_POLLIN if self.to_device else 0) | _POLLOUT) & arg

    def write(self, data):
        self.out.extend(data)
        return len(data)

    def readinto(self, buf):
        n = min(len(buf), len(self.to_device))
        if not n:
            return None
        buf[:n] = self.to_device[:n]
        self.to_device = self.to_device[n:]
        return n


async def test_ble_takes_the_link_while_connected_else_the_uart():
    pipe = _Pipe()
    uart = StreamPort(pipe)
    _, ble, _, link, serving = _setup("ble-pref", uart=uart)
    await _until(lambda: pipe.out, "the boot's HELLO on the UART")
    equal(link.state, HELLO_SENT)
    pipe.out = bytearray()
    ble.connect()
    peer = Peer(KEY, NOW_S * 1000)
    ble.write(peer.sync())
    await _central(ble, peer, lambda: link.state == UP)
    hellos = len(peer.hellos)
    # Someone on the spare UART says SYNC: dropped unread, the BLE session stays (SPEC §6).
    pipe.to_device = Peer(KEY).sync()
    await _until(lambda: not pipe.to_device, "the UART's bytes to be read")
    await asyncio.sleep_ms(50)
    equal(link.state, UP)
    equal(len(peer.hellos), hellos, "no HELLO for a SYNC on the port not carrying the link")
    equal(len(pipe.out), 0, "nothing goes to the UART while BLE carries the link")
    ble.disconnect()
    await _until(lambda: pipe.out, "a HELLO on the UART once the central left")
    serving.cancel()
    uart_host = Peer(KEY)
    uart_host.feed(bytes(pipe.out))
    equal(len(uart_host.hellos), 1)


def test_refresh_advertises_again_only_without_a_central():
    ble = FakeBle(None)
    port = BlePort(ble, "seal-adv")
    ble.advertising = None  # the stack stopped advertising and said nothing
    port.refresh()
    equal(ble.advertising is not None, True, "advertising again")
    ble.connect()
    port.refresh()
    equal(ble.advertising, None, "a connected seal does not advertise")
