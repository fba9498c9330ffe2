"""A virtual BLE radio medium: bumble controllers on one LocalLink, for emulated seals and the
gateway's central, running its own asyncio loop in a background thread.

    with Air() as air:
        hci = air.central_hci()                       # "tcp-client:127.0.0.1:<port>"
        radio = air.peripheral("seal-1", host_end)    # the bridge for one emulated board
        # gateway: ble://seal-1?backend=bumble&hci=<hci>

The gateway (another process) drives a bumble Controller through bumble's H4-over-TCP HCI
transport; each emulated board's `bluetooth` module (boards/emulated/bluetooth.py) drives a
bumble Device through a Radio over an AF_UNIX socketpair. Real HCI, L2CAP, ATT and GATT run
between the two. Every TCP client of a central port gets a fresh controller and H4 parser
(what a controller does at power on), so a gateway killed mid-packet and restarted gets a
working host; the dead client's links end as a supervision timeout ends them. A central's
controller also hears scan responses, which bumble's virtual link does not carry (see
_CentralController).

Framing between the board and its Radio, both ways: `[length u16 LE][kind u8][payload]`,
length = 1 + len(payload); integers little-endian, addresses as MicroPython gives them (most
significant byte first).

    board -> air                                        air -> board
    A [on u8]                  active(bool)       ->    a [addr_type u8][addr 6]
    R [services]               register           ->    r [errno u8][handle u16 ...]
    V [interval_us u32][connectable u8][n u8][adv n][m u8][resp m]   (interval 0 = stop)
    D [conn u16]               gap_disconnect
    T [conn u16][handle u16][data]   gatts_notify (one pool buffer until `f` frees it)
    W [handle u16][send_update u8][data]   gatts_write (the value a central reads)
    M [mtu u16]                config(mtu=)
                            a central connected ->  C [conn u16][addr_type u8][addr 6]
                            it disconnected     ->  X [conn u16][addr_type u8][addr 6]
                            it wrote a value    ->  w [conn u16][handle u16][data]
                            ATT MTU exchanged   ->  m [conn u16][mtu u16]
                            notifications sent  ->  f [count u8]  (their buffers are free)

`[services]` = [count u8] then per service [uuid_len u8][uuid LE][chars u8], per
characteristic [uuid_len u8][uuid LE][flags u16][descriptors u8], per descriptor
[uuid_len u8][uuid LE][flags u16]. The `r` handles are the value handles in definition order,
characteristics and descriptors flattened (gatts_register_services' shape).

Faults (the caller decides, seeded; the Radio only acts): `disconnect()`, `vanish()` /
`reappear()`, `stop_advertising()` and `chunk_filter(direction, data) -> [(delay_s, bytes)]`,
applied to every RX write (HOST_TO_DEVICE) and TX notification (DEVICE_TO_HOST).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from bumble import hci, ll
from bumble.controller import Connection as ControllerConnection
from bumble.controller import Controller
from bumble.core import UUID, BaseBumbleError
from bumble.device import AdvertisingType, Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Descriptor, Service
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink, PacketParser
from sealink.transport.bumblequiet import QuietController, QuietHost

__all__ = ["DEVICE_TO_HOST", "HOST_TO_DEVICE", "Air", "ChunkFilter", "Radio", "static_address"]

# The directions of sealink_hil.linkfaults, so its engine's verdicts map straight onto these.
DEVICE_TO_HOST = "D>H"
HOST_TO_DEVICE = "H>D"
ChunkFilter = Callable[[str, bytes], list[tuple[float, bytes]]]

_T = TypeVar("_T")
_Written = Callable[[int, Connection, bytes], None]
_log = logging.getLogger(__name__)
_POWER_OFF_S = 2.0
_CALL_TIMEOUT_S = 20.0
_HEAD = struct.Struct("<HB")
_ADDR_RANDOM = 1
_EINVAL = 22
# What a central and a peripheral report when the other end went silent (Core Vol 1 Part F).
_SUPERVISION_TIMEOUT = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR
# connSupervisionTimeout may be 100 ms to 32 s (Core Vol 6 Part B §4.5.2); a link with no peer
# ends one to two of these after the peer left.
_SUPERVISION_S = 1.0
# bluetooth.rst: "This interval will be rounded down to the nearest 625us."
_ADV_UNIT_US = 625
_FLAG_BITS = 0x7F  # MicroPython's FLAG_* low bits are the GATT characteristic properties
_FLAG_READ = 0x0002
_FLAG_WRITES = 0x000C  # FLAG_WRITE_NO_RESPONSE | FLAG_WRITE


class Air:
    """One virtual radio medium; see the module docstring. Close it (or use `with`)."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._servers: list[asyncio.Server] = []
        self._ports: set[_HciPort] = set()
        self._radios: set[Radio] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="air", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = _CALL_TIMEOUT_S) -> _T:
        """Run `coro` on the air's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def central_hci(self, name: str = "gateway") -> str:
        """A controller for a central, its HCI served on a free 127.0.0.1 TCP port; returns
        the bumble transport spec a gateway opens (`tcp-client:127.0.0.1:<port>`)."""
        return self.call(self._serve(name))

    async def _serve(self, name: str) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = await self._loop.create_server(lambda: _HciPort(self, name), sock=sock)
        self._servers.append(server)
        return f"tcp-client:127.0.0.1:{sock.getsockname()[1]}"

    def peripheral(self, device_id: str, sock: socket.socket, *, max_mtu: int = 247) -> Radio:
        """The radio of one emulated board: a bumble Device on the link, driven over `sock`
        (the host end of the board's SEAL_BLE_FD socketpair), at a static random address
        derived from `device_id` (every boot of one seal has the same)."""
        radio = Radio(self, device_id, max_mtu)
        self.call(radio._open(sock))
        self._radios.add(radio)
        return radio

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        for radio in list(self._radios):
            await radio._close()
        for port in list(self._ports):
            port.close()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _AirController(QuietController):
    """A controller on the air, whose links end by supervision timeout when the peer leaves
    the air without a word (a board powered off, a gateway killed, either of them
    mid-connection): bumble's virtual link keeps no supervision timer, so a link whose
    CONNECT_IND crossed its peer's power cut stayed up for good on one side, and disconnecting
    it never completed (its LL_TERMINATE_IND had nobody to reach)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peerless: set[hci.Address] = set()
        asyncio.get_running_loop().call_later(_SUPERVISION_S, self._supervise)

    def _peer_holds(self, connection: ControllerConnection) -> bool:
        peer = self.link.find_le_controller(connection.peer_address)
        return (
            peer is not None and peer is not self and connection.self_address in peer.le_connections
        )

    def _supervise(self) -> None:
        if self not in self.link.controllers:
            return  # retired
        # Peerless at two sweeps running: a link being made is peerless for one loop turn.
        peerless = {
            address
            for address, connection in self.le_connections.items()
            if not self._peer_holds(connection)
        }
        for address in peerless & self._peerless:
            self.on_le_disconnected(self.le_connections[address], _SUPERVISION_TIMEOUT)
        self._peerless = peerless - self._peerless
        asyncio.get_running_loop().call_later(_SUPERVISION_S, self._supervise)

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None or self._peer_holds(connection):
            super().on_hci_disconnect_command(command)
            return
        # Nobody to hear the LL_TERMINATE_IND (bumble's link would raise): a controller ends
        # the link locally and reports it (Core Vol 4 Part E §7.1.6).
        self._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)
        self.on_le_disconnected(
            connection, hci.HCI_ErrorCode.CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR
        )


