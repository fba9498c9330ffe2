"""The MQTT topics a gateway publishes to (protocol/SPEC.md §11.2), all under one prefix."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


@dataclass(frozen=True)
class Topics:
    prefix: str
    gateway_id: str

    def events(self, device: str) -> str:
        return f"{self.prefix}/{device}/events"

    def status(self, device: str) -> str:
        return f"{self.prefix}/{device}/status"

    def alarms(self, device: str | None) -> str:
        """A device's alarms, or (device None) the gateway's own: inputs that no authenticated
        device can be blamed for."""
        if device is None:
            return f"{self.prefix}/gateway/{self.gateway_id}/alarms"
        return f"{self.prefix}/{device}/alarms"

    def gaps(self, device: str) -> str:
        """Countersigned statements of counters an operator declared lost (SPEC §5.8)."""
        return f"{self.prefix}/{device}/gaps"

    def gateway_status(self) -> str:
        return f"{self.prefix}/gateway/{self.gateway_id}/status"

    def checkpoint(self) -> str:
        """The latest signed checkpoint of the gateway's transparency log (SPEC §14.2)."""
        return f"{self.prefix}/gateway/{self.gateway_id}/checkpoint"
