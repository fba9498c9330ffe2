"""The emulated board's `bluetooth` stand-in (boards/emulated/bluetooth.py) checked against
MicroPython's documentation (docs/library/bluetooth.rst), under the real micropython, bridged by
sealink_sim.air to a bumble peripheral, with the gateway's own central (bleak + bumble over the
Air's TCP HCI port) on the other side: real HCI, L2CAP, ATT and GATT between them.

The board runs firmware/tests/mpy/air_board.py, which calls one documented method per command
line and prints every IRQ; nothing here is mocked but the radio waves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bumble.device import Advertisement
from bumble.transport import open_transport
from sealink.errors import TransportError
from sealink.transport.ble import BleTransport
from sealink.transport.blebumble import BumbleScanner, close_hosts
from sealink_sim.air import DEVICE_TO_HOST, HOST_TO_DEVICE, Air, Radio
from sealink_sim.bleseal import advertising_data
from sealink_sim.emulator import ROMFS_IMAGE, EmulatedBoard, FirmwareSource, rom_command
from sealproto.gatt import SERVICE_UUID

DEVICE = "seal-air-1"
ROOT = FirmwareSource.find().root
MPY_TESTS = ROOT / "firmware" / "tests" / "mpy"
MICROPYTHON = Path(sys.executable).parent / "micropython"
# What boards/emulated/main.py does first: mount the ROMFS image the launcher mapped.
_MOUNT_ROM = """
import os, sys, uctypes, vfs
_a, _n = os.getenv("SEAL_ROM").split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_a), int(_n))), "/rom")
sys.path.insert(0, "/rom")
import air_board
"""
_WAIT_S = 20.0
_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_MTU_EXCHANGED = 21
_ENOMEM = 12
_ENOTCONN = 107
_EINVAL = 22
_ENODEV = 19
_POOL = 12  # bluetooth.py's _NOTIFY_POOL: ESP-IDF's CONFIG_BT_NIMBLE_MSYS_1_BLOCK_COUNT
_INTERVAL_US = 100_000

pytestmark = pytest.mark.skipif(
    not MICROPYTHON.exists(), reason="micropython not installed: pip install -e '.[emulator]'"
)


@pytest.fixture(scope="module")
def romfs() -> Iterator[Path]:
    """The emulated board's build (bluetooth.py included) as the ROMFS image it runs from."""
    with tempfile.TemporaryDirectory(prefix="sealink-air-") as out:
        subprocess.run(
            [sys.executable, "-m", "tools.build", "emulated", "--romfs", "--out", out],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        yield Path(out) / ROMFS_IMAGE


@pytest.fixture
def air() -> Iterator[Air]:
    with Air() as medium:
        yield medium


class Board:
    """air_board.py under micropython (96 KB heap, the firmware's), its stand-in bridged by
    `radio`. `cmd()` runs one command and returns its outcome line; `irqs` holds every IRQ."""

    def __init__(self, air: Air | None, romfs: Path, tmp: Path) -> None:
        env = dict(os.environ, MICROPYPATH=f".frozen:{MPY_TESTS}")
        fds: tuple[int, ...] = ()
        self.radio: Radio | None = None
        board_end = None
        if air is not None:
            host_end, board_end = socket.socketpair()
            board_end.setblocking(False)
            env["SEAL_BLE_FD"] = str(board_end.fileno())
            fds = (board_end.fileno(),)
            self.radio = air.peripheral(DEVICE, host_end)
        self.log = tmp / "board.log"
        cmd = rom_command(romfs, "-X", "heapsize=96k", "-c", _MOUNT_ROM)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
            pass_fds=fds,
            text=True,
        )
        if board_end is not None:
            board_end.close()
        self.irqs: list[tuple[int, ...]] = []
        self._replies: list[str] = []
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True, name="air-board")
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        with self.log.open("w") as log:
            for line in self._proc.stdout:
                log.write(line)
                log.flush()
                words = line.split()
                with self._cond:
                    self._lines.append(line.rstrip())
                    if words and words[0] == "@irq":
                        # An address is 12 hex digits; every other item is a number.
                        items = (int(w, 16) if len(w) == 12 else int(w) for w in words[1:])
                        self.irqs.append(tuple(items))
                    elif words and words[0].startswith("@"):
                        self._replies.append(line.strip())
                    self._cond.notify_all()
        with self._cond:
            self._replies.append("@exited")
            self._cond.notify_all()

    def cmd(self, line: str) -> str:
        assert self._proc.stdin is not None
        with self._cond:
            seen = len(self._replies)
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        self.wait(lambda: len(self._replies) > seen, f"a reply to {line!r}")
        reply = self._replies[seen]
        if reply.startswith("@error") or reply == "@exited":
            raise AssertionError(f"{line!r}: {reply}\n" + "\n".join(self._lines))
        return reply

    def ok(self, line: str) -> str:
        reply = self.cmd(line)
        assert reply.split(" ", 1)[0] == "@ok", f"{line!r}: {reply}"
        return reply[4:]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = _WAIT_S) -> None:
        with self._cond:
            if not self._cond.wait_for(condition, timeout):
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}; board log:\n"
                    + "\n".join(self._lines)
                )

    def wait_irq(self, event: int, count: int = 1) -> tuple[int, ...]:
        def have() -> bool:
            return sum(1 for irq in self.irqs if irq[0] == event) >= count

        self.wait(have, f"IRQ {event} x{count}")
        return [irq for irq in self.irqs if irq[0] == event][count - 1]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._reader.join(timeout=10)
        if self.radio is not None:
            self.radio.close()


