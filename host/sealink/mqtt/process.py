"""The MQTT publisher in its own process, so that MQTT never competes with ingest for a core.

    publisher = PublisherProcess(mqtt_config, client_id, gateway_id, load=..., mark=..., ...)
    await publisher.run()      # spawns `python -m sealink.mqtt.process FD`, runs until cancelled

The child runs the `Publisher` of _publisher.py unchanged (paho, QoS 1, reconnects, order,
bounded memory); this module only carries its calls over a socketpair. paho's per-message work
(PUBLISH packing, PUBACK parsing) was ~45% of the gateway's event loop: out of process it uses
the second core, and a broker outage cannot stall ingest.

Wire between the two: 4-byte big-endian length + pickle of a tuple (both ends are this module,
same interpreter). Parent -> child: ("init", ...), ("offer", seq, rows), ("now", topic, payload,
retain), ("rows", rows) answering a load, ("status", online, will) answering a connecting,
("close", stopped). Child -> parent: ("load", after, limit), ("connecting", n) before its n-th
connect, ("incident", reason, detail) (takeover.py), ("published", rows) — rows whose PUBACK
reason code was a success, the only thing that lets the parent mark them in the ledger — and
("state", connected, inflight, buffered, backlog, failed, last offer seq taken).
The gateway key stays in the parent: it signs the child's status messages (SPEC §11.4).
Rows travel as (id, topic, payload, device, counter) tuples.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sealink.config import MqttConfig
from sealink.errors import SealinkError
from sealink.ledger.sqlite import OutboxRow
from sealink.mqtt.signed import GatewayStatus
from sealink.mqtt.takeover import Incident

__all__ = ["PublisherProcess"]

log = logging.getLogger("sealink.publisher")

_HEADER = 4
_STATE_INTERVAL_S = 0.01
_CLOSE_TIMEOUT_S = 5.0
# How long a fresh child counts as still starting (process start + first CONNACK).
_STARTUP_GRACE_S = 3.0

RowTuple = tuple[int, str, bytes, str | None, int | None]


class PublisherProcessError(SealinkError):
    def __init__(self, why: str) -> None:
        super().__init__(f"mqtt publisher process: {why}")


def _row_tuples(rows: list[OutboxRow]) -> list[RowTuple]:
    return [(r.id, r.topic, r.payload, r.device, r.counter) for r in rows]


def _rows(tuples: list[RowTuple]) -> list[OutboxRow]:
    return [OutboxRow(*t) for t in tuples]


def _pack(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "big") + body


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at EOF."""
    try:
        head = await reader.readexactly(_HEADER)
        body = await reader.readexactly(int.from_bytes(head, "big"))
    except asyncio.IncompleteReadError:
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


