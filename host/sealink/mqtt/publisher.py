"""MQTT v5 publisher: drains the ledger's outbox in order, QoS 1, marks rows only on PUBACK.

The gateway runs it in a process of its own (process.py carries its calls), so this class
sees the gateway only through `load`, `mark`/`on_published` and `offer`.
paho-mqtt 2.x is driven from its event loop through its external-loop API (socket
readable -> loop_read, writable -> loop_write, a 1 s tick -> loop_misc), which is what aiomqtt
does internally, without that extra dependency. One thread means no lock contention between
paho's network thread and the publishing code and no wake-up per message: measured, it more than
doubles the events per second of the whole gateway on a 2-core machine. paho (`on_publish`,
or `pahofast.LeanClient.on_puback` on the common path) hands us each PUBACK's reason code,
which alone decides whether a row counts as published.
Only the blocking TCP (and TLS) connect runs in a worker thread; reconnects back off
exponentially. The client's TLS, login and session come from connection.py.
The gateway's own status is signed by the gateway's process (`OwnStatus.connecting` hands over
a fresh "online" and last will for each connection, SPEC §11.4); the publisher reads its own
status topic back and, with `takeover.TakeoverWatch`, names a client-id takeover or a second
gateway with its id, raises the alarm through `OwnStatus.on_incident` and backs off.

Memory is bounded whatever the outage: at most `inflight` messages sit in paho awaiting PUBACK
and at most `4 * inflight` rows wait in memory; the rest stay in SQLite and are loaded in id
order when the buffer runs dry. paho resends unacknowledged messages in order after a reconnect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import select
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from sealink.config import MqttConfig
from sealink.ledger.sqlite import OutboxRow
from sealink.mqtt.connection import connect_failure, connect_properties, refusal
from sealink.mqtt.pahofast import UserProperties, lean_client
from sealink.mqtt.signed import open_own
from sealink.mqtt.takeover import Incident, TakeoverWatch
from sealink.topics import Topics

__all__ = ["OwnStatus", "Publisher"]

log = logging.getLogger("sealink.publisher")

# A refused row is tried again after 1 s, then ever less often, up to once a minute per topic:
# a broker may close the connection after each refusal (Mosquitto 2.0 does, after an ACL's).
_RETRY_FAILED_S = 1.0
_RETRY_FAILED_MAX_S = 60.0
# A broker that refuses every PUBACK (an ACL) would otherwise log each row at each retry.
_REFUSAL_LOG_INTERVAL_S = 60.0
# At shutdown, how long the "stopped" status may wait for its PUBACK before the DISCONNECT.
_SHUTDOWN_READ_S = 1.0
# Non-retained best-effort messages kept while disconnected, at most (the newest win).
_HELD_NOW = 64


@dataclass(frozen=True)
class OwnStatus:
    """What the publisher needs from the gateway's process for its own status topic."""

    instance: str  # this run's, in every status the gateway signs
    public_raw: bytes  # the gateway key: tells its own statuses from others'
    connecting: Callable[[int], Awaitable[tuple[bytes, bytes]]]  # n -> (online, will)
    on_incident: Callable[[Incident], None]