@pytest.fixture
def board(air: Air, romfs: Path, tmp_path: Path) -> Iterator[Board]:
    b = Board(air, romfs, tmp_path)
    try:
        yield b
    finally:
        b.close()


def _adv(device_id: str = DEVICE) -> tuple[str, str]:
    adv, resp = advertising_data(device_id)
    return adv.hex(), resp.hex()


def _peripheral_up(board: Board, *extra: str) -> tuple[int, ...]:
    assert board.ok("active 1") == "True"
    board.ok("irq")
    handles = eval(board.ok("register " + " ".join(extra)))
    adv, resp = _adv()
    board.ok(f"advertise {_INTERVAL_US} {adv} {resp}")
    # The bridge takes the frame on its own thread: advertising is on once it says so.
    assert board.radio is not None
    board.radio.wait_until(lambda radio: radio.advertising)
    return handles


def _central(hci: str, **options: object) -> BleTransport:
    query = "".join(f"&{k}={v}" for k, v in {"scan_s": 10, **options}.items())
    return BleTransport(f"ble://{DEVICE}?backend=bumble&hci={hci}{query}")


async def _connected(hci: str, **options: object) -> BleTransport:
    transport = _central(hci, **options)
    await transport.connect()
    return transport


# --- registration and the local value store (no central needed) --------------------------


def test_without_a_radio_active_raises_oserror(romfs: Path, tmp_path: Path) -> None:
    b = Board(None, romfs, tmp_path)
    try:
        assert b.cmd("active 1") == f"@oserror {_ENODEV}"
        assert b.ok("active") == "False"
    finally:
        b.close()


def test_registration_returns_value_handles_per_service_flattened(board: Board) -> None:
    assert board.ok("active 1") == "True"
    addr_type, _, mac = board.ok("config mac").partition(":")
    assert addr_type == "1" and len(bytes.fromhex(mac)) == 6  # a static random address
    assert board.radio is not None
    assert bytes.fromhex(mac) == bytes(reversed(bytes(board.radio.address)))
    handles = eval(board.ok("register aux"))
    # ((rx, tx), (battery level, its user description)): a tuple per service, characteristic
    # and descriptor handles in definition order (bluetooth.rst, gatts_register_services).
    assert [len(service) for service in handles] == [2, 2]
    flat = [h for service in handles for h in service]
    assert flat == sorted(flat) and len(set(flat)) == 4
    # The same definition again (a stack that re-registers) gets the same handles.
    assert eval(board.ok("register aux")) == handles


