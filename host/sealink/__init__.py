"""sealink: the gateway between smart seals and a signed, verifiable electronic record.

    from sealink import Gateway, load_config
    async with Gateway(load_config("/etc/sealink/sealink.toml")) as gateway:
        await gateway.wait_closed()

Test and demo helpers live in their own public modules: `sealink.broker` (a private
Mosquitto), `sealink.observer` (the independent verifying subscriber), `sealink.emulator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ._config import Config, load_config
    from ._gateway import Gateway
    from ._signer import GatewayKey
    from ._transport import Transport, open_transport

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
    "Config": "._config",
    "load_config": "._config",
    "Gateway": "._gateway",
    "GatewayKey": "._signer",
    "Transport": "._transport",
    "open_transport": "._transport",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sealink' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)
