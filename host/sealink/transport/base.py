"""The byte transport between the gateway and one device, chosen by name.

A transport moves the protocol's byte stream (protocol/SPEC.md §6); it knows nothing of frames.
Implementations live in their own modules and are imported only when asked for, so a gateway
without the optional BLE stack still runs its serial ports.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

from sealink.errors import TransportUnavailableError

__all__ = [
    "TRANSPORTS",
    "PicksPeer",
    "Transport",
    "open_transport",
    "port_device",
    "release_stacks",
]

TRANSPORTS = ("serial", "ble")


@runtime_checkable
class Transport(Protocol):
    """One device link. `receive()` returns the next chunk of bytes (never empty) and raises
    TransportError once the link is gone; `send()` writes all of `data` or raises."""

    name: str

    @property
    def mtu(self) -> int: ...

    async def connect(self) -> None: ...

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    async def close(self) -> None: ...


@runtime_checkable
class PicksPeer(Protocol):
    """A transport that chooses its peer itself (BLE: by advertised name, SPEC §6), and can be
    told that the one on the link is not its port's device."""

    async def refuse_peer(self) -> None:
        """Close the link, and pass over that peer in the next searches."""


def port_device(kind: str, url: str) -> str | None:
    """The one device a port's links may carry, when its URL names it (`ble://<device id>`);
    None: whichever registered device says HELLO (a serial line)."""
    if kind != "ble":
        return None
    from sealink.transport.bleurl import parse_ble_url

    try:
        return parse_ble_url(url).device_id
    except ValueError as exc:
        raise TransportUnavailableError(str(exc)) from None


async def release_stacks() -> None:
    """Let go of the BLE stacks this event loop opened: a bumble host holds its controller (a
    USB dongle) until then. Nothing to do if no port ever used one."""
    bumble = sys.modules.get("sealink.transport.blebumble")
    if bumble is not None:
        await bumble.close_hosts()


def open_transport(kind: str, url: str, **options: Any) -> Transport:
    """Make (not yet connect) a transport by name; say what to install if it cannot exist."""
    match kind:
        case "serial":
            try:
                from sealink.transport.serial import SerialTransport
            except ImportError as exc:
                raise TransportUnavailableError(
                    f"serial transport needs pyserial: pip install pyserial ({exc})"
                ) from None
            return SerialTransport(url, **options)
        case "ble":
            try:
                from sealink.transport.ble import BleTransport
            except ImportError as exc:
                raise TransportUnavailableError(
                    f"BLE transport needs bleak (and bumble for backend=bumble): "
                    f"pip install 'sealink[ble]' ({exc})"
                ) from None
            # The options are a serial port's (baudrate, which every [[ports]] table has).
            return BleTransport(url)
        case _:
            raise TransportUnavailableError(
                f"unknown transport {kind!r}; known: {', '.join(TRANSPORTS)}"
            )