class Publisher:
    """Owns the gateway's MQTT client. Use from the event loop; paho's thread calls back."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        gateway_id: str,
        load: Callable[[int, int], Awaitable[list[OutboxRow]]],
        mark: Callable[[list[int]], None],
        first_pending_id: int,
        own: OwnStatus,
    ) -> None:
        self.config = config
        self.prefix = config.prefix
        self.gateway_id = gateway_id
        self._load = load
        self._mark = mark
        self._buffer_max = config.inflight * 4
        self._buffer: collections.deque[OutboxRow] = collections.deque()
        self._retry: collections.deque[OutboxRow] = collections.deque()
        self._expect = first_pending_id
        self._backlog = True
        self._inflight: dict[int, OutboxRow] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own = own
        self._online = b""  # this connection's signed "online" status
        self._reading_back = False
        self.stopped_payload: bytes | None = None  # signed "stopped", sent at shutdown
        self._connections = 0
        self._first_seq: int | None = None
        self._identity = TakeoverWatch(
            client_id,
            own.instance,
            config.reconnect_min_s,
            config.reconnect_max_s,
            resumes=config.session_expiry_s > 0,
        )
        self.connected = False
        # Called with each outbox row once its PUBACK succeeded (benchmarks, the demo).
        self.on_published: Callable[[OutboxRow], None] | None = None
        self.published = 0
        self.failed_pubacks = 0
        self._client = lean_client(client_id, config, self._fast_puback)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connect_event = asyncio.Event()
        self._sock: Any = None
        self._writing = False
        self._connecting = False
        self._retained: dict[str, bytes] = {}
        # Non-retained messages made while disconnected (alarms about the ledger itself, which
        # cannot wait in its outbox): the newest _HELD_NOW, sent on connect.
        self._held_now: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=_HELD_NOW)
        self._closing = False
        self._lost = asyncio.Event()
        self._refusals_logged: dict[str, tuple[float, int]] = {}  # what -> (when, suppressed)
        self._retry_after_s: dict[str, float] = {}  # topic -> delay before its next retry
        self._others: dict[int, str] = {}  # mid -> topic of a publish not from the outbox
        self._refused_here = ""  # a refusal on the current connection, for its disconnect

    @property
    def gateway_status_topic(self) -> str:
        return Topics(self.prefix, self.gateway_id).gateway_status()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def backlog(self) -> bool:
        """Rows may still wait in the ledger (not yet loaded into memory)."""
        return self._backlog

    @property
    def buffered(self) -> int:
        return len(self._buffer) + len(self._retry)

    # lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect (retrying while the broker is down), keep the connection, drain forever."""
        self._loop = asyncio.get_running_loop()
        client = self._client
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        # Registered so that paho queues packets instead of writing each one at once;
        # _flush() writes them after a batch of publishes or a read.
        client.on_socket_register_write = self._ignore_socket
        client.on_socket_unregister_write = self._ignore_socket
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection(), name="mqtt-connection")
                tg.create_task(self._tick(), name="mqtt-tick")
                tg.create_task(self._drain(), name="mqtt-drain")
        finally:
            self._shutdown()

    async def _connection(self) -> None:
        props = connect_properties(self.config)
        first = True
        while True:
            self._lost.clear()
            await self._prepare_status()
            self._identity.attempt()
            self._connecting = True
            try:
                if first:
                    await asyncio.to_thread(
                        self._client.connect,
                        self.config.host,
                        self.config.port,
                        keepalive=self.config.keepalive_s,
                        clean_start=False,
                        properties=props,
                    )
                    first = False
                else:
                    await asyncio.to_thread(self._client.reconnect)
            except (OSError, ValueError) as exc:
                self._connecting = False
                delay = self._identity.next_delay()
                log.warning(
                    "mqtt connect failed",
                    extra={
                        "fields": {
                            "broker": f"{self.config.host}:{self.config.port}",
                            "why": self._client.failure or connect_failure(exc),
                            "retry_s": round(delay, 2),
                        }
                    },
                )
                await asyncio.sleep(delay)
                continue
            finally:
                self._connecting = False
            self._flush()
            await self._lost.wait()
            delay = self._identity.next_delay()
            if self._identity.backing_off:
                log.warning(
                    "mqtt reconnect backs off: the client id is in use elsewhere",
                    extra={"fields": {"retry_s": round(delay, 2)}},
                )
            await asyncio.sleep(delay)

    async def _prepare_status(self) -> None:
        """A fresh signed "online" and last will for the next connection (paho sends the will
        in every CONNECT it makes from now on)."""
        self._connections += 1
        online, will = await self._own.connecting(self._connections)
        if self._first_seq is None:
            fields = open_own(online, self._own.public_raw)
            self._first_seq = int(fields["seq"]) if fields is not None else 0
        self._online = online
        self._client.will_set(self.gateway_status_topic, will, qos=1, retain=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if not self._connecting:
                self._client.loop_misc()
                self._flush()

    def _ignore_socket(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        return None

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Called from the connect worker thread: hand the socket to the loop.
        self._call(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._loop.add_reader(sock, self._readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._call(self._unwatch, sock)

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None
            self._writing = False
            self._lost.set()

    def _readable(self) -> None:
        if self._connecting:
            return
        sock = self._sock
        self._client.loop_read()
        # TLS: bytes the TLS layer already decrypted never make the socket readable again.
        pending = getattr(sock, "pending", None)
        while pending is not None and not self._closed_by_paho(sock) and pending() > 0:
            self._client.loop_read()
        self._flush()

    def _flush(self) -> None:
        """Write what paho queued; wait for writability only when the socket is full."""
        client = self._client
        sock = self._sock
        if sock is None or self._connecting:
            return
        if client.want_write():
            client.loop_write()
        if self._closed_by_paho(sock):
            return  # just now (a TLS alert, a reset): _unwatch is on its way
        wants = client.want_write()
        if wants != self._writing and self._loop is not None:
            if wants:
                self._loop.add_writer(sock, self._flush)
            else:
                self._loop.remove_writer(sock)
            self._writing = wants

    def _closed_by_paho(self, sock: Any) -> bool:
        """paho closes its socket inside loop_read/loop_write; on_socket_close reaches the
        loop later."""
        return self._client.socket() is not sock

    def _shutdown(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            if self.connected and self.stopped_payload is not None:
                info = self._client.publish(
                    self.gateway_status_topic, self.stopped_payload, qos=1, retain=True
                )
                self._flush()
                self._read_until(info.is_published, _SHUTDOWN_READ_S)
        with contextlib.suppress(Exception):
            self._client.disconnect()
            self._flush()
        if self._sock is not None:
            self._unwatch(self._sock)

    def _read_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Read what the broker sends until `done()` or the timeout, then whatever is left: a
        socket closed with unread data sends a TCP reset, and Mosquitto then loses our
        DISCONNECT and publishes the will after "stopped"."""
        deadline = time.monotonic() + timeout_s
        while (sock := self._sock) is not None and not self._closed_by_paho(sock):
            remaining = 0.0 if done() else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                return
            self._client.loop_read()

    def offer(self, rows: list[OutboxRow]) -> None:
        """Rows just committed. Taken straight into memory when they follow what we hold;
        otherwise they stay in the ledger and are loaded in order later."""
        if not rows:
            return
        if (
            not self._backlog
            and rows[0].id == self._expect
            and len(self._buffer) + len(rows) <= self._buffer_max
        ):
            self._buffer.extend(rows)
            self._expect = rows[-1].id + 1
        else:
            self._backlog = True
        self._wake.set()

    def publish_now(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Best effort, not from the outbox: retained status, and alarms about the ledger
        itself (which cannot go through the ledger). While disconnected the latest retained
        message per topic (memory bounded by the number of devices) and the newest _HELD_NOW
        others are kept and sent on connect: a disk that fills as the gateway starts must
        still be reported once the broker answers."""
        if retain:
            self._retained[topic] = payload
        if self.connected and not self._connecting:
            self._publish_other(topic, payload, retain)
            self._flush()
        elif not retain:
            self._held_now.append((topic, payload))

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._connect_event.wait()

    # the drain loop --------------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            while self.connected and len(self._inflight) < self.config.inflight:
                if self._retry:
                    row = self._retry.popleft()
                elif self._buffer:
                    row = self._buffer.popleft()
                else:
                    break
                self._send(row)
            self._flush()
            if not self._buffer and self._backlog:
                await self._refill()
                if self._buffer:
                    continue
            self._wake.clear()
            await self._wake.wait()

    async def _refill(self) -> None:
        self._backlog = False
        rows = await self._load(self._expect - 1, self._buffer_max)
        rows = [r for r in rows if r.id >= self._expect]
        if rows:
            self._buffer.extend(rows)
            self._expect = rows[-1].id + 1
        if len(rows) >= self._buffer_max:
            self._backlog = True

    def _send(self, row: OutboxRow) -> None:
        props = None
        if row.device is not None:
            user = [("device", row.device)]
            if row.counter is not None:
                user.append(("counter", str(row.counter)))
            props = UserProperties(user)
        info = self._client.publish(row.topic, row.payload, qos=1, properties=props)
        # Kept by paho until PUBACKed, and resent in order after a reconnect.
        self._inflight[info.mid] = row

    # paho callbacks: from loop_read on the event loop, or from the connect thread ------------

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._client.failure = refusal(reason)  # the disconnect that follows logs it
            return
        # Read back once a connection: the retained status shows another gateway with this id
        # (takeover.py). Unsubscribed when our own "online" comes back, so that nothing of
        # ours lies unread in the socket when it closes: a close with unread data is a TCP
        # reset, and Mosquitto then drops our DISCONNECT and publishes the will after "stopped".
        # QoS 0: no PUBACK of ours in flight when a broker closes the connection on a refusal.
        self._reading_back = True
        client.subscribe(self.gateway_status_topic, qos=0)
        self._publish_other(self.gateway_status_topic, self._online, True)
        self._call(self._connected, True, "", bool(getattr(flags, "session_present", False)))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        server_reason = int(getattr(reason, "value", 0)) if from_server else None
        # A clean end of stream from the broker: no DISCONNECT, no socket error, not ours.
        by_broker = (
            not from_server
            and not self._client.failure
            and int(getattr(reason, "value", 0)) == 0x80
        )
        why = self._client.failure or str(reason)
        self._call(self._disconnected, why, server_reason, by_broker)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.gateway_status_topic:
            return
        if bytes(msg.payload) == self._online:
            if self._reading_back:
                self._reading_back = False
                client.unsubscribe(self.gateway_status_topic)
            return
        fields = open_own(bytes(msg.payload), self._own.public_raw)
        body: dict[str, Any] | None = None
        if (
            fields is not None
            and fields.get("topic") == msg.topic
            and fields.get("gateway") == self.gateway_id
            and int(fields.get("seq", 0)) > (self._first_seq or 0)
        ):
            try:
                decoded = json.loads(fields["body"])
            except (ValueError, TypeError):
                decoded = None
            body = decoded if isinstance(decoded, dict) else None
        self._incident(self._identity.own_status(fields, body))

    def _incident(self, incident: Incident | None) -> None:
        if incident is None:
            return
        log.error(
            "mqtt identity in use elsewhere",
            extra={
                "fields": {
                    "reason": incident.reason,
                    "detail": incident.detail,
                    "client_id": self._identity.client_id,
                }
            },
        )
        self._own.on_incident(incident)

    def _disconnected(self, why: str, server_reason: int | None, by_broker: bool) -> None:
        if self._connect_event.is_set() and not self._closing:
            by_broker = by_broker and not self._refused_here
            self._incident(self._identity.disconnected(time.monotonic(), server_reason, by_broker))
        self._connected(False, why)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._puback(mid, int(getattr(reason, "value", 0)), reason)

    def _fast_puback(self, mid: int, code: int) -> None:
        reason: Any = code
        if code >= 0x80:  # rare: the readable name for the log
            with contextlib.suppress(Exception):
                reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
        self._puback(mid, code, reason)

    def _connected(self, up: bool, why: str = "", session_present: bool = False) -> None:
        self.connected = up
        if up:
            self._incident(self._identity.connected(time.monotonic(), session_present))
            self._connect_event.set()
            self._wake.set()
            self._refused_here = ""
            for topic, payload in self._retained.items():
                self._publish_other(topic, payload, True)
            while self._held_now:
                self._publish_other(*self._held_now.popleft(), False)
            self._flush()
            log.info("mqtt connected", extra={"fields": {"inflight": len(self._inflight)}})
        elif self._connect_event.is_set():
            if self._refused_here:
                why = f"closed by the broker after it refused a publish ({self._refused_here})"
            self._connect_event.clear()
            level = logging.INFO if self._closing else logging.WARNING
            log.log(level, "mqtt disconnected", extra={"fields": {"reason": why}})
        elif not self._closing:  # lost before its CONNACK: refused, or the TLS handshake failed
            log.warning(
                "mqtt connect failed",
                extra={"fields": {"broker": f"{self.config.host}:{self.config.port}", "why": why}},
            )

    def _publish_other(self, topic: str, payload: bytes, retain: bool) -> None:
        """A QoS 1 publish that is not an outbox row (status, retained gateway messages)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        self._others[info.mid] = topic

    def _puback(self, mid: int, code: int, reason: Any) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            topic = self._others.pop(mid, None)
            if topic is not None and code >= 0x80:
                self._other_refused(topic, str(reason))
            return
        if code < 0x80:
            self.published += 1
            if self._retry_after_s:  # rare: a topic was refused before
                self._retry_after_s.pop(row.topic, None)
            self._mark([row.id])
            if self.on_published is not None:
                self.on_published(row)
        else:
            # The broker refused it (quota, not authorised...): keep the row, try again later.
            self.failed_pubacks += 1
            self._refused_here = str(reason)
            delay = min(
                self._retry_after_s.get(row.topic, _RETRY_FAILED_S / 2) * 2, _RETRY_FAILED_MAX_S
            )
            self._retry_after_s[row.topic] = delay
            self._log_refused(
                "puback refused, the row stays in the outbox",
                str(reason),
                {"topic": row.topic, "outbox_id": row.id, "retry_s": delay},
            )
            if self._loop is not None:
                self._loop.call_later(delay, self._requeue, row)
        self._wake.set()

    def _other_refused(self, topic: str, reason: str) -> None:
        # Not evidence (that is in the outbox): a retained message the broker refuses is not
        # sent again at each reconnect, where it would only be refused again.
        self._refused_here = reason
        dropped = self._retained.pop(topic, None) is not None
        self._log_refused("publish refused", reason, {"topic": topic, "retained_dropped": dropped})

    def _log_refused(self, message: str, reason: str, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        key = f"{message}: {reason}"
        last, suppressed = self._refusals_logged.get(key, (-_REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < _REFUSAL_LOG_INTERVAL_S:
            self._refusals_logged[key] = (last, suppressed + 1)
            return
        self._refusals_logged[key] = (now, 0)
        fields["reason"] = reason
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        log.warning(message, extra={"fields": fields})

    def _requeue(self, row: OutboxRow) -> None:
        self._retry.append(row)
        self._wake.set()
