"""BLE transport (SPEC §6) through bleak's public API: find the seal by the device id it
advertises, connect, subscribe to TX, write RX in chunks of ATT MTU - 3. One transport serves
a port for its life: each connect() searches again, passing over the seals refused lately.

The system's stack (BlueZ, CoreBluetooth, WinRT) by default; `backend=bumble` drives bumble's
own host on an HCI controller (sealink.transport.blebumble). A failed search or connect raises
TransportError and the gateway's port loop retries it with jittered backoff; no adapter at all
is a TransportUnavailableError that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from sealproto.gatt import ATT_MTU_MIN, RX_UUID, SERVICE_UUID, TX_UUID, chunk_size

from sealink.errors import TransportError, TransportUnavailableError
from sealink.transport.bleurl import BleUrl, parse_ble_url

__all__ = ["BleTransport", "advertises"]

_CONNECT_TIMEOUT_S = 20.0
# How long a seal whose HELLO named another device is passed over: long enough that a port
# with both in range settles on its own seal, short enough that one stray HELLO does not keep
# the port from its seal for good.
_PASS_OVER_S = 300.0
_GONE = b""


def advertises(device_id: str, local_name: str | None) -> bool:
    """Whether an advertised name is this seal's: the whole id, or the first NAME_MAX bytes of
    a longer one (SPEC §6). Which seal it is the HELLO's authenticated id says (§5.2)."""
    if not local_name:
        return False
    return local_name == device_id or (
        len(local_name) < len(device_id) and device_id.startswith(local_name)
    )


class BleTransport:
    def __init__(self, url: str) -> None:
        try:
            self.url: BleUrl = parse_ble_url(url)
        except ValueError as exc:
            raise TransportUnavailableError(str(exc)) from None
        self.name = f"ble:{self.url.device_id}"
        self._client: BleakClient | None = None
        self._peer: str | None = None  # the address connected to last
        self._refused: dict[str, float] = {}  # address: passed over until (loop time)
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._chunk = chunk_size(ATT_MTU_MIN)
        self._send_lock = asyncio.Lock()

    @property
    def mtu(self) -> int:
        """The most one write carries: ATT MTU - 3 once connected (SPEC §6)."""
        return self._chunk

    def _backend_args(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What bleak's scanner and client are given beyond the defaults."""
        if self.url.backend == "bumble":
            try:
                from sealink.transport.blebumble import BumbleClient, BumbleScanner
            except ImportError as exc:
                raise TransportUnavailableError(
                    f"{self.name}: backend=bumble needs bumble: pip install 'sealink[ble]' ({exc})"
                ) from None

            hci = self.url.hci
            return (
                {"backend": BumbleScanner, "hci": hci},
                {"backend": BumbleClient, "hci": hci, "mtu": self.url.mtu},
            )
        if self.url.adapter is not None:
            return {"bluez": {"adapter": self.url.adapter}}, {
                "bluez": {"adapter": self.url.adapter}
            }
        return {}, {}

    async def connect(self) -> None:
        scanner_args, client_args = self._backend_args()
        device = await self._find(scanner_args)
        # Bound to this link's queue: a late callback of the last link must not end this one.
        inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._inbox = inbox
        client = BleakClient(
            device,
            disconnected_callback=lambda _: inbox.put_nowait(_GONE),
            timeout=_CONNECT_TIMEOUT_S,
            **client_args,
        )
        try:
            await client.connect()
            rx = client.services.get_characteristic(RX_UUID)
            if rx is None or client.services.get_characteristic(TX_UUID) is None:
                raise TransportError(f"{self.name}: no sealink GATT service {SERVICE_UUID}")
            await client.start_notify(TX_UUID, lambda _, data: inbox.put_nowait(bytes(data)))
            self._chunk = rx.max_write_without_response_size
        except (BleakError, TimeoutError, OSError) as exc:
            await self._drop(client)
            raise TransportError(f"{self.name}: connect failed: {exc}") from None
        except BaseException:
            await self._drop(client)
            raise
        self._client = client
        self._peer = device.address

    async def refuse_peer(self) -> None:
        if self._peer is not None:
            self._refused[self._peer] = asyncio.get_running_loop().time() + _PASS_OVER_S
        await self.close()

    async def _find(self, scanner_args: dict[str, Any]) -> BLEDevice:
        now = asyncio.get_running_loop().time()
        self._refused = {a: until for a, until in self._refused.items() if until > now}

        def wanted(device: BLEDevice, adv: AdvertisementData) -> bool:
            return (
                advertises(self.url.device_id, adv.local_name)
                and device.address not in self._refused
            )

        try:
            # Matched by name alone: the service UUID rides in the scan response, which not
            # every stack merges before reporting (bumble's virtual controller sends the
            # advertising data in its place: test_ble's active scan); connect() checks the
            # service itself.
            device = await BleakScanner.find_device_by_filter(
                wanted, timeout=self.url.scan_s, **scanner_args
            )
        except FileNotFoundError as exc:
            # BlueZ without a D-Bus system bus: no Bluetooth stack on this machine.
            raise TransportUnavailableError(
                f"{self.name}: no Bluetooth adapter (BlueZ unreachable: {exc}); "
                "use a USB HCI dongle with ?backend=bumble&hci=usb:0"
            ) from None
        except (BleakError, OSError) as exc:
            if "adapter" in str(exc).lower():
                raise TransportUnavailableError(
                    f"{self.name}: no Bluetooth adapter: {exc}"
                ) from None
            raise TransportError(f"{self.name}: scan failed: {exc}") from None
        if device is None:
            raise TransportError(f"{self.name}: not advertising (searched {self.url.scan_s} s)")
        return device

    async def send(self, data: bytes) -> None:
        client = self._client
        if client is None:
            raise TransportError(f"{self.name}: not connected")
        view = memoryview(data)
        # One sender at a time: two frames' chunks must not interleave on the air.
        async with self._send_lock:
            try:
                for start in range(0, len(view), self._chunk):
                    await client.write_gatt_char(
                        RX_UUID, view[start : start + self._chunk], response=False
                    )
            except (BleakError, OSError) as exc:
                raise TransportError(f"{self.name}: write failed: {exc}") from None

    async def receive(self) -> bytes:
        if self._client is None:
            raise TransportError(f"{self.name}: not connected")
        data = await self._inbox.get()
        if data == _GONE:
            self._client = None
            raise TransportError(f"{self.name}: disconnected")
        return data

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await self._drop(client)
        self._inbox.put_nowait(_GONE)

    @staticmethod
    async def _drop(client: BleakClient) -> None:
        with contextlib.suppress(BleakError, TimeoutError, OSError):
            await client.disconnect()
