"""The live model of a fleet, fed from MQTT: what the console's pages and a terminal view show.

    async with Feed(mqtt_config, {"gw-1": [public_raw]}, client_id) as feed:
        async for update in feed.subscribe():
            ...  # Impression | Alarm | Health | GatewayState | Rejected

No web code lives here. Everything shown is checked first, as an independent consumer does:
a record on `<prefix>/<device>/events` is the gateway's COSE_Sign1 (SPEC §11.1), verified
by `sealink_verify.record` under the pinned key its kid names, and decoded from the
countersigned `event` bytes (never from the unsigned JSON companion); status and alarms are
signed messages (SPEC §11.4) checked by `sealink_verify.mqtt.verify_message`, and a retained
status that goes back is refused by its `Freshness`. What fails a check is a `Rejected`
update, shown as such.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sealink_verify.audit import KINDS
from sealink_verify.mqtt import Freshness, MessageError, SignedMessage, verify_message
from sealink_verify.record import RecordError, RecordVerifier

from sealink.config import MqttConfig
from sealink.mqtt.client import Message, MqttClient

__all__ = [
    "Alarm",
    "Feed",
    "GatewayState",
    "Health",
    "Impression",
    "Rejected",
    "Update",
    "kind_name",
]

_RECENT = 500  # impressions and alarms kept in memory for a page's first view
_QUEUE = 1000  # updates a slow subscriber may lag behind before it loses the oldest


def kind_name(kind: int) -> str:
    return KINDS[kind] if 0 <= kind < len(KINDS) else f"kind{kind}"


@dataclass(frozen=True)
class Impression:
    """One countersigned record, verified; `cose` is the evidence it was decoded from."""

    gateway: str
    device: str
    counter: int
    kind: int
    permit: int
    operator: int
    time_s: int
    received_ms: int
    record_sha256: str
    cose: bytes = field(repr=False)

    @property
    def kind_name(self) -> str:
        return kind_name(self.kind)


@dataclass(frozen=True)
class Alarm:
    gateway: str
    device: str  # the device, or `gateway/<id>` for the gateway's own alarms
    seq: int
    time_ms: int
    body: dict[str, Any]

    @property
    def key(self) -> str:
        """Names this alarm among all: a gateway signs each message with its own seq."""
        return f"{self.gateway}:{self.seq}"

    @property
    def what(self) -> str:
        return str(self.body.get("code_name") or self.body.get("reason") or "alarm")

    @property
    def quarantine(self) -> bool:
        return self.body.get("quarantine") is True


@dataclass(frozen=True)
class Health:
    """A seal's last signed status (SPEC §11.2)."""

    device: str
    gateway: str
    time_ms: int
    body: dict[str, Any]

    @property
    def online(self) -> bool:
        return self.body.get("online") is True

    @property
    def quarantined(self) -> bool:
        return bool(self.body.get("quarantined"))

    def get(self, name: str) -> Any:
        return self.body.get(name)


@dataclass(frozen=True)
class GatewayState:
    gateway: str
    state: str  # online, stopped, offline (its last will)
    time_ms: int


@dataclass(frozen=True)
class Rejected:
    """A message that failed a check: never shown as valid."""

    topic: str
    reason: str


Update = Impression | Alarm | Health | GatewayState | Rejected


class Feed:
    """Subscribe to the fleet's topics, verify every message, keep the latest state, and hand
    typed updates to each subscriber (an asyncio queue apiece)."""

    def __init__(
        self,
        mqtt: MqttConfig,
        gateway_keys: Mapping[str, Sequence[bytes]],
        client_id: str,
        sinks: Sequence[Callable[[Update], None]] = (),
    ) -> None:
        self.prefix = mqtt.prefix.rstrip("/")
        self._gateway_keys = {g: list(keys) for g, keys in gateway_keys.items()}
        self._records = RecordVerifier(self._gateway_keys)
        self._sinks = list(sinks)  # called with each update before any subscriber sees it
        self._freshness = Freshness()
        self._seen: set[tuple[str, int]] = set()
        self.impressions: deque[Impression] = deque(maxlen=_RECENT)
        self.alarms: deque[Alarm] = deque(maxlen=_RECENT)
        self.devices: dict[str, Health] = {}
        self.gateways: dict[str, GatewayState] = {}
        self._queues: set[asyncio.Queue[Update]] = set()
        topics = [f"{self.prefix}/+/{kind}" for kind in ("events", "alarms", "status")]
        topics += [f"{self.prefix}/gateway/+/{kind}" for kind in ("alarms", "status")]
        self._client = MqttClient(mqtt, client_id, topics, self._on_message)

    async def __aenter__(self) -> Feed:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.__aexit__(exc_type, exc, tb)

    @property
    def connected(self) -> bool:
        return self._client.connected

    async def wait_connected(self, timeout: float) -> None:
        await self._client.wait_connected(timeout)

    def add_sink(self, sink: Callable[[Update], None]) -> None:
        self._sinks.append(sink)

    def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        """Send on the feed's connection (the approval requests go out this way)."""
        self._client.publish(topic, payload, **kwargs)

    async def subscribe(self) -> AsyncIterator[Update]:
        """Every update from now on, in arrival order, until the caller stops iterating."""
        queue: asyncio.Queue[Update] = asyncio.Queue(_QUEUE)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    # the event loop: one message at a time -----------------------------------------------------

    def _on_message(self, message: Message) -> None:
        update = self.handle(message.topic, message.payload)
        if update is None:
            return
        for sink in self._sinks:
            sink(update)
        for queue in self._queues:
            if queue.full():  # a stalled reader loses its oldest update, never blocks the feed
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(update)

    def handle(self, topic: str, payload: bytes) -> Update | None:
        """The update one message makes (None: no news, e.g. a redelivery)."""
        levels = topic.split("/")
        kind = levels[-1]
        if kind == "events":
            return self._event(topic, levels[-2], payload)
        try:
            signed = verify_message(topic, payload, self._gateway_keys)
            if kind == "status" and not self._freshness.accept(signed):
                return None
        except MessageError as exc:
            return Rejected(topic, f"{type(exc).__name__}: {exc}")
        on_gateway = len(levels) >= 3 and levels[-3] == "gateway"
        if kind == "alarms":
            return self._alarm(signed, f"gateway/{signed.gateway}" if on_gateway else levels[-2])
        if on_gateway:
            state = GatewayState(signed.gateway, str(signed.body.get("state")), signed.time_ms)
            self.gateways[signed.gateway] = state
            return state
        health = Health(levels[-2], signed.gateway, signed.time_ms, signed.body)
        self.devices[health.device] = health
        return health

    def _alarm(self, signed: SignedMessage, device: str) -> Alarm:
        alarm = Alarm(signed.gateway, device, signed.seq, signed.time_ms, signed.body)
        self.alarms.appendleft(alarm)
        return alarm

    def _event(self, topic: str, device: str, cose: bytes) -> Update | None:
        try:
            record = self._records.open(device, cose)
        except RecordError as exc:
            return Rejected(topic, f"record {exc.reason}: {exc.detail}")
        if (device, record.counter) in self._seen:
            return None  # at-least-once delivery: (device, counter) names a record
        self._seen.add((device, record.counter))
        impression = Impression(
            gateway=record.gateway,
            device=device,
            counter=record.counter,
            kind=record.field_int("kind"),
            permit=record.field_int("permit"),
            operator=record.field_int("operator"),
            time_s=record.field_int("time_s"),
            received_ms=record.received_ms,
            record_sha256=record.record_hash.hex(),
            cose=cose,
        )
        self.impressions.appendleft(impression)
        return impression
