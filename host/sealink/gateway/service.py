"""The gateway service: ports → sessions → group commit → outbox → MQTT.

    async with Gateway(config) as gateway:
        await gateway.wait_closed()          # or gateway.attach(transport) for extra links

One task per port (reconnecting), one session per link, one group committer, one poll of the
ledger for what other processes (the CLI) changed: pending commands, operator actions on
devices (release, adopt, hold) and newly registered devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from sealproto import timers

from sealink.config import Config, PortConfig
from sealink.crypto import GatewayKey, LinkKeyStore, countersign_payload
from sealink.crypto.ackkey import AckKey, open_ack_key
from sealink.errors import KeyFileError, LedgerError, TransportError, TransportUnavailableError
from sealink.gateway.actions import (
    Alarm,
    CommandDone,
    Displace,
    Reject,
    SessionOpen,
    Status,
    Store,
)
from sealink.gateway.approvals import ApprovalDesk
from sealink.gateway.checkpoints import Checkpoints
from sealink.gateway.committer import GroupCommitter, OutboxEntry
from sealink.gateway.companion import companion_body
from sealink.gateway.fleetdesk import FleetDesk
from sealink.gateway.machine import LinkMachine
from sealink.gateway.metrics import GatewayMetrics, MetricsServer
from sealink.gateway.registry import DeviceRegistry
from sealink.gateway.session import Session, monotonic_ms
from sealink.gateway.watch import LedgerWatch
from sealink.gateway.witnesses import WitnessDesk
from sealink.ledger import EventRow, Ledger, OutboxRow, QuarantineRow, now_ms
from sealink.ledger.keyhistory import gateway_lock, service_lock
from sealink.mqtt.process import PublisherProcess
from sealink.mqtt.signed import GatewayStatus, MessageSigner
from sealink.mqtt.takeover import Incident
from sealink.topics import Topics
from sealink.transport import Transport, open_transport, port_device, release_stacks

__all__ = ["Gateway"]

log = logging.getLogger("sealink.gateway")

T = TypeVar("T")

_PORT_RETRY_MIN_S = 0.2
_PORT_RETRY_MAX_S = 5.0
# How often the liveness watch looks at the sessions, at most (a quarter of its limit if less).
_LIVENESS_TICK_MS = 5000


@dataclasses.dataclass
class _Port:
    """A configured port's task, and whether its link is up (for the service's status)."""

    task: asyncio.Task[None] | None = None
    tried: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # opened or failed
    open: bool = False


class Gateway:
    def __init__(self, config: Config, *, key: GatewayKey | None = None) -> None:
        self.config = config
        self.key = key or GatewayKey.load(config.key_file)
        self.link_keys = LinkKeyStore(config.link_keys)
        # A key in a TPM stays loaded there while the gateway runs: close() unloads it.
        self._keys = contextlib.ExitStack()
        self.ack_key = _ack_key(config, self._keys)
        self.gateway_id = config.gateway_id
        self.topics = Topics(config.mqtt.prefix, config.gateway_id)
        # Status and alarms (§11.4); their seq floor lives beside the ledger.
        self.signer = MessageSigner(
            self.key,
            config.gateway_id,
            floor_file=config.ledger_path.with_name(config.ledger_path.name + ".msgseq"),
        )
        self.registry = DeviceRegistry()
        self.sessions: set[Session] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sealink-ledger")
        self._ledger: Ledger | None = None
        self._publisher: PublisherProcess | None = None
        self._committer: GroupCommitter | None = None
        self._main: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        self._ports: dict[PortConfig, _Port] = {}
        self._status: dict[str, dict[str, Any]] = {}  # device: its last retained status body
        self._stopping = False
        self.checkpoints = Checkpoints(self)  # the transparency log's signed heads (SPEC §14)
        self.witnesses = WitnessDesk(self)  # proofs for witnesses, their cosignatures (§14.6)
        self.approvals = ApprovalDesk(self)  # the approval system's signed requests (§11.5)
        self.fleet = FleetDesk(self)  # the fleet registry: revoked seals (§11.6)
        self.metrics = GatewayMetrics(self)
        self._metrics_server: MetricsServer | None = None

    # lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        # One gateway per ledger; and held shared while the service runs, as `devices adopt`
        # holds it: `sealink keys rotate` and `ledger restore` take it exclusively.
        try:
            self._keys.enter_context(gateway_lock(self.config.ledger_path))
            self._keys.enter_context(service_lock(self.config.ledger_path, exclusive=False))
            self._ledger = ledger = await self.db(Ledger, self.config.ledger_path, self.link_keys)
            history = await self.db(self._key_history)
        except BaseException:
            await self.close()
            raise
        self._committer = GroupCommitter(
            ledger,
            self.db,
            self.registry,
            self.config.ledger,
            on_committed=self._committed,
            on_failing=self._ledger_failing,
            on_latency=self.metrics.committed,
        )
        self._watch = LedgerWatch(
            ledger,
            self.db,
            self.registry,
            self.sessions,
            self._committer,
            self.link_keys,
            on_loaded=self._loaded,
        )
        try:
            await self._watch.load()
        except BaseException:
            await self.close()  # an unusable key store: nothing started yet but the ledger
            raise
        first = await self.db(lambda: ledger.pending_outbox(0, 1))
        first_id = first[0].id if first else await self.db(ledger.max_outbox_id) + 1
        self._publisher = PublisherProcess(
            self.config.mqtt,
            self.config.client_id,
            self.gateway_id,
            load=lambda after, limit: self.db(ledger.pending_outbox, after, limit),
            mark=self._published,
            first_pending_id=first_id,
            status=GatewayStatus(
                self.signer, self.topics.gateway_status(), {"kid": self.key.kid.hex()}
            ),
            public_raw=self.key.public_raw(),
            on_incident=self._mqtt_incident,
        )
        # Subscribers and witnesses learn of each new key from the chain (SPEC §14.7).
        self._publisher.publish_now(
            self.topics.keys(), json.dumps(history, sort_keys=True).encode(), retain=True
        )
        if self.config.metrics.listen is not None:
            self._metrics_server = MetricsServer(self.metrics)
            try:
                await self._metrics_server.start(*self.config.metrics.listen)
            except BaseException:
                await self.close()
                raise
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
                    "link_keys": str(self.config.link_keys),
                    "devices": len(self.registry),
                }
            },
        )
        return self

    def _key_history(self) -> dict[str, Any]:
        """On the ledger's thread: the key history, refused unless the key file's key is its
        last (a rotation interrupted after its commit leaves the old key in the file)."""
        history = self.ledger.key_history
        current = history.current()
        if current is not None and current != self.key.public_raw():
            raise KeyFileError(
                f"{self.config.key_file} is kid {self.key.kid.hex()}, not the ledger's current "
                "key: finish the rotation with `sealink keys rotate`"
            )
        return history.document(self.gateway_id, self.key.public_raw())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, drain_timeout_s: float = 2.0) -> None:
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            await server.close()  # a stopping gateway is not healthy; and its ledger goes next
        main, self._main = self._main, None
        if main is not None and not main.done():
            self._stopping = True
            for session in list(self.sessions):
                if session.device is not None:
                    self._publish_status(
                        session.device,
                        session.port,
                        {"online": False, "offline_reason": "gateway_stopped"},
                    )
            await self.approvals.close()  # its summary of refusals, before the drain sends it
            await self._drain(drain_timeout_s)
            await self.checkpoints.make()  # the last one, published while the broker link lives
        if main is not None:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            # The ports' links are closed by now; their BLE controllers are let go of too.
            await release_stacks()
        # Whatever was accepted but not yet committed is committed now (never acked: the
        # devices resend it anyway, and it is deduplicated).
        if self._ledger is not None:
            if self._committer is not None and len(self._committer):
                with contextlib.suppress(LedgerError):
                    await self._committer.commit_now()
            await self.db(self._ledger.close)
            self._ledger = None
        self._executor.shutdown(wait=True)
        self._keys.close()

    async def _drain(self, timeout_s: float) -> None:
        """Give what is committed a moment to reach the broker before stopping (what does
        not make it stays in the outbox for the next start)."""
        publisher, committer = self._publisher, self._committer
        if publisher is None or committer is None:
            return
        if not (publisher.connected or publisher.starting):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and (
            len(committer) or publisher.inflight or publisher.buffered or publisher.backlog
        ):
            await asyncio.sleep(0.01)

    async def wait_closed(self) -> None:
        if self._main is not None:
            await self._main

    async def _run(self) -> None:
        assert self._publisher is not None and self._committer is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._committer.run(), name="committer")
            tg.create_task(self._publisher.run(), name="publisher")
            tg.create_task(self._watch.run(), name="ledger-watch")
            tg.create_task(self.checkpoints.run(), name="checkpoints")
            tg.create_task(self.witnesses.run(), name="witnesses")
            tg.create_task(self.approvals.run(), name="approvals")
            tg.create_task(self.fleet.run(), name="fleet-registry")
            tg.create_task(self._watch_liveness(), name="liveness")
            for port in self.config.ports:
                self._start_port(port)
            self._ready.set()

    @property
    def publisher(self) -> PublisherProcess:
        assert self._publisher is not None
        return self._publisher

    @property
    def committer(self) -> GroupCommitter:
        assert self._committer is not None
        return self._committer

    @property
    def ledger(self) -> Ledger:
        """The service's ledger connection: call its methods only through `db()`."""
        assert self._ledger is not None
        return self._ledger

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ledger call on the ledger's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ports and sessions ----------------------------------------------------------------------

    def attach(
        self, transport: Transport, *, connect: bool = True, device: str | None = None
    ) -> asyncio.Task[None]:
        """Serve one more device link (tests, benchmarks, hot-plugged ports); `device`: the
        only one it may carry."""
        assert self._tg is not None, "gateway not started"
        return self._tg.create_task(self._serve(transport, connect, device), name=transport.name)

    async def _serve(self, transport: Transport, connect: bool, device: str | None) -> None:
        if connect:
            await transport.connect()
        machine = LinkMachine(transport.name, self.registry, ack_key=self.ack_key, device=device)
        session = Session(self, transport, machine)
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
            served = session.device
            session.closed()
            state = self.registry.get(served) if served is not None else None
            # A stopping gateway has said why its seals go offline (close()).
            if state is not None and state.owner is None and not self._stopping:
                self._publish_status(
                    state.device, transport.name, {"online": False, "offline_reason": "link_closed"}
                )
            with contextlib.suppress(TransportError):
                await transport.close()

    # the configured ports: `sealink run` applies a reloaded config's (SIGHUP) ------------------

    def _start_port(self, port: PortConfig) -> None:
        assert self._tg is not None, "gateway not started"
        state = self._ports[port] = _Port()
        state.task = self._tg.create_task(self._serve_port(port, state), name=f"port:{port.url}")

    async def apply_ports(
        self, ports: tuple[PortConfig, ...]
    ) -> tuple[list[PortConfig], list[PortConfig]]:
        """Serve exactly `ports`; returns (added, removed). A port that is gone or whose
        settings changed is closed before any port opens (so a changed one is released first);
        a port whose settings are unchanged keeps its link and its session."""
        removed = [port for port in self._ports if port not in ports]
        added = [port for port in dict.fromkeys(ports) if port not in self._ports]
        tasks = {task for port in removed if (task := self._ports.pop(port).task) is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for port in added:
            self._start_port(port)
        self.config = dataclasses.replace(self.config, ports=ports)
        return added, removed

    async def ports_tried(self) -> None:
        """Until every configured port has been tried once: opened, or failed to open."""
        await asyncio.gather(*(state.tried.wait() for state in self._ports.values()))

    @property
    def ports_open(self) -> tuple[int, int]:
        """(ports whose link is up, ports configured)."""
        return sum(state.open for state in self._ports.values()), len(self._ports)

    @property
    def port_links(self) -> dict[str, bool]:
        """Each configured port's URL, and whether its link is up."""
        return {port.url: state.open for port, state in self._ports.items()}

    @property
    def metrics_address(self) -> str | None:
        """host:port of /metrics and /healthz, once bound; None when not configured."""
        return self._metrics_server.address if self._metrics_server is not None else None

    async def _serve_port(self, port: PortConfig, state: _Port) -> None:
        try:
            # One transport for the port's life, connected again for each link: a BLE port
            # remembers which seals it refused (SPEC §6).
            transport = open_transport(port.transport, port.url, baudrate=port.baudrate)
            device = port_device(port.transport, port.url)
        except TransportUnavailableError as exc:
            log.error("port unusable", extra={"fields": {"port": port.url, "why": str(exc)}})
            state.tried.set()
            return
        delay = _PORT_RETRY_MIN_S
        while True:
            try:
                await transport.connect()
            except Exception as exc:
                state.tried.set()
                fields = {"port": port.url, "why": str(exc), "retry_s": delay}
                if isinstance(exc, TransportError):
                    log.warning("port open failed", extra={"fields": fields})
                else:
                    # A transport's bug must not stop the other ports: logged whole, retried.
                    log.exception("port open failed", extra={"fields": fields})
                await asyncio.sleep(_jittered(delay))
                delay = min(delay * 2, _PORT_RETRY_MAX_S)
                continue
            delay = _PORT_RETRY_MIN_S
            state.open = True
            state.tried.set()
            try:
                await self._serve(transport, False, device)
            finally:
                state.open = False
            await asyncio.sleep(_jittered(_PORT_RETRY_MIN_S))

    def _session_of(self, device: str) -> Session | None:
        for session in self.sessions:
            if session.device == device:
                return session
        return None

    # what the sessions' machines decided (LinkHost) ------------------------------------------

    def store(self, port: str, action: Store) -> None:
        received = now_ms()
        cose = self.key.sign1(
            countersign_payload(
                action.device, action.counter, action.payload, received, self.gateway_id
            )
        )
        device, counter = action.device, action.counter
        outbox: list[OutboxEntry] = [(self.topics.events(device), cose, device, counter)]
        if self.config.mqtt.json_companion:
            # Through the outbox right behind its event: never lost, never ahead of the evidence.
            body = companion_body(device, self.gateway_id, action.payload, cose, received)
            outbox.append((self.topics.events_json(device), body, device, counter))
        self.committer.submit(
            event=EventRow(device, counter, action.payload, action.digest, cose, received),
            outbox=outbox,
        )
        self.metrics.stored(device)

    def reject(self, port: str, action: Reject) -> None:
        committer = self.committer
        committer.count_rejection(port, action.device, action.reason)
        self.metrics.reject(action.reason)
        if not action.row and action.alarm is None:
            return
        fields = {"device": action.device, "port": port, "reason": action.reason}
        log.warning("rejected", extra={"fields": {**fields, "detail": action.detail}})
        row = None
        if action.row:
            row = QuarantineRow(
                action.device, port, action.reason, action.detail, action.data, now_ms()
            )
        outbox: list[OutboxEntry] | None = None
        if action.alarm is not None:
            payload = self._alarm_payload(
                action.device,
                source="gateway",
                reason=action.reason,
                detail=action.detail,
                port=port,
                **action.alarm,
            )
            outbox = [(self.topics.alarms(action.device), payload, action.device, None)]
        committer.submit(quarantine=row, outbox=outbox)

    def alarm(self, port: str, action: Alarm) -> None:
        if action.fields.get("source") in ("device", "record"):
            fields = dict(action.fields)  # SPEC §11.2: code, time_s, detail from the seal
        else:
            fields = {"source": "gateway", "reason": action.reason, "detail": action.detail}
            fields.update(action.fields)
            log.warning(
                "alarm", extra={"fields": {"device": action.device, "port": port, **fields}}
            )
        payload = self._alarm_payload(action.device, port=port, **fields)
        self.committer.submit(
            outbox=[(self.topics.alarms(action.device), payload, action.device, None)]
        )

    def status(self, port: str, action: Status) -> None:
        self._publish_status(action.device, port, action.fields)

    def session_open(self, session: Session, action: SessionOpen) -> None:
        fields = dataclasses.asdict(action)
        log.info("session open", extra={"fields": {**fields, "port": session.port}})
        status = {
            "online": True,
            "firmware": action.firmware,
            "boot_id": action.boot_id,
            "quarantined": self._quarantined(action.device),
        }
        self._publish_status(action.device, session.port, status)
        self._wake_commands(session)

    def displace(self, action: Displace) -> None:
        for session in self.sessions:
            if session.port == action.port and session.device == action.device:
                log.warning(
                    "device moved to another link",
                    extra={"fields": {"device": action.device, "from": action.port}},
                )
                session.displace()

    def command_done(self, action: CommandDone) -> None:
        log.info(
            "command result",
            extra={"fields": {"command": action.command_id, "state": action.state}},
        )
        self.committer.submit(command_state=(action.command_id, action.state, action.code))
        self.approvals.command_done(action)

    def _loaded(self, device: str) -> None:
        self._publish_quarantine([device])
        self.fleet.loaded(device)

    async def reload_device(self, device: str) -> None:
        """The ledger's view of `device` again, now (the watch would within a poll)."""
        await self._watch.load_device(device)

    async def stored_event(self, device: str, counter: int) -> bytes | None:
        return await self.db(self.ledger.event_bytes, device, counter)

    # after a commit --------------------------------------------------------------------------

    def _committed(self, devices: set[str], outbox: list[OutboxRow]) -> None:
        if devices:
            for session in self.sessions:
                if session.device in devices:
                    session.committed()
        self.metrics.offered(outbox)
        self.publisher.offer(outbox)
        if devices:
            self.approvals.committed(devices)
        # A quarantine the link machine decided is on disk now: say so at once.
        self._publish_quarantine(list(self._status))

    def _published(self, ids: list[int]) -> None:
        self.committer.mark_published(ids)
        self.metrics.published(ids)

    def _ledger_failing(self, error: str | None) -> None:
        # About the ledger itself, so it cannot travel through the ledger's outbox.
        reason, detail = (
            ("ledger_failure", error) if error is not None else ("ledger_recovered", "ok")
        )
        payload = self._alarm_payload(None, source="gateway", reason=reason, detail=detail)
        self.publisher.publish_now(self.topics.alarms(None), payload)

    def _mqtt_incident(self, incident: Incident) -> None:
        # Through the outbox: the broker link it is about may be down right now.
        payload = self._alarm_payload(
            None, source="gateway", reason=incident.reason, detail=incident.detail
        )
        self.committer.submit(outbox=[(self.topics.alarms(None), payload, None, None)])

    def wake_commands(self, device: str) -> None:
        """Commands were queued for `device`: its live session, if any, takes them now."""
        session = self._session_of(device)
        if session is not None:
            self._wake_commands(session)

    def _wake_commands(self, session: Session) -> None:
        device = session.device
        if device is None or self._tg is None:
            return

        async def fetch() -> None:
            session.offer_commands(await self.db(self.ledger.pending_commands, device))

        self._tg.create_task(fetch(), name=f"{session.port}:commands")

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
        session = self._session_of(device)
        if session is not None:
            self._wake_commands(session)
        return permit

    # payloads --------------------------------------------------------------------------------

    def _alarm_payload(self, device: str | None, **fields: Any) -> bytes:
        """Signed for the alarm topic of `device` (None: the gateway's own), SPEC §11.4."""
        body = {"device": device, "gateway": self.gateway_id, "time_ms": now_ms(), **fields}
        return self.signer.sign(self.topics.alarms(device), body)

    def _publish_status(self, device: str, port: str, fields: dict[str, Any]) -> None:
        """The seal's retained status: what HELLO and STATUS last said, kept across an offline
        spell (so a consumer sees the last battery and backlog of a silent seal), and which
        gateway says it (SPEC §11.2)."""
        topic = self.topics.status(device)
        body = {**self._status.get(device, {}), **fields}
        if body.get("online"):
            body.pop("offline_reason", None)
        body.update(device=device, gateway=self.gateway_id, port=port, time_ms=now_ms())
        self._status[device] = body
        self.publisher.publish_now(topic, self.signer.sign(topic, body), retain=True)

    def _quarantined(self, device: str) -> bool:
        state = self.registry.get(device)
        return state is not None and state.quarantine is not None

    def _publish_quarantine(self, devices: list[str]) -> None:
        """Every consumer learns of a quarantine set or released (SPEC §11.2) from the seal's
        retained status at once, not at its next STATUS: republished where it says otherwise
        (only seals that have a status: one never heard gets it at its HELLO)."""
        for device in devices:
            body = self._status.get(device)
            held = self._quarantined(device)
            if body is not None and body.get("quarantined") is not held:
                self._publish_status(device, str(body.get("port")), {"quarantined": held})

    async def _watch_liveness(self) -> None:
        """A seal in session but silent for `offline_after_status_intervals` STATUS intervals is
        published offline (its link may stay up: a serial port does when the seal loses
        power); heard again, online."""
        limit_ms = self.config.offline_after_status_intervals * timers.STATUS_INTERVAL_MS
        while True:
            await asyncio.sleep(min(limit_ms / 4, _LIVENESS_TICK_MS) / 1000)
            now = monotonic_ms()
            for session in list(self.sessions):
                device = session.device
                if device is None:
                    continue
                quiet_ms = now - session.heard_ms
                if quiet_ms >= limit_ms and not session.silent:
                    session.silent = True
                    fields = {"device": device, "port": session.port, "silent_ms": quiet_ms}
                    log.warning("seal silent", extra={"fields": fields})
                    last_seen_ms = now_ms() - quiet_ms
                    self._publish_status(
                        device,
                        session.port,
                        {"online": False, "offline_reason": "silent", "last_seen_ms": last_seen_ms},
                    )
                elif quiet_ms < limit_ms and session.silent:
                    session.silent = False
                    log.info("seal heard again", extra={"fields": {"device": device}})
                    self._publish_status(device, session.port, {"online": True})


def _jittered(delay_s: float) -> float:
    """Half to all of the delay: a hundred seals dropped at once (an adapter reset, the
    gateway's own restart) come back spread out, not in one storm of connects."""
    return delay_s * random.uniform(0.5, 1.0)


def _ack_key(config: Config, keys: contextlib.ExitStack) -> AckKey | None:
    path = config.ack_key_file
    if path is None or not path.exists():
        # The gateway still stores and acknowledges; its seals free nothing until it has a key
        # and they hold a certificate for it (SPEC §5.11): say so once, at start.
        log.warning(
            "no acknowledgement key %s: seals will keep every record and lock when their "
            "journal fills; run `sealink keys init` and enrol them",
            path,
        )
        return None
    return keys.enter_context(open_ack_key(path, config.ack_key_tpm))
