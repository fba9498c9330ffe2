"""A simulated seal as a BLE peripheral: a SimDevice behind the GATT service of SPEC §6, on a
bumble controller joined to an in-process virtual link (`virtual:<name>`).

The test double for the firmware's BLE transport until it exists: bumble runs real HCI, L2CAP,
ATT and GATT between this peripheral and the gateway's central (MTU exchange, write without
response, notifications and disconnects are real). It advertises its device id, feeds what is
written to RX into the SimDevice and notifies its output on TX in chunks of ATT MTU - 3, and
advertises again after a disconnect.

    async with BleSeal("seal-1", key, link="lab", mtu=23) as seal:
        await seal.sim.stamp(10)         # the gateway's port: ble://seal-1?backend=bumble&hci=virtual:lab
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bumble.core import UUID, AdvertisingData, BaseBumbleError
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address, HCI_Error
from bumble.transport.common import AsyncPipeSink
from sealink.errors import TransportError
from sealink.transport.blebumble import virtual_link
from sealink.transport.bumblequiet import QuietController, QuietHost
from sealproto.gatt import NAME_MAX, RX_UUID, SERVICE_UUID, TX_UUID, chunk_size

from sealink_sim.simdevice import SimChip, SimDevice

__all__ = ["BleSeal", "advertising_data"]

_LE_ONLY_GENERAL_DISCOVERABLE = 0x06
# A seal looking for its gateway advertises fast (bumble's default, 1 s, is a beacon's).
_ADVERTISING_INTERVAL_MS = 100


def advertising_data(device_id: str) -> tuple[bytes, bytes]:
    """(advertising data, scan response) of SPEC §6: the flags and the device id as the local
    name (complete when it fits, else its first NAME_MAX bytes, shortened), and the service."""
    name = device_id.encode()
    kind = AdvertisingData.COMPLETE_LOCAL_NAME
    if len(name) > NAME_MAX:
        name, kind = name[:NAME_MAX], AdvertisingData.SHORTENED_LOCAL_NAME
    adv = AdvertisingData(
        [(AdvertisingData.FLAGS, bytes([_LE_ONLY_GENERAL_DISCOVERABLE])), (kind, name)]
    )
    scan = AdvertisingData(
        [(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, bytes(UUID(SERVICE_UUID)))]
    )
    return bytes(adv), bytes(scan)


class _SealEnd:
    """The seal's side of the link as a Transport for its SimDevice."""

    def __init__(self, seal: BleSeal) -> None:
        self.name = f"ble-seal:{seal.device_id}"
        self._seal = seal
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def mtu(self) -> int:
        connection = self._seal.connection
        return chunk_size(connection.att_mtu if connection is not None else 23)

    async def connect(self) -> None:
        pass

    async def send(self, data: bytes) -> None:
        # No central: the bytes go nowhere, as a seal's radio with no peer; the link state
        # machine above sends them again in the next session.
        await self._seal.notify(data)

    async def receive(self) -> bytes:
        return await self.inbox.get()

    async def close(self) -> None:
        pass


class BleSeal:
    def __init__(
        self,
        device_id: str,
        key: bytes,
        *,
        link: str,
        mtu: int = 247,
        boot_id: int = 1,
        chip: SimChip | None = None,
        name: str | None = None,
    ) -> None:
        self.device_id = device_id
        # What it advertises: its device id, unless it copies another seal's name (a test).
        self.name = name or device_id
        self.link = link
        self.max_mtu = mtu
        self.connection: Connection | None = None
        self.connections = 0  # how many times a central connected
        self.notified = 0  # notifications sent, all connections
        self.notified_bytes = 0
        self.largest_notification = 0
        self.largest_write = 0  # the largest chunk the central wrote
        # Sends while connected to a central that had not yet subscribed to TX: lost (§6).
        self.unheard = 0
        self._end = _SealEnd(self)
        self.sim = SimDevice(device_id, key, self._end, boot_id=boot_id, chip=chip)
        self._subscribed = asyncio.Event()
        self._device: Device | None = None
        self._tx: Characteristic[bytes] | None = None

    async def __aenter__(self) -> BleSeal:
        controller = QuietController(f"seal-{self.device_id}", link=virtual_link(self.link))
        device = Device(
            name=self.device_id,
            address=Address.generate_static_address(),
            host=QuietHost(controller, AsyncPipeSink(controller)),
        )
        device.gatt_server.max_mtu = self.max_mtu
        rx: Characteristic[bytes] = Characteristic(
            RX_UUID,
            Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
            Characteristic.Permissions.WRITEABLE,
            CharacteristicValue[bytes](write=self._written),
        )
        self._tx = tx = Characteristic(
            TX_UUID, Characteristic.Properties.NOTIFY, Characteristic.Permissions.READABLE, b""
        )
        device.add_service(Service(SERVICE_UUID, [rx, tx]))
        device.on(device.EVENT_CONNECTION, self._connected)
        device.gatt_server.on("characteristic_subscription", self._subscription)
        self._device = device
        await device.power_on()
        adv, scan = advertising_data(self.name)
        await device.start_advertising(
            auto_restart=True,
            advertising_data=adv,
            scan_response_data=scan,
            advertising_interval_min=_ADVERTISING_INTERVAL_MS,
            advertising_interval_max=_ADVERTISING_INTERVAL_MS,
        )
        await self.sim.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sim.stop()
        if self._device is not None:
            await self.drop()
            with contextlib.suppress(BaseBumbleError, HCI_Error):
                await self._device.power_off()

    def _connected(self, connection: Connection) -> None:
        self.connection = connection
        self.connections += 1
        connection.on(connection.EVENT_DISCONNECTION, lambda _: self._disconnected(connection))

    def _disconnected(self, connection: Connection) -> None:
        if self.connection is connection:
            self.connection = None
            self._subscribed.clear()
            self.sim.welcomed.clear()  # a new central starts a new session (SPEC §5.2)

    def _subscription(self, bearer: Any, characteristic: Any, notify: bool, *_: Any) -> None:
        # One central at a time: the bearer (a connection, or an EATT channel) is that one's.
        if characteristic is self._tx and notify and self.connection is not None:
            self._subscribed.set()

    def _written(self, connection: Connection, value: bytes) -> None:
        if connection is self.connection:
            self.largest_write = max(self.largest_write, len(value))
            self._end.inbox.put_nowait(bytes(value))

    async def notify(self, data: bytes) -> None:
        connection, device, tx = self.connection, self._device, self._tx
        if connection is None or device is None or tx is None:
            return
        if not self._subscribed.is_set():
            self.unheard += 1
            return
        step = chunk_size(connection.att_mtu)
        try:
            for start in range(0, len(data), step):
                chunk = data[start : start + step]
                await device.notify_subscriber(connection, tx, chunk)
                self.notified += 1
                self.notified_bytes += len(chunk)
                self.largest_notification = max(self.largest_notification, len(chunk))
        except (BaseBumbleError, HCI_Error) as exc:
            raise TransportError(f"{self._end.name}: notify failed: {exc}") from None

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    async def drop(self) -> None:
        """The seal ends the connection (walked out of range, reset): the central sees a
        disconnect; the seal advertises again."""
        connection = self.connection
        if connection is not None:
            with contextlib.suppress(BaseBumbleError, HCI_Error, TimeoutError):
                await connection.disconnect()
