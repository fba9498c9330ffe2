"""paho-mqtt 2.x, lean where the gateway spends its time: user properties packed once per
row instead of through paho's generic property objects, and plain PUBACKs handled without
paho's per-packet objects (`LeanClient._handle_pubackcomp`). paho is pinned below 2.3 because this
relies on its packet handling; host/tests/test_fastpath.py pins the behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from sealink.config import MqttConfig
from sealink.mqtt.connection import Client, new_client

__all__ = ["LeanClient", "UserProperties", "lean_client", "properties"]


def properties(packet: int) -> Properties:
    return Properties(packet)  # type: ignore[no-untyped-call]


def _str16(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class UserProperties(Properties):
    """PUBLISH properties holding only user properties, packed once by us (MQTT v5 §3.3.2.3;
    paho's generic Properties packing cost more than the rest of a publish). paho only ever
    calls pack() on the properties of an outgoing PUBLISH."""

    _USER_PROPERTY = 0x26

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        body = b"".join(bytes([self._USER_PROPERTY]) + _str16(k) + _str16(v) for k, v in pairs)
        object.__setattr__(self, "_packed", _varint(len(body)) + body)
        object.__setattr__(self, "_pairs", pairs)

    def pack(self) -> bytes:
        packed: bytes = object.__getattribute__(self, "_packed")
        return packed

    def __str__(self) -> str:
        return f"[UserProperty : {object.__getattribute__(self, '_pairs')}]"

    __repr__ = __str__


class LeanClient(Client):
    """paho's client with a lean path for the common PUBACK (MQTT v5 §3.4: packet identifier,
    optional reason code, no properties). paho's generic path builds two ReasonCode objects and
    a Properties object per PUBACK, which measured ~60 µs on this machine, more than the rest of
    the PUBACK. Anything else (a PUBACK with properties, PUBCOMP) takes paho's own path."""

    on_puback: Callable[[int, int], None] | None = None

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        callback = self.on_puback
        if (
            cmd != "PUBACK"
            or callback is None
            or not 2 <= len(packet) <= 4
            or (len(packet) == 4 and packet[3] != 0)
        ):
            return super()._handle_pubackcomp(cmd)
        mid = int.from_bytes(packet[:2], "big")
        code = packet[2] if len(packet) > 2 else 0
        with self._out_message_mutex:
            msg = self._out_messages.pop(mid, None)
            if msg is None:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            msg.info._set_as_published()
            if msg.qos > 0:
                self._inflight_messages -= 1
                if self._max_inflight_messages > 0:
                    rc: MQTTErrorCode = self._update_inflight()
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return rc
        callback(mid, code)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


def lean_client(
    client_id: str, config: MqttConfig, on_puback: Callable[[int, int], None]
) -> LeanClient:
    client = new_client(config, client_id, LeanClient)
    client.on_puback = on_puback
    # The publisher's own window bounds what is in flight; paho's own limit rescans its whole
    # queue on every PUBACK.
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    return client