def _retire(controller: Controller) -> None:
    """Take a controller off the air as a powered-off one leaves it: each peer's link ends by
    supervision timeout (at once here: the virtual link keeps no supervision timer)."""
    for connection in list(controller.le_connections.values()):
        with contextlib.suppress(BaseBumbleError):
            connection.send_ll_control_pdu(ll.TerminateInd(_SUPERVISION_TIMEOUT))
    controller.le_connections.clear()
    controller.le_legacy_advertiser.stop()
    for advertising_set in controller.advertising_sets.values():
        advertising_set.stop()
    controller.pending_le_connection = None
    controller.set_packet_sink(None)
    with contextlib.suppress(KeyError):
        controller.link.remove_controller(controller)


_REPORTS = (hci.HCI_LE_Advertising_Report_Event, hci.HCI_LE_Extended_Advertising_Report_Event)
_EXT = hci.HCI_LE_Extended_Advertising_Report_Event.EventType
_LEGACY = hci.HCI_LE_Advertising_Report_Event.EventType
_PROP_CONNECTABLE, _PROP_SCANNABLE, _PROP_LEGACY = 0x01, 0x02, 0x10


def _legacy_advertiser(link: LocalLink, address: hci.Address) -> tuple[bool, bool, bytes] | None:
    """(connectable, scannable, scan response data) of the legacy-PDU advertiser at `address`
    on `link`; None if there is none (extended advertising keeps bumble's own reports)."""
    for controller in link.controllers:
        legacy = controller.le_legacy_advertiser
        if legacy.enabled and legacy.address == address:
            kind = legacy.advertising_type
            return kind == 0, kind in (0, 2), bytes(legacy.scan_response_data)
        for advertising_set in controller.advertising_sets.values():
            parameters = advertising_set.parameters
            if advertising_set.enabled and parameters and advertising_set.address == address:
                properties = int(parameters.advertising_event_properties)
                if not properties & _PROP_LEGACY:
                    return None
                return (
                    bool(properties & _PROP_CONNECTABLE),
                    bool(properties & _PROP_SCANNABLE),
                    bytes(advertising_set.scan_response_data),
                )
    return None