def test_values_truncate_at_20_bytes_and_append_buffers_clear_on_read(
    air: Air, board: Board
) -> None:
    rx, tx = _peripheral_up(board)[0]
    # A local write grows the value; a remote one is cut to the buffer (20 by default).
    board.ok(f"write {tx} {'ab' * 30}")
    assert board.ok(f"read {tx}") == "ab" * 30
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            await central.send(bytes(range(40)))  # one write at ATT MTU 247
            board.wait_irq(_IRQ_GATTS_WRITE)
            assert board.ok(f"read {rx}") == bytes(range(20)).hex()
            assert board.ok(f"read {rx}") == bytes(range(20)).hex()  # plain mode keeps it
            board.ok(f"buffer {rx} 64 1")
            await central.send(b"\x01" * 30)
            await central.send(b"\x02" * 30)
            await central.send(b"\x03" * 30)
            board.wait_irq(_IRQ_GATTS_WRITE, 4)
            # Append mode: everything up to the buffer, then cleared by the read.
            assert board.ok(f"read {rx}") == (b"\x01" * 30 + b"\x02" * 30 + b"\x03" * 4).hex()
            assert board.ok(f"read {rx}") == ""
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())
    _conn, handle = board.wait_irq(_IRQ_GATTS_WRITE)[1:]
    assert handle == rx


def test_bad_handles_and_no_connection_raise_as_the_port_does(board: Board) -> None:
    _rx, tx = _peripheral_up(board)[0]
    assert board.cmd("read 999") == f"@oserror {_EINVAL}"
    assert board.cmd(f"notify 0 {tx} 00") == f"@oserror {_ENOTCONN}"
    assert board.ok("disconnect 0") == "False"
    assert board.cmd("config mtu 22") == f"@oserror {_EINVAL}"


# --- with the gateway's central ------------------------------------------------------------


def test_connect_mtu_write_and_disconnect_irqs_carry_the_documented_tuples(
    air: Air, board: Board
) -> None:
    rx, _tx = _peripheral_up(board)[0]
    hci = air.central_hci()
    radio = board.radio
    assert radio is not None

    async def body() -> None:
        central = await _connected(hci)
        try:
            connect = board.wait_irq(_IRQ_CENTRAL_CONNECT)
            mtu = board.wait_irq(_IRQ_MTU_EXCHANGED)
            # (conn_handle, addr_type, addr) and (conn_handle, mtu).
            assert len(connect) == 4 and connect[2] in (0, 1)
            assert mtu == (_IRQ_MTU_EXCHANGED, connect[1], 247)
            assert central.mtu == 244
            # Advertising stops when the central connects.
            radio.wait_until(lambda r: not r.advertising)
            await central.send(b"hello")
            write = board.wait_irq(_IRQ_GATTS_WRITE)
            assert write == (_IRQ_GATTS_WRITE, connect[1], rx)
            assert board.ok(f"read {rx}") == b"hello".hex()
            # The CCCD write of the central's subscription raised no IRQ.
            assert [irq[0] for irq in board.irqs] == [
                _IRQ_CENTRAL_CONNECT,
                _IRQ_MTU_EXCHANGED,
                _IRQ_GATTS_WRITE,
            ]
            assert board.ok(f"disconnect {connect[1]}") == "True"
            with pytest.raises(TransportError):
                async with asyncio.timeout(_WAIT_S):
                    await central.receive()
            gone = board.wait_irq(_IRQ_CENTRAL_DISCONNECT)
            assert gone[1:] == connect[1:]
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())


