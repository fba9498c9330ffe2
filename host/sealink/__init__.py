"""sealink: the gateway between smart seals and a signed, verifiable electronic record."""

from __future__ import annotations

from ._errors import (
    BrokerError,
    CommandError,
    ConfigError,
    DeviceError,
    KeyFileError,
    LedgerError,
    ObserverError,
    SealinkError,
    TransportError,
    TransportUnavailableError,
)

__all__ = [
    "BrokerError",
    "CommandError",
    "ConfigError",
    "DeviceError",
    "KeyFileError",
    "LedgerError",
    "ObserverError",
    "SealinkError",
    "TransportError",
    "TransportUnavailableError",
]
