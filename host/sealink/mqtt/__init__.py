"""Publishing the ledger's outbox to MQTT v5 (QoS 1, in order, marked only on PUBACK)."""

from sealink.mqtt.process import PublisherProcess

__all__ = ["PublisherProcess"]