def test_mtu_23_truncates_notifications_at_20_bytes(air: Air, board: Board) -> None:
    _rx, tx = _peripheral_up(board)[0]
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci, mtu=23)
        try:
            conn, mtu = board.wait_irq(_IRQ_MTU_EXCHANGED)[1:]
            assert mtu == 23 and central.mtu == 20
            board.ok(f"notify {conn} {tx} {bytes(range(50)).hex()}")
            async with asyncio.timeout(_WAIT_S):
                assert await central.receive() == bytes(range(20))
            # No data: the local value is sent (gatts_notify), cut at ATT MTU - 3 as well.
            board.ok(f"write {tx} {bytes(range(100, 130)).hex()}")
            board.ok(f"notify {conn} {tx} -")
            async with asyncio.timeout(_WAIT_S):
                assert await central.receive() == bytes(range(100, 120))
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())


def test_the_peripheral_mtu_caps_the_exchange(air: Air, board: Board) -> None:
    _rx, tx = _peripheral_up(board)[0]
    board.ok("config mtu 100")
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            conn, mtu = board.wait_irq(_IRQ_MTU_EXCHANGED)[1:]
            assert mtu == 100
            board.ok(f"notify {conn} {tx} {bytes(200).hex()}")
            async with asyncio.timeout(_WAIT_S):
                assert len(await central.receive()) == 97
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())


def test_notify_fails_with_enomem_when_the_pool_is_spent_and_recovers(
    air: Air, board: Board
) -> None:
    _rx, tx = _peripheral_up(board)[0]
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED)[1]
            # Back to back with no scheduling point: the buffers cannot come back in between.
            assert board.ok(f"flood {conn} {tx} 100") == f"{_POOL}:{_ENOMEM}"
            received = []
            async with asyncio.timeout(_WAIT_S):
                while len(received) < _POOL:
                    received.append(await central.receive())
            assert received == [bytes(100)] * _POOL
            # Sent by the controller, the buffers are free again.
            assert board.radio is not None
            board.radio.wait_until(lambda radio: radio.notifications >= _POOL)
            assert board.ok(f"flood {conn} {tx} 10") == f"{_POOL}:{_ENOMEM}"
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())


def test_the_firmware_advertises_again_after_a_disconnect(air: Air, board: Board) -> None:
    _peripheral_up(board)
    hci = air.central_hci()
    radio = board.radio
    assert radio is not None

    async def body() -> None:
        central = await _connected(hci)
        board.wait_irq(_IRQ_CENTRAL_CONNECT)
        radio.disconnect()
        board.wait_irq(_IRQ_CENTRAL_DISCONNECT)
        with pytest.raises(TransportError):
            async with asyncio.timeout(_WAIT_S):
                await central.receive()
        assert not radio.advertising
        # No data: the previous call's data is reused (bluetooth.rst, gap_advertise).
        board.ok(f"advertise {_INTERVAL_US}")
        await central.connect()
        board.wait_irq(_IRQ_CENTRAL_CONNECT, 2)
        await central.close()
        await close_hosts()

    asyncio.run(body())
    assert radio.connections == 2


def test_the_central_sees_the_advertising_bytes_the_firmware_gave(air: Air, board: Board) -> None:
    _peripheral_up(board)
    hci = air.central_hci()
    adv, resp = advertising_data(DEVICE)

    async def body() -> list[AdvertisementData]:
        seen: list[AdvertisementData] = []

        def heard(_: BLEDevice, data: AdvertisementData) -> None:
            if data.platform_data[0].is_scan_response:
                seen.append(data)

        scanner = BleakScanner(heard, backend=BumbleScanner, hci=hci)
        async with asyncio.timeout(_WAIT_S):
            await scanner.start()
            while not seen:
                await asyncio.sleep(0.05)
            await scanner.stop()
        await close_hosts()
        return seen

    data = asyncio.run(body())[0]
    report: Advertisement = data.platform_data[0]
    assert board.radio is not None and report.address == board.radio.address
    # bumble's host merges ADV_IND and its SCAN_RSP into one advertisement: both byte for byte.
    # (Its virtual controller alone would send the advertising data twice and no scan
    # response; the Air's central controller reports the advertiser's real one.)
    assert report.data_bytes == resp
    assert bytes(report.data) == adv + resp
    assert data.local_name == DEVICE
    assert data.service_uuids == [SERVICE_UUID]


