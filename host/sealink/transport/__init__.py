"""Byte transports between the gateway and its devices, chosen by name (SPEC §6)."""

from sealink.transport.base import TRANSPORTS, Transport, open_transport

__all__ = ["TRANSPORTS", "Transport", "open_transport"]