class _CentralController(_AirController):
    """A central's controller that hears scan responses as a radio's does.

    bumble's virtual link carries no SCAN_REQ/SCAN_RSP: its controller reports the advertising
    PDU's data a second time as the scan response, flagged as neither legacy nor scannable, so
    the host never merges a scan response (bumble 0.0.236 Controller.on_advertising_pdu). For
    a legacy-PDU advertiser this one reports what a controller scanning actively reports:
    ADV_IND, then SCAN_RSP with the advertiser's scan response data when it is scannable. It
    always scans actively (the extended scan parameters bumble keeps do not say otherwise).
    """

    _muted = False

    def send_hci_packet(self, packet: hci.HCI_Packet) -> None:
        if not (self._muted and isinstance(packet, _REPORTS)):
            super().send_hci_packet(packet)

    def on_advertising_pdu(self, pdu: ll.AdvInd | ll.AdvExtInd) -> None:
        found = _legacy_advertiser(self.link, pdu.advertiser_address)
        if found is None or not self.le_scan_enable:
            super().on_advertising_pdu(pdu)
            return
        connectable, scannable, response = found
        address = pdu.advertiser_address
        if self.le_features & hci.LeFeatureMask.LE_EXTENDED_ADVERTISING:
            kind = _EXT.LEGACY_ADVERTISING_PDU_USED
            kind |= _EXT.CONNECTABLE_ADVERTISING if connectable else 0
            kind |= _EXT.SCANNABLE_ADVERTISING if scannable else 0
            self._report_extended(address, kind, pdu.data)
            if scannable:
                self._report_extended(address, kind | _EXT.SCAN_RESPONSE, response)
        else:
            self._report_legacy(address, _LEGACY.ADV_IND, pdu.data)
            if scannable:
                self._report_legacy(address, _LEGACY.SCAN_RSP, response)
        # The rest of bumble's handling (a pending connection to this advertiser) unchanged.
        self._muted = True
        try:
            super().on_advertising_pdu(pdu)
        finally:
            self._muted = False

    def _report_extended(self, address: hci.Address, kind: int, data: bytes) -> None:
        report = hci.HCI_LE_Extended_Advertising_Report_Event.Report(
            event_type=kind,
            address_type=address.address_type,
            address=address,
            primary_phy=hci.Phy.LE_1M,
            secondary_phy=0,  # legacy PDUs use no secondary channel
            advertising_sid=0,
            tx_power=0,
            rssi=-50,
            periodic_advertising_interval=0,
            direct_address_type=0,
            direct_address=hci.Address.ANY,
            data=data,
        )
        self.send_hci_packet(hci.HCI_LE_Extended_Advertising_Report_Event([report]))

    def _report_legacy(self, address: hci.Address, kind: int, data: bytes) -> None:
        report = hci.HCI_LE_Advertising_Report_Event.Report(
            event_type=kind,
            address_type=address.address_type,
            address=address,
            data=data,
            rssi=-50,
        )
        self.send_hci_packet(hci.HCI_LE_Advertising_Report_Event([report]))


