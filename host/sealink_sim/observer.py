"""An independent MQTT subscriber that checks what the gateway publishes, as a consumer would.

It shares no code with the gateway's signing or protocol path on purpose: its own paho client,
`cwt` (an independent COSE implementation) to verify every COSE_Sign1 with the exported gateway
public key, and cbor2 to read the device event inside. Per device it counts:

- published: event messages received (every delivery, redeliveries included)
- verified: distinct counters whose signature, payload and device event all checked out
- duplicates: further deliveries of a counter already verified, with identical bytes
- conflicts: a counter delivered again with different event bytes (must never happen)
- invalid: signature or payload failures; chain_breaks: prev != SHA-256(previous event)
- redeliveries: deliveries with the MQTT DUP flag set
- lost: counters between 1 and the highest verified that never arrived
- latency: observer receipt time minus the gateway's receipt time (same machine clock)

Alarms and retained status are signed messages (SPEC §11.4), checked with
`sealink_verify.mqtt` under the same gateway key: a verified one is counted and its JSON body
kept per device; one that does not verify, or a retained status older than one already seen,
counts as `forged` and is kept nowhere else. Gateway topics (`<prefix>/gateway/<id>/...`) are
tallied under the gateway id.

Thread-safe: paho's network thread updates the tallies; `wait_until` waits on a condition.

    with Observer("127.0.0.1", broker.port, public_pem) as obs:
        obs.wait_until(lambda o: o.device("seal-0001").verified >= 50, timeout=30)
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from cwt import COSE, COSEKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sealink.errors import ObserverError
from sealink_verify import derive_kid
from sealink_verify.audit import seal_public_key, seal_signature_ok
from sealink_verify.mqtt import Freshness, MessageError, SignedMessage, verify_message

__all__ = ["DeviceTally", "Observer"]

# EVENT field keys (protocol/SPEC.md §4), restated here so the observer stays independent.
_EV_COUNTER = 1
_EV_PREV = 8
_GENESIS = bytes(32)
_SESSION_EXPIRY_S = 3600


@dataclass
class DeviceTally:
    device: str
    published: int = 0
    verified: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    chain_breaks: int = 0
    redeliveries: int = 0
    alarms: int = 0
    forged: int = 0  # status or alarm messages that failed SPEC §11.4's checks
    # Every verified alarm published for the device, as its JSON body (SPEC §11.2), oldest first.
    alarm_log: list[dict[str, Any]] = field(default_factory=list, repr=False)
    events: dict[int, bytes] = field(default_factory=dict, repr=False)
    arrivals: dict[int, float] = field(default_factory=dict, repr=False)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    status: dict[str, Any] | None = None

    @property
    def highest(self) -> int:
        return max(self.events, default=0)

    contiguous: int = 0
    """The highest n such that every counter 1..n has been verified."""

    @property
    def missing(self) -> list[int]:
        return [c for c in range(1, self.highest + 1) if c not in self.events]

    @property
    def lost(self) -> int:
        return self.highest - len(self.events)

    def summary(self) -> dict[str, int]:
        return {
            "published": self.published,
            "verified": self.verified,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "invalid": self.invalid,
            "chain_breaks": self.chain_breaks,
            "redeliveries": self.redeliveries,
            "lost": self.lost,
            "alarms": self.alarms,
            "forged": self.forged,
        }


def _claimed_gateway(payload: bytes) -> str:
    """The gateway a signed message names, unverified: the observer holds one key and checks
    it signed for that gateway (verify_message binds the two)."""
    try:
        claimed = cbor2.loads(cbor2.loads(payload).value[2]).get("gateway")
    except Exception:  # anything unreadable: verify_message names what is wrong with it
        return ""
    return claimed if isinstance(claimed, str) else ""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Observer:
    """Subscribe to `<prefix>/+/events|alarms|status` and verify everything that arrives.

    The session is persistent (clean_start=False, fixed client id) so messages published while
    the observer or the broker was down are still delivered once both are back.
    """

    def __init__(
        self,
        host: str,
        port: int,
        public_key_pem: bytes,
        *,
        prefix: str = "sealink",
        client_id: str | None = None,
        kid: bytes | None = None,
        clean_start: bool = False,
        connect_timeout_s: float = 10.0,
        seal_keys: dict[str, bytes] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip("/")
        self.client_id = client_id or f"sealink-observer-{uuid.uuid4().hex[:8]}"
        self.connect_timeout_s = connect_timeout_s
        self._key = COSEKey.from_pem(public_key_pem, kid=kid or derive_kid(public_key_pem))
        self._gateway_raw: bytes = self._key.to_dict()[-2]
        self._freshness = Freshness()
        # device -> its chip's public key: each event's seal signature is checked too (SPEC
        # §4.1); devices not listed are checked up to the gateway's countersignature only.
        self._seal_keys = {d: seal_public_key(k) for d, k in (seal_keys or {}).items()}
        self._cose = COSE.new()
        self._cond = threading.Condition()
        self._devices: dict[str, DeviceTally] = {}
        self._problems: list[str] = []
        self._connected = False
        self._subscribed = False
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._clean_start = clean_start

    # lifecycle -------------------------------------------------------------------------------

    def start(self, wait: bool = True) -> Observer:
        """Connect in the background (the broker may be down; paho keeps retrying)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = _SESSION_EXPIRY_S
        self._client.connect_async(
            self.host, self.port, keepalive=10, clean_start=self._clean_start, properties=props
        )
        self._client.loop_start()
        if wait:
            self.wait_until(lambda o: o._subscribed, self.connect_timeout_s, "subscribed")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Observer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # queries ---------------------------------------------------------------------------------

    def device(self, device: str) -> DeviceTally:
        with self._cond:
            return self._devices.setdefault(device, DeviceTally(device))

    @property
    def devices(self) -> dict[str, DeviceTally]:
        with self._cond:
            return dict(self._devices)

    @property
    def problems(self) -> list[str]:
        """Human-readable descriptions of every check that failed, in arrival order."""
        with self._cond:
            return list(self._problems)

    @property
    def connected(self) -> bool:
        return self._connected

    def latency_ms(self, device: str | None = None) -> dict[str, float]:
        with self._cond:
            tallies = [self._devices[device]] if device else list(self._devices.values())
            values = [v for t in tallies for v in t.latencies_ms]
        return {"p50": _percentile(values, 0.50), "p99": _percentile(values, 0.99)}

    def summary(self) -> dict[str, Any]:
        with self._cond:
            return {name: t.summary() for name, t in self._devices.items()}

    def wait_until(
        self, predicate: Callable[[Observer], bool], timeout: float, what: str = "condition"
    ) -> None:
        """Wait for predicate(observer) to hold; TimeoutError with the current tallies if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ObserverError(
                        f"observer: timed out after {timeout} s waiting for {what}; "
                        f"connected={self._connected} tallies={self.summary()} "
                        f"problems={self._problems[-5:]}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_for(self, device: str, count: int, timeout: float) -> DeviceTally:
        """Wait until counters 1..count of `device` have all been verified."""
        self.wait_until(
            lambda o: o.device(device).contiguous >= count,
            timeout,
            f"{device} counters 1..{count} verified",
        )
        return self.device(device)

    # paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            return
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        client.subscribe(
            [
                (f"{self.prefix}/+/events", 1),
                (f"{self.prefix}/+/alarms", 1),
                (f"{self.prefix}/+/status", 1),
                (f"{self.prefix}/gateway/+/alarms", 1),
                (f"{self.prefix}/gateway/+/status", 1),
            ]
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now_ms = time.time() * 1000
        parts = msg.topic.split("/")
        if len(parts) < 3:
            return
        device, kind = parts[-2], parts[-1]
        with self._cond:
            tally = self._devices.setdefault(device, DeviceTally(device))
            if kind == "events":
                self._on_event(tally, msg, now_ms)
            elif kind == "alarms":
                alarm = self._signed(tally, msg)
                if alarm is not None:
                    tally.alarms += 1
                    tally.alarm_log.append(alarm.body)
            elif kind == "status":
                status = self._signed(tally, msg)
                if status is not None:
                    tally.status = status.body
            self._cond.notify_all()

    def _signed(self, tally: DeviceTally, msg: mqtt.MQTTMessage) -> SignedMessage | None:
        """The verified message, or None (counted as forged, with the failed check named).
        A retained status must not go back (Freshness); a redelivered one is no news."""
        payload = bytes(msg.payload)
        gateway = _claimed_gateway(payload)
        try:
            message = verify_message(msg.topic, payload, {gateway: [self._gateway_raw]})
            if msg.topic.endswith("/status") and not self._freshness.accept(message):
                return None
        except MessageError as exc:
            tally.forged += 1
            self._problems.append(f"{msg.topic}: {type(exc).__name__}: {exc}")
            return None
        return message

    def _problem(self, tally: DeviceTally, text: str) -> None:
        tally.invalid += 1
        self._problems.append(f"{tally.device}: {text}")

    def _on_event(self, tally: DeviceTally, msg: mqtt.MQTTMessage, now_ms: float) -> None:
        tally.published += 1
        if msg.dup:
            tally.redeliveries += 1
        try:
            raw = self._cose.decode(msg.payload, self._key)
        except Exception as exc:  # cwt raises several types; any failure means "not verified"
            self._problem(tally, f"COSE_Sign1 does not verify: {exc}")
            return
        try:
            payload = cbor2.loads(raw)
            event_bytes = payload["event"]
            counter = payload["counter"]
            event = cbor2.loads(event_bytes)
            received_ms = payload["received_ms"]
        except (cbor2.CBORDecodeError, ValueError, KeyError, TypeError) as exc:
            self._problem(tally, f"signed payload unreadable: {exc!r}")
            return
        if payload.get("device") != tally.device or event.get(_EV_COUNTER) != counter:
            self._problem(
                tally,
                f"payload names {payload.get('device')}/{counter}, "
                f"topic/event say {tally.device}/{event.get(_EV_COUNTER)}",
            )
            return
        props = getattr(msg, "properties", None)
        user = dict(getattr(props, "UserProperty", []) or [])
        if user and (user.get("device") != tally.device or user.get("counter") != str(counter)):
            self._problem(tally, f"user properties {user} disagree with payload {counter}")
            return
        known = tally.events.get(counter)
        if known is not None:
            if known == event_bytes:
                tally.duplicates += 1
            else:
                tally.conflicts += 1
                self._problems.append(f"{tally.device}: counter {counter} with different bytes")
            return
        seal_key = self._seal_keys.get(tally.device)
        if seal_key is not None and not seal_signature_ok(seal_key, event):
            self._problems.append(f"{tally.device}: counter {counter}: seal signature fails")
            return
        prev = tally.events.get(counter - 1)
        expected_prev = (
            _GENESIS
            if counter == 1
            else (hashlib.sha256(prev).digest() if prev is not None else None)
        )
        if expected_prev is not None and event.get(_EV_PREV) != expected_prev:
            tally.chain_breaks += 1
            self._problems.append(f"{tally.device}: counter {counter} prev-hash breaks the chain")
        following = tally.events.get(counter + 1)
        if (
            following is not None
            and cbor2.loads(following).get(_EV_PREV) != hashlib.sha256(event_bytes).digest()
        ):
            tally.chain_breaks += 1
            self._problems.append(f"{tally.device}: counter {counter + 1} breaks the chain")
        tally.events[counter] = event_bytes
        tally.arrivals[counter] = now_ms
        tally.latencies_ms.append(max(0.0, now_ms - received_ms))
        tally.verified += 1
        while tally.contiguous + 1 in tally.events:
            tally.contiguous += 1
