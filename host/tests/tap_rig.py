"""Shared by the tests that watch a real Mosquitto: a test's own MQTT 5 client (`Tap`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from sealink_verify.mqtt import verify_message


class Tap:
    """A test's own MQTT 5 client: collects what arrives on some filters, publishes."""

    def __init__(self, port: int, filters: list[str]) -> None:
        self.got: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        assert self._ready.wait(10), "tap: no SUBACK"
        self.on_message: Callable[[mqtt.MQTTMessage], None] | None = None

    def _message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append(msg)
        if self.on_message is not None:
            self.on_message(msg)

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [bytes(m.payload) for m in self.got if m.topic == topic]

    def alarms(self, topic: str, gateway_key: bytes | None = None) -> list[dict[str, Any]]:
        """A witness's alarms are JSON; a gateway's are signed (SPEC §11.4): with its key,
        each one is verified and its body returned."""
        if gateway_key is None:
            return [json.loads(p) for p in self.on(topic)]
        return [verify_message(topic, p, {"gw-test": [gateway_key]}).body for p in self.on(topic)]

    def publish(self, topic: str, payload: bytes, retain: bool = False, **props: Any) -> None:
        properties = None
        if props:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