def _child_env() -> dict[str, str]:
    """This process's environment, with this very sealink first on the child's path."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _log_settings() -> tuple[str | None, bool]:
    """How the parent logs (level, JSON?), or (None, False) if logging is not configured."""
    from sealink.logs import _JsonFormatter

    root = logging.getLogger("sealink")
    if not root.handlers:
        return None, False
    as_json = any(isinstance(h.formatter, _JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.getEffectiveLevel()).lower(), as_json


class PublisherProcess:
    """The gateway's view of the publisher: the API of `Publisher`, served by a child process.
    Use from the event loop."""

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        gateway_id: str,
        load: Callable[[int, int], Awaitable[list[OutboxRow]]],
        mark: Callable[[list[int]], None],
        first_pending_id: int,
        status: GatewayStatus,
        public_raw: bytes,
        on_incident: Callable[[Incident], None],
    ) -> None:
        self.config = config
        self._load = load
        self._mark = mark
        self._status = status
        self._connection = 0
        self._on_incident = on_incident
        self._init = (
            "init",
            config,
            client_id,
            gateway_id,
            first_pending_id,
            status.instance,
            public_raw,
            *_log_settings(),
        )
        self._writer: asyncio.StreamWriter | None = None
        # offers sent, and the last one the child had taken when it reported its state
        self._offers = 0
        self._offers_seen = 0
        self._buffered = 0
        self._early: list[bytes] = []  # sent before the child is up
        self._closed = False
        self._connect_event = asyncio.Event()
        self._started_at: float | None = None
        self._ever_connected = False
        self.connected = False
        self.inflight = 0
        self.backlog = True
        self.failed_pubacks = 0
        self.published = 0
        # Called with each outbox row once its PUBACK succeeded (benchmarks, the demo).
        self.on_published: Callable[[OutboxRow], None] | None = None

    def _send(self, message: tuple[Any, ...]) -> None:
        if self._closed:
            return  # after "close" the child takes nothing more (the broker link is going)
        data = _pack(message)
        if self._writer is None:
            self._early.append(data)
        else:
            self._writer.write(data)

    def offer(self, rows: list[OutboxRow]) -> None:
        """Rows just committed (see Publisher.offer)."""
        if rows:
            self._offers += 1
            self._send(("offer", self._offers, _row_tuples(rows)))

    @property
    def buffered(self) -> int:
        """Rows in the child's memory, counting offers it has not reported taking yet."""
        return self._buffered + (self._offers != self._offers_seen)

    def publish_now(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Best effort, not from the outbox (see Publisher.publish_now)."""
        self._send(("now", topic, payload, retain))

    @property
    def starting(self) -> bool:
        """Not connected yet, but the child is young enough that it may still connect."""
        if self._ever_connected:
            return False
        started = self._started_at
        return started is None or asyncio.get_running_loop().time() - started < _STARTUP_GRACE_S

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._connect_event.wait()

    async def run(self) -> None:
        """Start the child and serve it until cancelled; then let it say goodbye to the broker
        and hand over its last PUBACKs before it exits."""
        self._started_at = asyncio.get_running_loop().time()
        parent_sock, child_sock = socket.socketpair()
        with parent_sock:
            try:
                child = subprocess.Popen(
                    [sys.executable, "-m", "sealink.mqtt.process", str(child_sock.fileno())],
                    pass_fds=(child_sock.fileno(),),
                    stdin=subprocess.DEVNULL,
                    env=_child_env(),
                )
            finally:
                child_sock.close()
            try:
                reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
                self._writer = writer
                writer.write(_pack(self._init))
                for data in self._early:
                    writer.write(data)
                self._early.clear()
                await self._serve(reader)
                raise PublisherProcessError(f"exited unexpectedly (code {child.poll()})")
            except asyncio.CancelledError:
                if self._writer is not None:
                    stopped = self._status.stopped(self._connection)
                    self._writer.write(_pack(("close", stopped)))
                    self._closed = True
                    with contextlib.suppress(TimeoutError, OSError):
                        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                            await self._serve(reader)
                raise
            finally:
                self._writer = None
                self._closed = True  # nothing may pile up for a child that is gone
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(child.wait), _CLOSE_TIMEOUT_S)
                if child.poll() is None:
                    child.kill()
                    await asyncio.to_thread(child.wait)
                self.connected = False
                self._connect_event.clear()

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        """Handle the child's messages until it closes the socket."""
        while (message := await _receive(reader)) is not None:
            kind = message[0]
            if kind == "published":
                rows = message[1]
                self.published += len(rows)
                self._mark([r[0] for r in rows])
                callback = self.on_published
                if callback is not None:
                    for row in _rows(rows):
                        callback(row)
            elif kind == "state":
                up, self.inflight, self._buffered, self.backlog, self.failed_pubacks = message[1:6]
                self._offers_seen = message[6]
                if up != self.connected:
                    self.connected = up
                    if up:
                        self._ever_connected = True
                        self._connect_event.set()
                    else:
                        self._connect_event.clear()
            elif kind == "load":
                rows = await self._load(message[1], message[2])
                self._send(("rows", _row_tuples(rows)))
            elif kind == "connecting":
                self._connection = message[1]
                self._send(("status", *self._status.connecting(self._connection)))
            elif kind == "incident":
                self._on_incident(Incident(message[1], message[2]))


# the child -----------------------------------------------------------------------------------


async def _child(fd: int) -> None:
    from sealink.logs import configure_logging
    from sealink.mqtt.publisher import OwnStatus, Publisher

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    init = await _receive(reader)
    if init is None:
        return
    _, config, client_id, gateway_id, first_pending_id, instance, public_raw, level, as_json = init
    if level is not None:
        configure_logging(level, as_json)
    loop = asyncio.get_running_loop()
    loads: asyncio.Queue[list[OutboxRow]] = asyncio.Queue()
    statuses: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    published: list[RowTuple] = []
    offers_seen = 0

    async def load(after: int, limit: int) -> list[OutboxRow]:
        writer.write(_pack(("load", after, limit)))
        return await loads.get()

    async def connecting(n: int) -> tuple[bytes, bytes]:
        writer.write(_pack(("connecting", n)))
        return await statuses.get()

    def on_incident(incident: Incident) -> None:
        writer.write(_pack(("incident", incident.reason, incident.detail)))

    def flush_published() -> None:
        if published:
            writer.write(_pack(("published", published[:])))
            published.clear()

    def on_published(row: OutboxRow) -> None:
        if not published:
            # One message per event-loop pass, however many PUBACKs that pass read.
            loop.call_soon(flush_published)
        published.append((row.id, row.topic, row.payload, row.device, row.counter))

    publisher = Publisher(
        config,
        client_id,
        gateway_id,
        load=load,
        mark=lambda ids: None,  # the parent marks, from the "published" messages
        first_pending_id=first_pending_id,
        own=OwnStatus(instance, public_raw, connecting, on_incident),
    )
    publisher.on_published = on_published

    def state() -> tuple[Any, ...]:
        return (
            "state",
            publisher.connected,
            publisher.inflight,
            publisher.buffered,
            publisher.backlog,
            publisher.failed_pubacks,
            offers_seen,
        )

    async def report_state() -> None:
        last: tuple[Any, ...] = ()
        while True:
            now = state()
            if now != last:
                writer.write(_pack(now))
                last = now
            await asyncio.sleep(_STATE_INTERVAL_S)

    running = asyncio.create_task(publisher.run(), name="publisher")
    reporter = asyncio.create_task(report_state(), name="publisher-state")
    try:
        while (message := await _receive(reader)) is not None:
            kind = message[0]
            if kind == "offer":
                offers_seen = message[1]
                publisher.offer(_rows(message[2]))
            elif kind == "now":
                publisher.publish_now(*message[1:])
            elif kind == "rows":
                loads.put_nowait(_rows(message[1]))
            elif kind == "status":
                statuses.put_nowait((message[1], message[2]))
            elif kind == "close":
                publisher.stopped_payload = message[1]
                break
            if running.done():
                break
    finally:
        reporter.cancel()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        flush_published()
        writer.write(_pack(state()))
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group, and systemd signals the whole cgroup: the
    # parent decides when this process stops (it says "close", or its socket end closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_child(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
