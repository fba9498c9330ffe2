"""The gateway core: device links (sessions), the device registry, the group commit."""

from sealink.gateway.service import Gateway

__all__ = ["Gateway"]