def test_a_gateway_restarted_on_the_same_port_gets_a_working_host(
    air: Air, board: Board, tmp_path: Path
) -> None:
    _peripheral_up(board)
    hci = air.central_hci()
    port = int(hci.rsplit(":", 1)[1])
    # A gateway killed in the middle of an H4 packet: half an HCI Reset, then gone.
    with socket.create_connection(("127.0.0.1", port)) as dead:
        dead.sendall(b"\x01\x03")
    # A gateway killed while connected to the seal (SIGKILL: no HCI Disconnect).
    script = tmp_path / "gateway.py"
    script.write_text(
        "import asyncio, sys\n"
        "from sealink.transport.ble import BleTransport\n"
        "async def main():\n"
        "    t = BleTransport(sys.argv[1])\n"
        "    await t.connect()\n"
        "    print('connected', flush=True)\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    url = f"ble://{DEVICE}?backend=bumble&hci={hci}&scan_s=10"
    gateway = subprocess.Popen(
        [sys.executable, str(script), url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert gateway.stdout is not None
        assert gateway.stdout.readline().strip() == "connected"
        board.wait_irq(_IRQ_CENTRAL_CONNECT)
    finally:
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
    # The dead host's link ends as a supervision timeout ends it; the firmware advertises again.
    board.wait_irq(_IRQ_CENTRAL_DISCONNECT)
    board.ok(f"advertise {_INTERVAL_US}")

    async def body() -> None:
        # A raw host first: HCI Reset and the rest of bumble's power-on on a fresh controller.
        transport = await open_transport(hci)
        await transport.close()
        central = await _connected(hci)
        await central.close()
        await close_hosts()

    asyncio.run(body())
    board.wait_irq(_IRQ_CENTRAL_CONNECT, 2)


# --- faults the Radio acts out ---------------------------------------------------------------


def test_the_chunk_filter_drops_duplicates_and_delays_in_order(air: Air, board: Board) -> None:
    rx, tx = _peripheral_up(board)[0]
    radio = board.radio
    assert radio is not None
    seen: list[tuple[str, bytes]] = []

    def chunk_filter(direction: str, data: bytes) -> list[tuple[float, bytes]]:
        seen.append((direction, data))
        if data == b"drop":
            return []
        if data == b"twice":
            return [(0.0, data), (0.0, data)]
        if data == b"late":
            return [(0.3, data)]
        return [(0.0, data)]

    radio.chunk_filter = chunk_filter
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED)[1]
            board.ok(f"buffer {rx} 100 1")
            for word in (b"drop", b"twice", b"late", b"last"):
                await central.send(word)
            board.wait_irq(_IRQ_GATTS_WRITE, 4)
            # A delayed chunk holds the ones behind it: the order survives.
            assert board.ok(f"read {rx}") == b"twicetwicelatelast".hex()
            for word in (b"drop", b"twice", b"end"):
                board.ok(f"notify {conn} {tx} {word.hex()}")
            async with asyncio.timeout(_WAIT_S):
                got = [await central.receive() for _ in range(3)]
            assert got == [b"twice", b"twice", b"end"]
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())
    assert [d for d, _ in seen] == [HOST_TO_DEVICE] * 4 + [DEVICE_TO_HOST] * 3


def test_a_vanished_seal_is_silent_both_ways_until_it_reappears(air: Air, board: Board) -> None:
    _rx, tx = _peripheral_up(board)[0]
    radio = board.radio
    assert radio is not None
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED)[1]
            radio.vanish()
            await central.send(b"lost")
            radio.wait_until(lambda r: r.unheard >= 1)  # the write reached the silent radio
            board.ok(f"notify {conn} {tx} {b'unheard'.hex()}")
            radio.wait_until(lambda r: r.held == 1)
            assert [irq[0] for irq in board.irqs] == [_IRQ_CENTRAL_CONNECT, _IRQ_MTU_EXCHANGED]
            radio.reappear()
            # Both ends saw the link time out; nothing sent while silent came through.
            board.wait_irq(_IRQ_CENTRAL_DISCONNECT)
            with pytest.raises(TransportError):
                async with asyncio.timeout(_WAIT_S):
                    await central.receive()
            board.ok(f"advertise {_INTERVAL_US}")
            await central.connect()
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED, 2)[1]
            # The held buffer came back when its link ended: the whole pool is free.
            assert board.ok(f"flood {conn} {tx} 10") == f"{_POOL}:{_ENOMEM}"
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())
    assert not any(irq[0] == _IRQ_GATTS_WRITE for irq in board.irqs)


