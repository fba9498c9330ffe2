"""Byte transports between the gateway and its devices, chosen by name (SPEC §6)."""

from sealink.transport.base import (
    TRANSPORTS,
    PicksPeer,
    Transport,
    open_transport,
    port_device,
    release_stacks,
)

__all__ = [
    "TRANSPORTS",
    "PicksPeer",
    "Transport",
    "open_transport",
    "port_device",
    "release_stacks",
]
