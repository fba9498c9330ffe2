"""Publishing the ledger's outbox to MQTT v5 (QoS 1, in order, marked only on PUBACK).

`process.PublisherProcess` runs `publisher.Publisher` in a child process; the child is started
as `python -m sealink.mqtt.process`, so this package imports neither module itself.
"""