def _cut_as_connect_ind_crosses(air: Air, radio: Radio) -> None:
    """The board loses power as the central's CONNECT_IND crosses: the central counts a link,
    the board never did. Made here by having the radio forget its end of an established link
    (bumble's private state: there is no window to hit between two loop turns from outside),
    then powering it off, which tells no one of a link it does not hold."""

    async def forget() -> None:
        controller = radio._controller
        assert controller is not None
        controller.le_connections.clear()

    air.call(forget())
    radio.close()


def _after_a_cut_mid_connect(
    air: Air, board: Board, then: Callable[[BleTransport], Awaitable[None]]
) -> None:
    """Connect the gateway's central, cut the board as its CONNECT_IND crossed, run `then`."""
    _peripheral_up(board)
    radio = board.radio
    assert radio is not None
    hci = air.central_hci()

    async def body() -> None:
        central = await _connected(hci)
        try:
            _cut_as_connect_ind_crosses(air, radio)
            async with asyncio.timeout(_WAIT_S):
                await then(central)
        finally:
            await central.close()
            await close_hosts()

    asyncio.run(body())


def test_a_link_whose_peer_lost_power_mid_connect_ends_by_supervision_timeout(
    air: Air, board: Board
) -> None:
    async def link_ends(central: BleTransport) -> None:
        with pytest.raises(TransportError, match="disconnected"):
            await central.receive()

    _after_a_cut_mid_connect(air, board, link_ends)


def test_dropping_a_link_whose_peer_lost_power_completes(air: Air, board: Board) -> None:
    async def drop_at_once(central: BleTransport) -> None:
        # Before supervision ends it: the controller ends it locally.
        await central.close()

    _after_a_cut_mid_connect(air, board, drop_at_once)


def test_advertising_stopped_hides_the_seal_until_the_firmware_advertises(
    air: Air, board: Board
) -> None:
    _peripheral_up(board)
    radio = board.radio
    assert radio is not None
    radio.stop_advertising()
    assert not radio.advertising
    hci = air.central_hci()

    async def body() -> None:
        with pytest.raises(TransportError, match="not advertising"):
            await _central(hci, scan_s=1).connect()
        board.ok(f"advertise {_INTERVAL_US}")
        radio.wait_until(lambda r: r.advertising)
        central = await _connected(hci)
        await central.close()
        await close_hosts()

    asyncio.run(body())
    board.wait_irq(_IRQ_CENTRAL_CONNECT)


def test_an_emulated_board_gets_a_fresh_radio_each_boot_at_one_address(
    air: Air, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="air"):
        EmulatedBoard(tmp_path / "x", DEVICE, bytes(32), links=("uart", "ble"))
    with EmulatedBoard(
        tmp_path / "seal", DEVICE, bytes(32), air=air, links=("uart", "ble")
    ) as emulated:
        first = emulated.radio
        assert first is not None and not first.closed.is_set()
        emulated.power_cut()
        assert first.closed.is_set()
        emulated.start()
        second = emulated.radio
        assert second is not None and second is not first and not second.closed.is_set()
        assert second.address == first.address
        assert emulated.ble_url("tcp-client:127.0.0.1:9") == (
            f"ble://{DEVICE}?backend=bumble&hci=tcp-client:127.0.0.1:9"
        )
    assert second.closed.is_set()


