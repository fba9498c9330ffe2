"""A bleak backend on bumble's own BLE host: for a gateway without BlueZ, and for tests.

Pass the classes as bleak's `backend=` with the HCI spec bleak hands through:

    BleakScanner(backend=BumbleScanner, hci="usb:0")
    BleakClient(device, backend=BumbleClient, hci="usb:0", mtu=247)

`hci` is any bumble transport (`usb:0`, `serial:/dev/ttyACM0`, `tcp-client:…`) or
`virtual:<name>`: a controller on an in-process virtual link of that name (bumble's LocalLink),
which bumble peripherals in the same process join through `virtual_link(name)`.
One bumble host per spec and event loop serves every scanner and client on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble import hci
from bumble.core import AdvertisingData, BaseBumbleError
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink

from sealink.errors import TransportUnavailableError
from sealink.transport.bumblequiet import QuietController, QuietHost

__all__ = ["BumbleClient", "BumbleScanner", "close_hosts", "virtual_link"]

_VIRTUAL = "virtual:"
# The longest a controller takes to end a link it was asked to end: the peer's acknowledgement
# or, failing that, the supervision timeout (at most 32 s, Core Vol 6 Part B §4.5.2; a gateway
# asks for far less).
_DISCONNECT_TIMEOUT_S = 10.0
_links: dict[str, LocalLink] = {}
_hosts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[_Host]]] = (
    weakref.WeakKeyDictionary()
)
_PROPERTIES = (
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
)


def virtual_link(name: str) -> LocalLink:
    """The in-process virtual link `virtual:<name>` (made on first use)."""
    return _links.setdefault(name, LocalLink())  # type: ignore[no-untyped-call]


class _Host:
    """One bumble host on one controller: scanning shared by every scanner, connections made
    one at a time (a controller makes one LE connection at a time)."""

    def __init__(self, device: Device, closer: Callable[[], Any] | None) -> None:
        self.device = device
        self._closer = closer
        self.scanners: set[BumbleScanner] = set()
        self.connecting = asyncio.Lock()
        device.on(device.EVENT_ADVERTISEMENT, self._advertisement)

    def _advertisement(self, advertisement: Advertisement) -> None:
        for scanner in list(self.scanners):
            scanner.seen(advertisement)

    async def scan(self, scanner: BumbleScanner, on: bool) -> None:
        was = bool(self.scanners)
        (self.scanners.add if on else self.scanners.discard)(scanner)
        if bool(self.scanners) != was:
            if on:
                await self.device.start_scanning(active=True, filter_duplicates=False)
            else:
                await self.device.stop_scanning()

    async def close(self) -> None:
        with contextlib.suppress(BaseBumbleError, OSError, asyncio.CancelledError):
            await self.device.power_off()
        if self._closer is not None:
            with contextlib.suppress(BaseBumbleError, OSError):
                await self._closer()


async def _host(spec: str) -> _Host:
    """This loop's host on `spec`, opened once however many ports ask at the same moment (a
    USB controller opens only once)."""
    opening = _hosts.setdefault(asyncio.get_running_loop(), {})
    task = opening.get(spec)
    if task is None:
        task = opening[spec] = asyncio.ensure_future(_open_host(spec))
    try:
        # Shielded: a port whose connect is cancelled must not cancel the others' host.
        return await asyncio.shield(task)
    except TransportUnavailableError:
        if opening.get(spec) is task:
            del opening[spec]  # the next attempt tries the controller again
        raise


async def _open_host(spec: str) -> _Host:
    address = hci.Address.generate_static_address()
    closer = None
    if spec.startswith(_VIRTUAL):
        controller = QuietController(f"sealink-{spec}", link=virtual_link(spec[len(_VIRTUAL) :]))
        device = Device(
            name="sealink", address=address, host=QuietHost(controller, AsyncPipeSink(controller))
        )
    else:
        try:
            transport = await open_transport(spec)
        except (BaseBumbleError, OSError, ValueError) as exc:
            raise TransportUnavailableError(f"no BLE controller at {spec!r}: {exc}") from None
        device = Device(
            name="sealink", address=address, host=QuietHost(transport.source, transport.sink)
        )
        closer = transport.close
    host = _Host(device, closer)
    try:
        await device.power_on()
    except (BaseBumbleError, OSError) as exc:
        await host.close()
        raise TransportUnavailableError(
            f"BLE controller at {spec!r} did not start: {exc}"
        ) from None
    return host


async def close_hosts() -> None:
    """Power off this loop's bumble hosts (a test's or a service's end)."""
    for task in _hosts.pop(asyncio.get_running_loop(), {}).values():
        if task.done() and not task.cancelled() and task.exception() is None:
            await task.result().close()
        else:
            task.cancel()


