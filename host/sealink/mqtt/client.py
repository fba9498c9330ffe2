"""A small MQTT 5 client for the few messages of the witness protocol (SPEC §14.6): proof
requests and their replies, checkpoints and cosignatures.

    async with MqttClient(config, client_id, ["a/topic/#"], on_message) as client:
        client.publish(topic, payload, retain=True, response_topic=..., correlation=...)

paho runs in its own network thread (loop_start): a handful of messages a checkpoint interval
do not need the publisher's single-threaded fast path. TLS and the login are connection.py's.
It reconnects with the configured backoff (in whole seconds, at least 1: paho's unit), the
first connection included, and subscribes again on every connection;
`on_message` runs on the event loop that entered the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

from sealink.config import MqttConfig
from sealink.mqtt.connection import Client, connect_properties, new_client, refusal
from sealink.mqtt.pahofast import properties

__all__ = ["Message", "MqttClient"]

log = logging.getLogger("sealink.mqtt")


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None
    correlation: bytes | None = None


class MqttClient:
    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: Callable[[Message], None],
        on_published: Callable[[int, bool], None] | None = None,
        *,
        persistent: bool = False,
    ) -> None:
        """`on_published(mid, ok)`: the broker's PUBACK of a publish (`ok`: a success reason
        code), on the event loop; for messages that must be kept until the broker has them.
        `persistent`: resume the session of `client_id` (clean start off, the config's
        session_expiry_s), so what the broker queued for it while away is delivered."""
        self.config = config
        self._persistent = persistent
        self._subscriptions = list(subscriptions)
        self._on_message = on_message
        self._client = new_client(config, client_id, Client)
        self._client.on_connect = self._connect
        self._client.on_disconnect = self._disconnect
        self._client.on_connect_fail = lambda client, userdata: self._call(
            self._down, self._client.failure or "cannot connect"
        )
        self._client.on_message = self._message
        self._client.on_subscribe = self._suback
        if on_published is not None:
            self._client.on_publish = lambda client, userdata, mid, reason, props: self._call(
                on_published, mid, not reason.is_failure
            )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._down_logged = False
        self._closing = False

    async def __aenter__(self) -> MqttClient:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(
            self.config.host,
            self.config.port,
            self.config.keepalive_s,
            clean_start=not self._persistent,
            properties=connect_properties(self.config) if self._persistent else None,
        )
        self._client.loop_start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def wait_subscribed(self, timeout: float) -> None:
        """Until the broker acknowledged this connection's subscriptions: from then on nothing
        published to them is missed (before, the broker drops it: clean start, no session)."""
        async with asyncio.timeout(timeout):
            await self._subscribed.wait()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> int:
        """QoS 1; paho keeps it while the broker is away and sends it after a reconnect. Its
        message id, which `on_published` names."""
        props = None
        if response_topic is not None or correlation is not None:
            props = properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=props).mid

    # paho's thread ---------------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._client.failure = refusal(reason)  # the disconnect that follows reports it
            return
        # One SUBSCRIBE, so one SUBACK says every filter is in place.
        if self._subscriptions:
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._call(self._up)

    def _suback(
        self, client: mqtt.Client, userdata: Any, mid: Any, reasons: Any, props: Any
    ) -> None:
        self._call(self._subscribed.set)

    def _disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._call(self._down, self._client.failure or str(reason))

    def _message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        response = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain), response, correlation)
        self._call(self._on_message, message)

    # the event loop --------------------------------------------------------------------------

    def _up(self) -> None:
        self._connected.set()
        self._down_logged = False
        log.info("mqtt connected", extra={"fields": {"host": self.config.host}})

    def _down(self, why: str) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if (
            not self._down_logged and not self._closing
        ):  # once per outage: paho retries with backoff meanwhile
            self._down_logged = True
            log.warning(
                "mqtt unavailable, retrying",
                extra={"fields": {"host": self.config.host, "port": self.config.port, "why": why}},
            )
