"""The byte transport between the gateway and one device, chosen by name.

A transport moves the protocol's byte stream (protocol/SPEC.md §6); it knows nothing of frames.
Implementations live in their own modules and are imported only when asked for, so a gateway
without the optional BLE stack still runs its serial ports.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sealink.errors import TransportUnavailableError

__all__ = ["TRANSPORTS", "Transport", "open_transport"]

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