def _advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    data = advertisement.data
    name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or data.get(
        AdvertisingData.SHORTENED_LOCAL_NAME
    )
    uuids = [
        str(uuid).lower()
        for kind in (
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
            AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        )
        for uuid in data.get(kind) or ()
    ]
    return AdvertisementData(
        local_name=name if isinstance(name, str) else None,
        manufacturer_data={},
        service_data={},
        service_uuids=uuids,
        tx_power=None,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


class BumbleScanner(BaseBleakScanner):
    def __init__(
        self,
        detection_callback: Any,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        hci: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._spec = hci
        self._host: _Host | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        self._host = await _host(self._spec)
        await self._host.scan(self, True)

    async def stop(self) -> None:
        if self._host is not None:
            await self._host.scan(self, False)

    def seen(self, advertisement: Advertisement) -> None:
        adv = _advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = str(advertisement.address)
        device = self.create_or_update_device(
            address, address, adv.local_name, advertisement.address, adv
        )
        self.call_detection_callbacks(device, adv)


class BumbleClient(BaseBleakClient):
    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        hci: str,
        mtu: int = 247,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.get("disconnected_callback"),
            timeout=kwargs.get("timeout", 30.0),
        )
        self._spec = hci
        self._want_mtu = mtu
        self._target = (
            address_or_ble_device.details
            if isinstance(address_or_ble_device, BLEDevice)
            else hci_address(address_or_ble_device)
        )
        self._peer: Peer | None = None
        self._connection: Connection | None = None

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        host = await _host(self._spec)
        try:
            async with host.connecting:
                connection = await host.device.connect(self._target, timeout=self._timeout)
        except (BaseBumbleError, TimeoutError, hci.HCI_Error) as exc:
            raise BleakError(f"connect to {self.address} failed: {exc}") from None
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._disconnected)
        try:
            self._peer = peer = Peer(connection)
            with _as_bleak(f"{self.address}: setting up the link"):
                await peer.request_mtu(self._want_mtu)
                self.services = await self._discover(peer)
        except BaseException:
            await self.disconnect()
            raise

    def _disconnected(self, reason: int) -> None:
        self._connection = self._peer = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def _discover(self, peer: Peer) -> BleakGATTServiceCollection:
        services = BleakGATTServiceCollection()
        for proxy in await peer.discover_services():
            service = BleakGATTService(proxy, proxy.handle, str(proxy.uuid).lower())
            services.add_service(service)
            for char in await peer.discover_characteristics(service=proxy):
                props = [name for flag, name in _PROPERTIES if char.properties & flag]
                services.add_characteristic(
                    BleakGATTCharacteristic(
                        char,
                        char.handle,
                        str(char.uuid).lower(),
                        props,  # type: ignore[arg-type]
                        lambda: self.mtu_size - 3,
                        service,
                    )
                )
        return services

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is not None:
            # Bounded: bumble waits for the Disconnection Complete event without a timeout,
            # and a controller that never sends it (unplugged, confused) must not wedge the
            # port that is dropping its link.
            with contextlib.suppress(BaseBumbleError, hci.HCI_Error, TimeoutError):
                async with asyncio.timeout(_DISCONNECT_TIMEOUT_S):
                    await connection.disconnect()
        self._connection = self._peer = None

    def _need_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError(f"{self.address}: not connected")
        return self._peer

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("sealink's bumble backend does not pair (SPEC §6)")

    async def unpair(self) -> None:
        raise NotImplementedError("sealink's bumble backend does not pair (SPEC §6)")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        with _as_bleak(f"{self.address}: read"):
            return bytearray(await self._need_peer().read_value(characteristic.obj))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        with _as_bleak(f"{self.address}: read"):
            return bytearray(await self._need_peer().read_value(descriptor.handle))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        with _as_bleak(f"{self.address}: write"):
            await self._need_peer().write_value(characteristic.obj, bytes(data), response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        with _as_bleak(f"{self.address}: write"):
            await self._need_peer().write_value(descriptor.handle, bytes(data), True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        with _as_bleak(f"{self.address}: subscribe"):
            await self._need_peer().subscribe(
                characteristic.obj, lambda value: callback(bytearray(value))
            )

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        with _as_bleak(f"{self.address}: unsubscribe"):
            await self._need_peer().unsubscribe(characteristic.obj)


@contextlib.contextmanager
def _as_bleak(what: str) -> Iterator[None]:
    """bumble's errors as bleak's, which the transport above handles: a GATT request that
    times out (a seal that lost power mid-request) must fail the link, not the gateway. bumble
    cancels the pending request's future when the link ends under it; that CancelledError is
    the link's end, not this task's, and must not stop the port's loop."""
    try:
        yield
    except (BaseBumbleError, hci.HCI_Error) as exc:
        raise BleakError(f"{what} failed: {exc}") from None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise BleakError(f"{what} failed: the link ended") from None


def hci_address(text: str) -> hci.Address:
    try:
        return hci.Address(text)
    except (ValueError, BaseBumbleError) as exc:
        raise BleakError(f"not a Bluetooth address: {text!r} ({exc})") from None
