"""The gateway service: ports → sessions → group commit → outbox → MQTT.

    async with Gateway(config) as gateway:
        await gateway.wait_closed()          # or gateway.attach(transport) for extra links

One task per port (reconnecting), one session per connected device, one group committer that
turns everything the sessions accepted or rejected into one SQLite transaction, then resolves
the sessions' pending-ack futures and hands the new outbox rows to the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from sealink.config import Config, PortConfig
from sealink.crypto.signer import GatewayKey
from sealink.errors import LedgerError, TransportError, TransportUnavailableError
from sealink.ledger.sqlite import Batch, EventRow, Ledger, OutboxRow, QuarantineRow, now_ms
from sealink.mqtt.process import PublisherProcess
from sealink.topics import Topics
from sealink.transport.base import Transport, open_transport

__all__ = ["DeviceState", "Gateway"]

log = logging.getLogger("sealink.gateway")

T = TypeVar("T")

_MARK_FLUSH_S = 0.05
_MARK_FLUSH_ROWS = 256
_COMMIT_RETRY_MIN_S = 0.1
_COMMIT_RETRY_MAX_S = 5.0
_PORT_RETRY_MIN_S = 0.2
_PORT_RETRY_MAX_S = 5.0


@dataclass
class DeviceState:
    """What the gateway knows about one registered device, shared by its successive sessions."""

    device: str
    key: bytes
    stored: int
    stored_hash: bytes
    accepted: int = 0
    last_hash: bytes = b""
    # counter -> resolved once the group commit holding that event is on disk
    pending: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    pending_bytes: dict[int, bytes] = field(default_factory=dict)
    session: Any = None
    command_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.accepted = self.stored
        self.last_hash = self.stored_hash


class Gateway:
    def __init__(self, config: Config, *, key: GatewayKey | None = None) -> None:
        self.config = config
        self.key = key or GatewayKey.load(config.key_file)
        self.prefix = config.mqtt.prefix
        self.gateway_id = config.gateway_id
        self.topics = Topics(config.mqtt.prefix, config.gateway_id)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sealink-ledger")
        self._ledger: Ledger | None = None
        self._publisher: PublisherProcess | None = None
        self._devices: dict[str, DeviceState] = {}
        self._device_locks: dict[str, asyncio.Lock] = {}
        self._batch = Batch()
        # resolved once the current batch is on disk; shared by everything in the batch
        self._batch_done: asyncio.Future[None] | None = None
        self._commit_wake = asyncio.Event()
        self._mark_timer: asyncio.TimerHandle | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._ledger_failing = False
        self.sessions: set[Any] = set()
        self.commits = 0
        self.events_stored = 0
        self.quarantined = 0

    # lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        self._ledger = await self.db(Ledger, self.config.ledger_path)
        ledger = self._ledger
        first = await self.db(lambda: ledger.pending_outbox(0, 1))
        first_id = first[0].id if first else await self.db(ledger.max_outbox_id) + 1
        self._publisher = PublisherProcess(
            self.config.mqtt,
            self.config.client_id,
            self.gateway_id,
            load=lambda after, limit: self.db(ledger.pending_outbox, after, limit),
            mark=self._mark_published,
            first_pending_id=first_id,
            gateway_info={"kid": self.key.kid.hex()},
        )
        self._main = asyncio.create_task(self._run(), name="sealink-gateway")
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._main, ready}, return_when=asyncio.FIRST_COMPLETED)
        if self._main.done():
            ready.cancel()
            self._main.result()
        log.info(
            "gateway started",
            extra={
                "fields": {
                    "gateway": self.gateway_id,
                    "kid": self.key.kid.hex(),
                    "ledger": str(self.config.ledger_path),
                }
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        main, self._main = self._main, None
        if main is not None and not main.done():
            await self._drain(drain_timeout_s)
        if main is not None:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        # Whatever was accepted but not yet committed is committed now (never acked: the
        # devices resend it anyway, and it is deduplicated).
        if self._ledger is not None:
            if len(self._batch):
                with contextlib.suppress(LedgerError):
                    await self.db(self._ledger.commit, self._batch)
            await self.db(self._ledger.close)
            self._ledger = None
        self._executor.shutdown(wait=True)

    async def _drain(self, timeout_s: float) -> None:
        """Give what is committed a moment to reach the broker before stopping (what does
        not make it stays in the outbox for the next start)."""
        publisher = self._publisher
        if publisher is None or not (publisher.connected or publisher.starting):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and (
            len(self._batch) or publisher.inflight or publisher.buffered or publisher.backlog
        ):
            await asyncio.sleep(0.01)

    async def wait_closed(self) -> None:
        if self._main is not None:
            await self._main

    async def _run(self) -> None:
        assert self._publisher is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._commit_loop(), name="committer")
            tg.create_task(self._publisher.run(), name="publisher")
            for port in self.config.ports:
                tg.create_task(self._serve_port(port), name=f"port:{port.url}")
            self._ready.set()

    @property
    def publisher(self) -> PublisherProcess:
        assert self._publisher is not None
        return self._publisher

    @property
    def ledger(self) -> Ledger:
        """The service's ledger connection: call its methods only through `db()`."""
        assert self._ledger is not None
        return self._ledger

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ledger call on the ledger's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ports and sessions ----------------------------------------------------------------------

    def attach(self, transport: Transport, *, connect: bool = True) -> asyncio.Task[None]:
        """Serve one more device link (tests, benchmarks, hot-plugged ports)."""
        assert self._tg is not None, "gateway not started"
        return self._tg.create_task(self._serve(transport, connect), name=transport.name)

    async def _serve(self, transport: Transport, connect: bool) -> None:
        from sealink.gateway.session import Session

        if connect:
            await transport.connect()
        session = Session(self, transport)
        self.sessions.add(session)
        try:
            await session.serve()
        except* TransportError as group:
            why = "; ".join(str(exc) for exc in group.exceptions)
            log.info("link closed", extra={"fields": {"port": transport.name, "why": why}})
        except* Exception:
            # A fault in one link must not stop the others: log it, drop the link (the port
            # task reopens it); nothing unacked is lost, the device resends.
            log.exception("session failed", extra={"fields": {"port": transport.name}})
        finally:
            self.sessions.discard(session)
            await session.closed()
            with contextlib.suppress(TransportError):
                await transport.close()

    async def _serve_port(self, port: PortConfig) -> None:
        delay = _PORT_RETRY_MIN_S
        while True:
            try:
                transport = open_transport(port.transport, port.url, baudrate=port.baudrate)
            except TransportUnavailableError as exc:
                log.error("port unusable", extra={"fields": {"port": port.url, "why": str(exc)}})
                return
            try:
                await transport.connect()
            except TransportError as exc:
                log.warning(
                    "port open failed",
                    extra={"fields": {"port": port.url, "why": str(exc), "retry_s": delay}},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _PORT_RETRY_MAX_S)
                continue
            delay = _PORT_RETRY_MIN_S
            await self._serve(transport, connect=False)
            await asyncio.sleep(_PORT_RETRY_MIN_S)

    async def device_state(self, device: str) -> DeviceState | None:
        state = self._devices.get(device)
        if state is not None:
            return state
        lock = self._device_locks.setdefault(device, asyncio.Lock())
        async with lock:
            state = self._devices.get(device)
            if state is None:
                ledger = self.ledger
                key = await self.db(ledger.device_key, device)
                if key is None:
                    return None
                last = await self.db(ledger.last_event, device)
                counter, digest = last if last else (0, bytes(32))
                state = DeviceState(device, key, counter, digest)
                self._devices[device] = state
        return state

    # the group commit ------------------------------------------------------------------------

    def submit(
        self,
        *,
        event: EventRow | None = None,
        outbox: list[tuple[str, bytes, str | None, int | None]] | None = None,
        quarantine: QuarantineRow | None = None,
        command_state: tuple[int, str, int | None] | None = None,
    ) -> asyncio.Future[None]:
        """Add rows to the next group commit; the future resolves once they are on disk. It is
        the whole batch's future (one per commit, not per event): await it through
        asyncio.shield() where the waiting task may be cancelled."""
        batch = self._batch
        if event is not None:
            batch.events.append(event)
        if outbox:
            batch.outbox.extend(outbox)
        if quarantine is not None:
            batch.quarantine.append(quarantine)
        if command_state is not None:
            batch.command_states.append(command_state)
        done = self._batch_done
        if done is None:
            done = self._batch_done = asyncio.get_running_loop().create_future()
        self._commit_wake.set()
        return done

    def _mark_published(self, ids: list[int]) -> None:
        self._batch.published.extend(ids)
        if len(self._batch.published) >= _MARK_FLUSH_ROWS:
            self._commit_wake.set()
        elif self._mark_timer is None:
            self._mark_timer = asyncio.get_running_loop().call_later(
                _MARK_FLUSH_S, self._flush_marks
            )

    def _flush_marks(self) -> None:
        self._mark_timer = None
        self._commit_wake.set()

    async def _commit_loop(self) -> None:
        linger_s = self.config.ledger.group_commit_ms / 1000
        max_rows = self.config.ledger.group_commit_rows
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            if linger_s and len(self._batch.events) < max_rows:
                await asyncio.sleep(linger_s)
            batch, done = self._batch, self._batch_done
            if not len(batch):
                continue
            self._batch, self._batch_done = Batch(), None
            outbox = await self._commit(batch)
            self.commits += 1
            self.events_stored += len(batch.events)
            self.quarantined += len(batch.quarantine)
            for row in batch.events:
                state = self._devices.get(row.device)
                if state is not None and row.counter > state.stored:
                    state.stored = row.counter
                    state.stored_hash = row.hash
                    state.pending_bytes.pop(row.counter, None)
                    state.pending.pop(row.counter, None)
            if done is not None and not done.done():
                done.set_result(None)
            for session in self.sessions:
                session.committed()
            self.publisher.offer(outbox)

    async def _commit(self, batch: Batch) -> list[OutboxRow]:
        """Commit, retrying for as long as the disk refuses. Nothing is acked meanwhile."""
        delay = _COMMIT_RETRY_MIN_S
        while True:
            try:
                rows = await self.db(self._commit_rows, batch)
            except LedgerError as exc:
                log.error(
                    "ledger commit failed; nothing is acked until it succeeds",
                    extra={"fields": {"error": str(exc), "retry_s": delay}},
                )
                if not self._ledger_failing:
                    self._ledger_failing = True
                    self._gateway_alarm("ledger_failure", str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, _COMMIT_RETRY_MAX_S)
                continue
            if self._ledger_failing:
                self._ledger_failing = False
                self._gateway_alarm("ledger_recovered", "commits succeed again")
            return rows

    def _commit_rows(self, batch: Batch) -> list[OutboxRow]:
        ledger = self.ledger
        ledger.commit(batch)
        if not batch.outbox:
            return []
        # One writer (this thread): the new rows hold the highest ids, in insertion order.
        last = ledger.max_outbox_id()
        first = last - len(batch.outbox) + 1
        return [
            OutboxRow(first + i, topic, payload, device, counter)
            for i, (topic, payload, device, counter) in enumerate(batch.outbox)
        ]

    # alarms ----------------------------------------------------------------------------------

    def alarm_topic(self, device: str | None) -> str:
        return self.topics.alarms(device)

    def event_topic(self, device: str) -> str:
        return self.topics.events(device)

    def status_topic(self, device: str) -> str:
        return self.topics.status(device)

    def alarm_payload(self, device: str | None, **fields: Any) -> bytes:
        body = {"device": device, "gateway": self.gateway_id, "time_ms": now_ms(), **fields}
        return json.dumps(body, sort_keys=True).encode()

    def _gateway_alarm(self, reason: str, detail: str) -> None:
        # About the ledger itself, so it cannot travel through the ledger's outbox.
        payload = self.alarm_payload(None, source="gateway", reason=reason, detail=detail)
        self.publisher.publish_now(self.alarm_topic(None), payload)

    def quarantine(
        self,
        device: str | None,
        port: str,
        reason: str,
        detail: str,
        data: bytes | None,
        *,
        alarm: bool = True,
        **alarm_fields: Any,
    ) -> asyncio.Future[None]:
        """Record a rejected input and raise an alarm about it, in the same commit."""
        row = QuarantineRow(device, port, reason, detail, data, now_ms())
        log.warning(
            "quarantined",
            extra={"fields": {"device": device, "port": port, "reason": reason, "detail": detail}},
        )
        outbox: list[tuple[str, bytes, str | None, int | None]] | None = None
        if alarm:
            payload = self.alarm_payload(
                device, source="gateway", reason=reason, detail=detail, port=port, **alarm_fields
            )
            outbox = [(self.alarm_topic(device), payload, device, None)]
        return self.submit(quarantine=row, outbox=outbox)

    # operator actions (in-process; the CLI writes the same rows from its own process) ---------

    async def issue_permit(
        self, device: str, count: int, not_before_s: int, not_after_s: int, operator: int = 0
    ) -> int:
        ledger = self.ledger

        def queue() -> int:
            permit = ledger.next_permit_id(device)
            body = {
                "permit": permit,
                "count": count,
                "not_before_s": not_before_s,
                "not_after_s": not_after_s,
                "operator": operator,
            }
            ledger.queue_command(device, "permit", body)
            return permit

        permit = await self.db(queue)
        self.wake_commands(device)
        return permit

    def wake_commands(self, device: str) -> None:
        state = self._devices.get(device)
        if state is not None:
            state.command_wake.set()
