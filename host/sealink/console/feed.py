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

A gateway that rotates its key (SPEC §14.7) publishes its key history, retained, on
`<prefix>/gateway/<id>/keys`; it is walked from the pinned key by `sealink_verify.keyhistory`
(as the fleet does), and its later keys are trusted from then on. A message refused for a key
nobody had is held a while and checked again once the history brings that key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sealink_verify.audit import KINDS
from sealink_verify.keyhistory import KeyHistoryError, from_document, history_entries
from sealink_verify.mqtt import (
    Freshness,
    MessageError,
    SignedMessage,
    UnknownKey,
    verify_message,
)
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
_HELD = 200  # messages of a key nobody had, kept for a key history that may bring it
_AHEAD = 1024  # counters kept per device above its highest contiguous one (see _Seen)


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


def _current_key(payload: bytes) -> bytes | None:
    """The last key of a key history document, unverified (None: no readable history)."""
    with contextlib.suppress(ValueError, KeyError, TypeError, KeyHistoryError):
        return history_entries(json.loads(payload)["keys"])[-1][0]
    return None


class _Seen:
    """The (device, counter) pairs already shown, in bounded memory: per device the highest
    counter below which all were seen, and the counters seen above it. Records are chained and
    arrive mostly in order, so the set above stays small; if more than `ahead` pile up (a gap
    that never fills, e.g. a console started mid-stream), the floor jumps over the gap and a
    record from before it is taken for a redelivery."""

    def __init__(self, ahead: int = _AHEAD) -> None:
        self._ahead = ahead
        self._floor: dict[str, int] = {}
        self._above: dict[str, set[int]] = {}

    def add(self, device: str, counter: int) -> bool:
        """True: news (now remembered); False: seen before."""
        floor = self._floor.get(device, 0)
        above = self._above.setdefault(device, set())
        if counter <= floor or counter in above:
            return False
        above.add(counter)
        if len(above) > self._ahead:
            floor = min(above) - 1
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self._floor[device] = floor
        return True

    def size(self, device: str) -> int:
        """How many counters are held for the device (the floor aside)."""
        return len(self._above.get(device, ()))


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
        self._pinned = {g: keys[0] for g, keys in self._gateway_keys.items() if keys}
        self._records = RecordVerifier(self._gateway_keys)
        self._sinks = list(sinks)  # called with each update before any subscriber sees it
        self._freshness = Freshness()
        self._seen = _Seen()
        self._held: deque[tuple[str, bytes]] = deque(maxlen=_HELD)
        self.impressions: deque[Impression] = deque(maxlen=_RECENT)
        self.alarms: deque[Alarm] = deque(maxlen=_RECENT)
        self.devices: dict[str, Health] = {}
        self.gateways: dict[str, GatewayState] = {}
        self._queues: set[asyncio.Queue[Update]] = set()
        topics = [f"{self.prefix}/+/{kind}" for kind in ("events", "alarms", "status")]
        topics += [f"{self.prefix}/gateway/+/{kind}" for kind in ("alarms", "status", "keys")]
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
        for update in self.updates(message.topic, message.payload):
            for sink in self._sinks:
                sink(update)
            for queue in self._queues:
                if queue.full():  # a stalled reader loses its oldest update, never blocks
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(update)

    def updates(self, topic: str, payload: bytes) -> list[Update]:
        """The updates one message makes: none for no news (a redelivery), those of the held
        messages a key history lets verify now."""
        levels = topic.split("/")
        if levels[-1] == "keys" and len(levels) >= 3 and levels[-3] == "gateway":
            return self._key_history(topic, levels[-2], payload)
        update = self.handle(topic, payload)
        return [] if update is None else [update]

    def handle(self, topic: str, payload: bytes) -> Update | None:
        """The update one record, status or alarm makes (None: no news, e.g. a redelivery)."""
        levels = topic.split("/")
        kind = levels[-1]
        if kind == "events":
            return self._event(topic, levels[-2], payload)
        try:
            signed = verify_message(topic, payload, self._gateway_keys)
            if kind == "status" and not self._freshness.accept(signed):
                return None
        except MessageError as exc:
            if isinstance(exc, UnknownKey):
                self._held.append((topic, payload))
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
            if exc.reason == "unknown_key":
                self._held.append((topic, cose))
            return Rejected(topic, f"record {exc.reason}: {exc.detail}")
        if not self._seen.add(device, record.counter):
            return None  # at-least-once delivery: (device, counter) names a record
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

    def _key_history(self, topic: str, gateway: str, payload: bytes) -> list[Update]:
        """Trust the later keys of a gateway's history walked from its pinned key; then check
        again what was held for a key nobody had."""
        if not payload:
            return []  # a retained message cleared
        pinned = self._pinned.get(gateway)
        if pinned is None:
            return [Rejected(topic, f"key history of gateway {gateway!r}, which is not followed")]
        try:
            history = from_document(pinned, payload, gateway)
        except KeyHistoryError as exc:
            if _current_key(payload) == pinned:
                return []  # pinned at the latest key (`sealink watch` after a rotation)
            return [Rejected(topic, f"key history: {exc}")]
        known = self._gateway_keys[gateway]
        keys = list(dict.fromkeys([*known, *(e.public for e in history.epochs)]))
        if keys == known:
            return []
        self._gateway_keys[gateway] = keys
        self._records = RecordVerifier(self._gateway_keys)
        held, self._held = list(self._held), deque(maxlen=_HELD)
        retried = (self.handle(t, p) for t, p in held)
        return [u for u in retried if u is not None and not isinstance(u, Rejected)]