def test_the_stand_in_fits_the_firmware_heap_and_events_allocate_nothing_kept(
    air: Air, board: Board
) -> None:
    _rx, tx = _peripheral_up(board)[0]
    cost, up = map(int, board.ok("mem").split(":"))
    hci = air.central_hci()

    async def body() -> int:
        central = await _connected(hci)
        try:
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED)[1]
            for i in range(200):
                await central.send(i.to_bytes(2, "big"))
                board.ok(f"notify {conn} {tx} 00")
                async with asyncio.timeout(_WAIT_S):
                    await central.receive()
            board.wait_irq(_IRQ_GATTS_WRITE, 200)
            return int(board.ok("mem").split(":")[1])
        finally:
            await central.close()
            await close_hosts()

    after = asyncio.run(body())
    print(
        f"stand-in: {cost} B of live heap imported and constructed; {up} B live with the "
        f"service up, {after} B after 200 writes and 200 notifications"
    )
    # The firmware's peak is ~62 KB of its 96 KB heap (SPEC §13): the stand-in keeps to a few,
    # and what each event allocates is garbage, none of it kept.
    assert cost < 8 * 1024
    assert after - up < 256


_CLOSE_SCRIPT = """
import asyncio, socket
from bumble.device import Device
from bumble.hci import Address
from bumble.transport import open_transport
from sealink_sim.air import Air

async def central(hci):
    transport = await open_transport(hci)
    device = Device.with_hci("c", Address("F0:F1:F2:F3:F4:F5"), transport.source, transport.sink)
    await device.power_on()
    await transport.close()

with Air() as air:
    host_end, board_end = socket.socketpair()
    air.peripheral("seal-close", host_end)
    asyncio.run(central(air.central_hci()))
    board_end.close()
print("closed")
"""


def test_closing_the_air_leaves_no_pending_task_behind() -> None:
    # A fresh interpreter: asyncio's "Task was destroyed but it is pending!" would show on its
    # stderr when the loop and its tasks are collected at exit.
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _CLOSE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip() == "closed", proc.stderr
    assert proc.stderr == ""


def test_the_emulated_seal_answers_the_gateway_over_the_air(air: Air, tmp_path: Path) -> None:
    # The real firmware's BLE port (firmware/seal/ble.py) on the stand-in: the seal speaks once
    # the central has written (SPEC §6), and its HELLO comes back as notifications.
    hci = air.central_hci()
    with EmulatedBoard(
        tmp_path / "seal", DEVICE, bytes(range(32)), air=air, links=("ble",)
    ) as emulated:
        assert emulated.radio is not None
        emulated.radio.wait_until(lambda radio: radio.advertising)

        async def body() -> bytes:
            central = BleTransport(emulated.ble_url(hci) + "&scan_s=10")
            await central.connect()
            try:
                await central.send(b"\x00")
                async with asyncio.timeout(_WAIT_S):
                    return await central.receive()
            finally:
                await central.close()
                await close_hosts()

        assert asyncio.run(body())
        assert emulated.radio.notifications >= 1


def test_notifications_stream_as_fast_as_the_pool_frees(air: Air, board: Board) -> None:
    _rx, tx = _peripheral_up(board)[0]
    hci = air.central_hci()
    count = 2000

    async def body() -> int:
        central = await _connected(hci)
        try:
            conn = board.wait_irq(_IRQ_MTU_EXCHANGED)[1]
            # The board's own time from the first notification to the last taken from it.
            took_ms = int(board.ok(f"stream {conn} {tx} {count} 244"))
            async with asyncio.timeout(_WAIT_S):
                for i in range(count):
                    data = await central.receive()
                    assert len(data) == 244 and data[0] == i & 0xFF
            return took_ms
        finally:
            await central.close()
            await close_hosts()

    took_ms = asyncio.run(body())
    print(
        f"{count} notifications of 244 bytes handed over in {took_ms} ms on the board: "
        f"{count * 1000 / max(took_ms, 1):.0f} per s"
    )
