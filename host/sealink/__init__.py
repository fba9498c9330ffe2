"""sealink: the gateway between smart seals and a signed, verifiable electronic record.

    from sealink import Gateway, load_config
    async with Gateway(load_config("/etc/sealink/sealink.toml")) as gateway:
        await gateway.wait_closed()

Test and demo helpers live in their own public modules: `sealink_sim.broker` (a private
Mosquitto), `sealink_sim.observer` (the independent verifying subscriber), `sealink_sim.emulator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sealink.errors import (
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

if TYPE_CHECKING:
    from sealink.config import Config, load_config
    from sealink.crypto import GatewayKey
    from sealink.gateway import Gateway
    from sealink.transport import Transport, open_transport

__all__ = [
    "BrokerError",
    "CommandError",
    "Config",
    "ConfigError",
    "DeviceError",
    "Gateway",
    "GatewayKey",
    "KeyFileError",
    "LedgerError",
    "ObserverError",
    "SealinkError",
    "Transport",
    "TransportError",
    "TransportUnavailableError",
    "load_config",
    "open_transport",
]

# Imported on first use: `import sealink` (e.g. for its errors) stays free of paho and SQLite.
_LAZY = {
    "Config": "sealink.config",
    "load_config": "sealink.config",
    "Gateway": "sealink.gateway",
    "GatewayKey": "sealink.crypto",
    "Transport": "sealink.transport",
    "open_transport": "sealink.transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sealink' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
