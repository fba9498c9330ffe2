"""paho-mqtt 2.x, lean where the gateway and the fleet spend their time: user properties packed
once per row instead of through paho's generic property objects, plain PUBACKs handled without
paho's per-packet objects (`LeanClient._handle_pubackcomp`), and, for a subscriber, the socket
read in chunks, plain PUBLISHes handed over without paho's message objects and acknowledgements
written together (`LeanSubscriber`). paho is pinned below 2.3 because this relies on its packet
handling; host/tests/test_fastpath.py pins the behaviour.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from paho.mqtt.client import PUBACK, MQTTv5
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from sealink.config import MqttConfig
from sealink.mqtt.connection import Client, new_client

__all__ = ["LeanClient", "LeanSubscriber", "UserProperties", "lean_client", "properties"]


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


_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, packet identifier (§3.4)
# One receive takes what the kernel holds up to this: at the fleet's rate a read of one packet
# cost a select and three recv calls (its type, its length, its body), each a system call.
_RX_CHUNK = 64 * 1024


class LeanSubscriber(Client):
    """paho's client for a subscriber that takes PUBLISHes by the thousand (the fleet, bound by
    the one GIL its verification needs: README "Fleet ledger").

    - The socket is read in chunks of up to 64 KiB and paho's per-packet reads are served from
      the chunk; `loop_read` goes on while the chunk holds bytes, so none wait behind a select.
    - A QoS 0/1 PUBLISH without properties (MQTT v5 §3.3.2.3: property length 0) goes to
      `on_publish_raw(mid, qos, topic, payload)` without paho's MQTTMessage, Properties, debug
      log line and topic matching. Anything else
      (properties, QoS 2, a topic that is not UTF-8, no on_publish_raw) takes paho's own path
      to `on_message`.
    - `ack_all` writes the PUBACKs of many messages as one packet queue entry: one wake of the
      network thread and one send, not one of each per message."""

    on_publish_raw: Callable[[int, int, str, bytes], None] | None = None
    _rx: bytes = b""
    _rx_at = 0
    _rx_sock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rx_sock is not self._sock:  # a new connection: the old one's bytes are void
            self._rx, self._rx_at, self._rx_sock = b"", 0, self._sock
        if self._rx_at >= len(self._rx):
            chunk: bytes = super()._sock_recv(_RX_CHUNK)  # BlockingIOError when none wait
            if not chunk:
                return chunk  # the broker closed the connection
            self._rx, self._rx_at = chunk, 0
        start = self._rx_at
        self._rx_at = min(start + bufsize, len(self._rx))
        return self._rx[start : self._rx_at]

    def _chunk_holds_bytes(self) -> bool:
        return (
            self._sock is not None and self._rx_sock is self._sock and self._rx_at < len(self._rx)
        )

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc: MQTTErrorCode = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._chunk_holds_bytes():
            rc = super().loop_read(1)
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        callback = self.on_publish_raw
        packet: bytearray = self._in_packet["packet"]
        qos = (self._in_packet["command"] & 0x06) >> 1
        if callback is None or self._protocol != MQTTv5 or qos == 2:
            return super()._handle_publish()
        topic_end = 2 + int.from_bytes(packet[:2], "big")
        mid = int.from_bytes(packet[topic_end : topic_end + 2], "big") if qos else 0
        at = topic_end + 2 if qos else topic_end
        if at >= len(packet) or packet[at] != 0:  # properties, or malformed: paho judges it
            return super()._handle_publish()
        try:
            topic = packet[2:topic_end].decode()
        except UnicodeDecodeError:
            return super()._handle_publish()
        with self._in_callback_mutex:
            callback(mid, qos, topic, bytes(packet[at + 1 :]))
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_all(self, mids: Iterable[int]) -> MQTTErrorCode:
        """PUBACK each of `mids` (QoS 1 messages taken with manual acknowledgement), in order."""
        packet = b"".join(_PUBACK.pack(PUBACK, 2, mid) for mid in mids)
        if not packet:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        rc: MQTTErrorCode = self._packet_queue(PUBACK, packet, 0, 1)
        return rc