class _HciPort(asyncio.Protocol):
    """One TCP client of a central port: a fresh controller and H4 parser for it alone."""

    def __init__(self, air: Air, name: str) -> None:
        self._air = air
        self._name = name
        self._transport: asyncio.Transport | None = None
        self._controller: Controller | None = None
        self._parser: PacketParser | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # HCI packets are small and each waits for the other's answer: no Nagle delay.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._controller = _CentralController(self._name, host_sink=self, link=self._air.link)
        self._parser = PacketParser(self._controller)
        self._air._ports.add(self)

    def on_packet(self, packet: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(packet)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:
            return
        try:
            self._parser.feed_data(data)
        except (BaseBumbleError, ValueError, KeyError) as exc:
            _log.warning("%s: bad HCI from the central, closing it: %s", self._name, exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self._air._ports.discard(self)
        if self._controller is not None:
            _retire(self._controller)
            self._controller = None
        self._parser = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class _RadioController(_AirController):
    """A peripheral's controller that can go silent: nothing in or out while `silent`."""

    silent = False
    unheard = 0  # ACL packets that reached it while silent
    on_unheard: Callable[[], None] | None = None

    def on_link_acl_data(self, *args: Any) -> None:
        if self.silent:
            self.unheard += 1
            if self.on_unheard is not None:
                self.on_unheard()
        else:
            super().on_link_acl_data(*args)

    def on_ll_control_pdu(self, *args: Any) -> None:
        if not self.silent:
            super().on_ll_control_pdu(*args)

    def on_ll_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if not self.silent:
            super().on_ll_advertising_pdu(packet)

    def send_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if not self.silent:
            super().send_advertising_pdu(packet)


def static_address(device_id: str) -> hci.Address:
    """The static random address of a seal's emulated radio (Core Vol 6 Part B §1.3.2.1: the
    two most significant bits set)."""
    raw = bytearray(hashlib.sha256(device_id.encode()).digest()[:6])
    raw[0] |= 0xC0
    return hci.Address(":".join(f"{b:02X}" for b in raw), hci.Address.RANDOM_DEVICE_ADDRESS)


def _addr(address: hci.Address) -> bytes:
    kind = 0 if address.address_type == hci.Address.PUBLIC_DEVICE_ADDRESS else _ADDR_RANDOM
    return bytes([kind]) + bytes(reversed(bytes(address)))


class Radio:
    """The bridge between one emulated board's `bluetooth` module and its bumble Device.

    Thread-safe controls: `disconnect()`, `vanish()`, `reappear()`, `stop_advertising()`,
    `close()`; `chunk_filter` is called on the air's thread. Counters for tests: `writes`
    (RX writes delivered to the board), `notifications` (handed to the controller),
    `connections`, `unheard`, `held`; `connected`, `advertising`, `mtu` read the current
    state; `wait_until(condition)` waits for any of them.
    """

    def __init__(self, air: Air, device_id: str, max_mtu: int) -> None:
        self.air = air
        self.device_id = device_id
        self.max_mtu = max_mtu
        self.address = static_address(device_id)
        self.chunk_filter: ChunkFilter | None = None
        self.writes = 0
        self.notifications = 0
        self.connections = 0
        self.closed = threading.Event()
        self._changed = threading.Condition()
        self._device: Device | None = None
        self._controller: _RadioController | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Future[None] | None = None
        self._rx: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._tx: asyncio.Queue[tuple[float, Connection, int, bytes | None]] = asyncio.Queue()
        self._registered: bytes | None = None
        self._handles: bytes = b""
        self._held = 0  # notifications taken while vanished: freed when the link ends
        self._advertise: dict[str, Any] | None = None

    # --- state -------------------------------------------------------------------------

    @property
    def connection(self) -> Connection | None:
        device = self._device
        if device is None:
            return None
        return next(iter(device.connections.values()), None)

    @property
    def connected(self) -> bool:
        return self.connection is not None

    @property
    def advertising(self) -> bool:
        return self._device is not None and bool(self._device.is_advertising)

    @property
    def unheard(self) -> int:
        """ACL packets from a central that reached this radio while it had vanished."""
        return self._controller.unheard if self._controller is not None else 0

    @property
    def held(self) -> int:
        """Notifications the board queued while vanished (their buffers stay taken)."""
        return self._held

    @property
    def mtu(self) -> int | None:
        connection = self.connection
        return connection.att_mtu if connection is not None else None

    def wait_until(self, condition: Callable[[Radio], bool], timeout: float = 10.0) -> None:
        """Wait until `condition(radio)` holds (re-checked at every change of the radio)."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self), timeout):
                raise TimeoutError(f"{self.device_id}: radio condition not met in {timeout:g} s")

    def _notify_change(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # --- controls (any thread) ---------------------------------------------------------

    def disconnect(self) -> None:
        """The seal drops the link (walked out of range, reset its stack)."""
        self.air.call(self._disconnect())

    def vanish(self) -> None:
        """The seal goes silent: no packet either way, advertising unheard, until reappear()."""
        self.air.call(self._vanish())

    def reappear(self) -> None:
        """The seal is heard again; a link that was up when it vanished has ended by
        supervision timeout on both sides (the board gets _IRQ_CENTRAL_DISCONNECT)."""
        self.air.call(self._reappear())

    def stop_advertising(self) -> None:
        """Advertising stops until the firmware asks again (gap_advertise) or reappear()."""
        self.air.call(self._stop_advertising())

    def close(self) -> None:
        """The board is off: the Device leaves the air (its links end by supervision timeout)."""
        with contextlib.suppress(RuntimeError):
            self.air.call(self._close())

    # --- on the air's loop -------------------------------------------------------------

    async def _open(self, sock: socket.socket) -> None:
        self._controller = controller = _RadioController(
            f"seal-{self.device_id}", link=self.air.link
        )
        controller.on_unheard = self._notify_change
        device = Device(
            name=self.device_id,
            address=self.address,
            host=QuietHost(controller, AsyncPipeSink(controller)),
        )
        device.gatt_server.max_mtu = self.max_mtu
        device.on(device.EVENT_CONNECTION, self._connected)
        self._device = device
        await device.power_on()
        reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        for name, job in (
            ("board", self._read(reader)),
            ("rx", self._deliver_rx()),
            ("tx", self._deliver_tx()),
        ):
            self._tasks.append(asyncio.create_task(job, name=f"radio-{self.device_id}-{name}"))

    async def _close(self) -> None:
        await asyncio.shield(self._begin_close())

    def _begin_close(self) -> asyncio.Future[None]:
        # Once, whoever asks first (the board's end of the socket closing, close(), the Air).
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._power_off())
        return self._closing

    async def _power_off(self) -> None:
        self.closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._controller is not None:
            _retire(self._controller)
        if self._device is not None:
            # Its controller is off the air already, so a command the host sends while
            # powering off may get no answer (seen as a 20 s hang in test_air teardown, about
            # one run in four): the host is let go after a bounded wait.
            with contextlib.suppress(BaseBumbleError, hci.HCI_Error, OSError, TimeoutError):
                await asyncio.wait_for(self._device.power_off(), _POWER_OFF_S)
        if self._writer is not None:
            self._writer.close()
        self.air._radios.discard(self)
        self._notify_change()

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(_HEAD.pack(1 + len(payload), kind[0]) + payload)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size, kind = _HEAD.unpack(await reader.readexactly(_HEAD.size))
                payload = await reader.readexactly(size - 1)
                await self._on_frame(kind, payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the board lost power
        # Not awaited: the power-off waits for this task to end (about one teardown in ten
        # hung for 20 s when this task waited on it in turn, and missed its cancellation).
        self._begin_close()

    async def _on_frame(self, kind: int, payload: bytes) -> None:
        device = self._device
        assert device is not None
        match chr(kind):
            case "A":
                if payload[0]:
                    self._send(b"a", _addr(self.address))
                else:
                    await self._stop_advertising()
                    await self._disconnect()
            case "R":
                self._send(b"r", self._register(payload))
            case "V":
                await self._advertise_as(payload)
            case "D":
                await self._disconnect(struct.unpack_from("<H", payload)[0])
            case "T":
                conn, handle = struct.unpack_from("<HH", payload)
                self._notify(conn, handle, payload[4:])
            case "W":
                handle, update = struct.unpack_from("<HB", payload)
                attribute = device.gatt_server.get_attribute(handle)
                if attribute is not None and isinstance(attribute.value, _Value):
                    attribute.value.local = payload[3:]
                    if update:
                        await device.notify_subscribers(attribute, payload[3:])
            case "M":
                device.gatt_server.max_mtu = min(self.max_mtu, struct.unpack("<H", payload)[0])
            case other:
                _log.warning("%s: unknown frame %r from the board", self.device_id, other)

    def _register(self, payload: bytes) -> bytes:
        device = self._device
        assert device is not None
        if self._registered is not None:
            # bumble adds services, it does not replace them: the same definition again (a
            # rebooted stack) gets its handles; another one is refused.
            return (b"\x00" + self._handles) if payload == self._registered else bytes([_EINVAL])
        try:
            services, values = _parse_services(payload, self._written)
        except (ValueError, BaseBumbleError) as exc:
            _log.warning("%s: services the board gave do not parse: %s", self.device_id, exc)
            return bytes([_EINVAL])
        for service in services:
            device.add_service(service)
        self._registered = payload
        self._handles = b"".join(struct.pack("<H", value.handle) for value in values)
        return b"\x00" + self._handles

    async def _advertise_as(self, payload: bytes) -> None:
        device = self._device
        assert device is not None
        interval_us, connectable, n = struct.unpack_from("<IBB", payload)
        adv = payload[6 : 6 + n]
        resp = payload[7 + n : 7 + n + payload[6 + n]]
        if interval_us == 0:
            self._advertise = None
            await self._stop_advertising()
            return
        interval_ms = interval_us // _ADV_UNIT_US * _ADV_UNIT_US / 1000
        if connectable:
            kind = AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
        elif resp:
            kind = AdvertisingType.UNDIRECTED_SCANNABLE
        else:
            kind = AdvertisingType.UNDIRECTED
        self._advertise = {
            "advertising_type": kind,
            "advertising_data": adv,
            "scan_response_data": resp,
            "advertising_interval_min": interval_ms,
            "advertising_interval_max": interval_ms,
        }
        with contextlib.suppress(BaseBumbleError, hci.HCI_Error):
            await device.start_advertising(**self._advertise)
        self._notify_change()

    def _connected(self, connection: Connection) -> None:
        self.connections += 1
        handle = connection.handle
        peer = _addr(connection.peer_address)
        self._send(b"C", struct.pack("<H", handle) + peer)

        def exchanged() -> None:
            self._send(b"m", struct.pack("<HH", handle, connection.att_mtu))
            self._notify_change()

        def gone(_reason: int) -> None:
            self._send(b"X", struct.pack("<H", handle) + peer)
            self._notify_change()

        connection.on(connection.EVENT_CONNECTION_ATT_MTU_UPDATE, exchanged)
        connection.on(connection.EVENT_DISCONNECTION, gone)
        self._notify_change()

    def _deliveries(self, direction: str, data: bytes) -> list[tuple[float, bytes]]:
        chunk_filter = self.chunk_filter
        if chunk_filter is None:
            return [(0.0, data)]
        return chunk_filter(direction, data)

    def _written(self, handle: int, connection: Connection, value: bytes) -> None:
        now = asyncio.get_running_loop().time()
        frame = struct.pack("<HH", connection.handle, handle) + bytes(value)
        for delay, data in self._deliveries(HOST_TO_DEVICE, frame[4:]):
            self._rx.put_nowait((now + delay, frame[:4] + data))

    async def _deliver_rx(self) -> None:
        # In order: a delayed chunk holds every chunk behind it, as a link layer's does.
        loop = asyncio.get_running_loop()
        while True:
            release_at, frame = await self._rx.get()
            await _until(loop, release_at)
            self.writes += 1
            self._send(b"w", frame)
            self._notify_change()

    def _notify(self, conn: int, handle: int, data: bytes) -> None:
        device = self._device
        assert device is not None and self._controller is not None
        connection = device.lookup_connection(conn)
        if connection is None or device.gatt_server.get_attribute(handle) is None:
            self._send(b"f", b"\x01")  # the stack drops it and frees the buffer
            return
        if self._controller.silent:
            self._held += 1  # queued for a link nobody hears: freed when it ends
            self._notify_change()
            return
        now = asyncio.get_running_loop().time()
        for delay, chunk in self._deliveries(DEVICE_TO_HOST, data):
            self._tx.put_nowait((now + delay, connection, handle, chunk))
        self._tx.put_nowait((now, connection, handle, None))

    async def _deliver_tx(self) -> None:
        loop = asyncio.get_running_loop()
        device = self._device
        assert device is not None
        while True:
            release_at, connection, handle, chunk = await self._tx.get()
            if chunk is None:
                self._send(b"f", b"\x01")
                continue
            await _until(loop, release_at)
            attribute = device.gatt_server.get_attribute(handle)
            if attribute is None or connection.handle not in device.connections:
                continue
            with contextlib.suppress(BaseBumbleError, hci.HCI_Error):
                await device.notify_subscriber(connection, attribute, chunk, force=True)
                self.notifications += 1
                self._notify_change()

    async def _disconnect(self, conn: int | None = None) -> None:
        device = self._device
        if device is None:
            return
        for connection in list(device.connections.values()):
            if conn is None or connection.handle == conn:
                with contextlib.suppress(BaseBumbleError, hci.HCI_Error, TimeoutError):
                    await connection.disconnect()

    async def _vanish(self) -> None:
        controller = self._controller
        assert controller is not None
        controller.silent = True
        for connection in controller.le_connections.values():
            connection.link = None  # type: ignore[assignment]

    async def _reappear(self) -> None:
        controller = self._controller
        assert controller is not None
        controller.silent = False
        for connection in list(controller.le_connections.values()):
            connection.link = self.air.link
            with contextlib.suppress(BaseBumbleError):
                connection.send_ll_control_pdu(ll.TerminateInd(_SUPERVISION_TIMEOUT))
            controller.on_le_disconnected(connection, _SUPERVISION_TIMEOUT)
        if self._held:
            self._send(b"f", bytes([self._held]))
            self._held = 0
        device = self._device
        if self._advertise is not None and device is not None and not device.is_advertising:
            with contextlib.suppress(BaseBumbleError, hci.HCI_Error):
                await device.start_advertising(**self._advertise)
        self._notify_change()

    async def _stop_advertising(self) -> None:
        device = self._device
        if device is not None:
            with contextlib.suppress(BaseBumbleError, hci.HCI_Error):
                await device.stop_advertising()
        self._notify_change()


async def _until(loop: asyncio.AbstractEventLoop, release_at: float) -> None:
    # Only a delayed chunk waits: a sleep(0) for each of the others was a loop turn more a
    # chunk (the air thread's CPU a record of bench_ble's emulated drain at MTU 23, read from
    # /proc: 0.98 -> 0.84 ms).
    delay = release_at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class _Value(CharacteristicValue[bytes]):
    """An attribute's value as a central sees it: reads give the board's last gatts_write,
    writes go to the board, which keeps the value store (buffer sizes, append mode)."""

    def __init__(self, written: _Written, flags: int) -> None:
        self.local = b""
        self.attribute: Characteristic[bytes] | Descriptor | None = None
        self._written = written
        super().__init__(
            read=self._local if flags & _FLAG_READ else None,
            write=self._to_board if flags & _FLAG_WRITES else None,
        )

    def _local(self, connection: Connection) -> bytes:
        return self.local

    def _to_board(self, connection: Connection, value: bytes) -> None:
        if self.attribute is not None:
            self._written(self.attribute.handle, connection, value)


def _parse_services(
    payload: bytes, written: _Written
) -> tuple[list[Service], list[Characteristic[bytes] | Descriptor]]:
    """bumble services for a `[services]` payload, and the value attributes in the order
    gatts_register_services returns their handles."""
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        at += n
        if at > len(payload):
            raise ValueError("services payload cut short")
        return payload[at - n : at]

    def uuid() -> UUID:
        return UUID.from_bytes(take(take(1)[0]))

    services: list[Service] = []
    values: list[Characteristic[bytes] | Descriptor] = []
    for _ in range(take(1)[0]):
        service_uuid = uuid()
        characteristics: list[Characteristic[bytes]] = []
        for _ in range(take(1)[0]):
            char_uuid = uuid()
            flags = struct.unpack("<H", take(2))[0]
            descriptors: list[Descriptor] = []
            for _ in range(take(1)[0]):
                desc_uuid = uuid()
                desc_flags = struct.unpack("<H", take(2))[0]
                desc_value = _Value(written, desc_flags)
                desc_value.attribute = Descriptor(desc_uuid, _permissions(desc_flags), desc_value)
                descriptors.append(desc_value.attribute)
            value = _Value(written, flags)
            characteristic: Characteristic[bytes] = Characteristic(
                char_uuid,
                Characteristic.Properties(flags & _FLAG_BITS),
                _permissions(flags),
                value,
                descriptors,
            )
            value.attribute = characteristic
            characteristics.append(characteristic)
            values += [characteristic, *descriptors]
        services.append(Service(service_uuid, characteristics))
    return services, values


def _permissions(flags: int) -> Characteristic.Permissions:
    permissions = Characteristic.Permissions(0)
    if flags & _FLAG_READ:
        permissions |= Characteristic.Permissions.READABLE
    if flags & _FLAG_WRITES:
        permissions |= Characteristic.Permissions.WRITEABLE
    return permissions
