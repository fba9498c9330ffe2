"""`sealink fleet run`: records, alarms and checkpoints from MQTT into PostgreSQL.

Every instance joins one MQTT 5 shared subscription group, so the broker hands each event to
one of them. paho runs with manual acknowledgement: a PUBLISH is acknowledged (PUBACK) only
after the transaction holding what it carried committed (a batch's PUBACKs in one write,
`LeanSubscriber.ack_all`), so an instance killed at any instant
has acknowledged nothing it did not store, and the broker delivers the rest again. Each
instance keeps a persistent session under its own fixed client id (clean start off, a session
expiry): Mosquitto 2.0.11 keeps the messages in flight to a member that went away queued in
that member's session, not handed to another member (measured: README "Fleet ledger"), so a
killed instance must come back under the same id, or its in-flight messages wait for the
session to expire.

Checkpoints and key histories are retained, and retained messages never reach a shared
subscription (MQTT 5 §4.8.2): every instance subscribes to them directly; storing one is
idempotent. A key history (SPEC §14.7) is walked from the gateway's pinned key; the records
refused meanwhile for a key nobody had are taken again once their key is learned.

Threads: paho's network thread only queues what arrives (sealink.mqtt.pahofast.LeanSubscriber:
the ingest shares one GIL with the verification, and paho's generic receive path cost a
quarter of a record's time: tools/benches/bench_fleet.py); a verifier thread checks a batch
while the writer thread stores the one before in one transaction, then acknowledges it in
arrival order (batches are stored, and so acknowledged, in the order they arrived). A
consistency thread proves the stored checkpoints (_consistency.py): its proof requests wait on
the gateway, so they hold up neither the acknowledgements nor the storing of anything else.
Their replies come on `<prefix>/fleet/<instance>/proof/<gateway>` (QoS 0: a lost reply is a
request asked again) and go straight to the request waiting for them, never to the inbox.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sealink_verify import tlog
from sealink_verify.audit import seal_public_key
from sealink_verify.keyhistory import KeyHistory, KeyHistoryError, from_document
from sealink_verify.mqtt import MessageError, WrongGateway, verify_gap_message, verify_message
from sealink_verify.record import RecordError, RecordVerifier
from sealink_verify.tlog import NoteError

from sealink.fleet._approvers import mark_approver_published, unpublished_approvers
from sealink.fleet._config import FleetConfig
from sealink.fleet._consistency import ConsistencyWorker
from sealink.fleet._registry import Retained, mark_published, unpublished
from sealink.fleet._store import (
    Batch,
    GatewayAlarm,
    PermitResult,
    Rejection,
    SignedCheckpoint,
    Store,
)
from sealink.mqtt.connection import connect_properties, new_client, refusal
from sealink.mqtt.pahofast import LeanSubscriber
from sealink.topics import FleetTopics, Topics

__all__ = ["FleetService", "Inbound"]

log = logging.getLogger("sealink.fleet")

_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Inbound:
    mid: int
    qos: int
    topic: str
    payload: bytes


class FleetService:
    """One fleet instance. `start()`, then `stop()` (or `run_forever()` until a signal)."""

    def __init__(self, config: FleetConfig, store: Store) -> None:
        self.config = config
        self.store = store
        keys = store.pinned_keys()
        self.gateway_keys = keys
        self._histories: dict[str, KeyHistory] = {}
        # Each seal key as stored, beside the parsed one the verifier holds: a refresh parses
        # only what changed (a province's registry is 100,000 keys, refreshed every few s).
        self._seal_raw = store.seal_keys()
        self.verifier = RecordVerifier(
            keys, {d: seal_public_key(k) for d, k in self._seal_raw.items()}
        )
        # SimpleQueue (C): its put and get cost a twentieth of queue.Queue's, and both are run
        # holding the one GIL the verification needs (the ingest is bound by it: README).
        self._inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self.connected = threading.Event()
        self.stored = 0
        self._client = new_client(config.mqtt, config.instance, LeanSubscriber)
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish_raw = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        # Verified batches waiting for the store: two, so verification (CPU, holding the GIL)
        # overlaps the transaction of the batch before (I/O, psycopg releases the GIL).
        self._verified: queue.Queue[tuple[Batch, list[Inbound]] | None] = queue.Queue(2)
        self._verifier = threading.Thread(
            target=self._verify_loop, name="fleet-verify", daemon=True
        )
        self._writer = threading.Thread(target=self._write_loop, name="fleet-writer", daemon=True)
        self._responses = FleetTopics(config.prefix).proof_response(config.instance, "")
        self._pending: dict[bytes, Future[bytes]] = {}
        self._pending_lock = threading.Lock()
        self._checkpoints_stored = threading.Event()
        self.consistency = ConsistencyWorker(
            store, config.instance, self.request_proof, config.proof_retry_s
        )
        self._prover = threading.Thread(
            target=self._consistency_loop, name="fleet-consistency", daemon=True
        )

    def start(self) -> FleetService:
        props = connect_properties(self.config.mqtt)
        props.ReceiveMaximum = self.config.receive_maximum
        broker = self.config.mqtt
        self._client.connect_async(
            broker.host, broker.port, broker.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._verifier.start()
        self._writer.start()
        self._prover.start()
        return self

    def stop(self) -> None:
        """Finish the batch in hand (stored and acknowledged), then disconnect."""
        self._stopping.set()
        self._checkpoints_stored.set()
        self._verifier.join(timeout=30)
        self._writer.join(timeout=30)
        self._prover.join(timeout=30)
        self._client.disconnect()
        self._client.loop_stop()

    # paho's network thread ----------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("fleet: %s", refusal(reason))
            return
        share = f"$share/{self.config.group}/{self.config.prefix}"
        client.subscribe(
            [
                (f"{share}/+/events", 1),
                (f"{share}/+/alarms", 1),
                (f"{share}/+/gaps", 1),  # gap statements (SPEC §11.2, §11.6)
                (f"{share}/gateway/+/alarms", 1),
                (f"{share}/cmd/+/result/#", 1),  # a permit's document (SPEC §11.5)
                (f"{self.config.prefix}/gateway/+/checkpoint", 1),
                (f"{self.config.prefix}/gateway/+/keys", 1),
                (f"{self._responses}+", 0),
            ]
        )
        log.info("fleet: connected, session present: %s", flags.session_present)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        broker = self.config.mqtt
        failure = getattr(client, "failure", "") or "no answer"
        log.error("fleet: cannot connect to the broker at %s:%d: %s", broker.host, broker.port,
                  failure)  # fmt: skip

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()
        if not self._stopping.is_set():
            failure = getattr(client, "failure", "") or str(reason)
            log.error("fleet: connection to the broker lost (retrying): %s", failure)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("fleet: the broker refused subscriptions: %s", ", ".join(failed))
            return
        # Tests and operators wait for this line: from now on the broker queues for us.
        log.info("fleet: subscribed as %s in group %s", self.config.instance, self.config.group)
        self.connected.set()

    def _on_publish(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        if topic.startswith(self._responses):
            return  # a proof reply without its CorrelationData: no request is waiting for it
        self._inbox.put(Inbound(mid, qos, topic, payload))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """A PUBLISH with properties: a proof reply, or an event that came with some."""
        if msg.topic.startswith(self._responses):
            correlation = getattr(msg.properties, "CorrelationData", b"")
            with self._pending_lock:
                future = self._pending.pop(bytes(correlation), None)
            if future is not None:
                future.set_result(bytes(msg.payload))
            return
        self._inbox.put(Inbound(msg.mid, msg.qos, msg.topic, bytes(msg.payload)))

    # the consistency thread ------------------------------------------------------------------

    def request_proof(self, gateway: str, old_size: int, new_size: int) -> bytes | None:
        """Ask a gateway for a consistency proof (SPEC §14.6 "Proofs"); its reply, or None
        when it does not answer in time (away, or the broker is)."""
        correlation = os.urandom(16)
        future: Future[bytes] = Future()
        with self._pending_lock:
            self._pending[correlation] = future
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{self._responses}{gateway}"
        props.CorrelationData = correlation
        request = json.dumps({"old_size": old_size, "new_size": new_size}).encode()
        topic = Topics(self.config.prefix, gateway).proof_request()
        try:
            info = self._client.publish(topic, request, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            return future.result(timeout=self.config.proof_timeout_s)
        except FutureTimeout:
            return None
        finally:
            with self._pending_lock:
                self._pending.pop(correlation, None)

    def _consistency_loop(self) -> None:
        # Until subscribed, a reply could come before the broker routes it to us.
        while not self.connected.wait(0.5):
            if self._stopping.is_set():
                return
        while not self._stopping.is_set():
            try:
                busy = self.consistency.step()
            except psycopg.Error as exc:  # the database away: the rows wait, nothing lost
                log.error("fleet: consistency not checked: %s", exc)
                busy = False
            if not busy:
                # A new checkpoint wakes it; the timeout takes up the retries coming due.
                self._checkpoints_stored.wait(1.0)
                self._checkpoints_stored.clear()

    # the writer thread -----------------------------------------------------------------------

    def _next_batch(self) -> list[Inbound]:
        try:
            first = self._inbox.get(timeout=0.1)
        except queue.Empty:
            return []
        taken = [first]
        deadline = time.monotonic() + self.config.batch_ms / 1000
        while len(taken) < self.config.batch_max:
            remaining = deadline - time.monotonic()
            try:
                taken.append(self._inbox.get(timeout=max(remaining, 0)) if remaining > 0
                             else self._inbox.get_nowait())  # fmt: skip
            except queue.Empty:
                break
        return taken

    def _refresh_registry(self) -> None:
        try:
            keys = self.store.seal_keys(timeout_s=1.0)
        except psycopg.Error as exc:  # the writer's retries report the outage
            log.debug("fleet: registry not refreshed: %s", exc)
            return
        held, raw = self.verifier.seal_keys, self._seal_raw
        self.verifier.seal_keys = {
            d: held[d] if raw.get(d) == k and d in held else seal_public_key(k)
            for d, k in keys.items()
        }
        self._seal_raw = keys
        self._republish()

    def _republish(self) -> None:
        """Registry and approver messages a `devices revoke` or `approvers add|revoke`
        recorded while the broker was away (SPEC §11.6, §11.7): published retained now,
        marked once the broker acknowledged them."""
        try:
            seals = unpublished(self.store, self.config.prefix)
            issued = unpublished_approvers(self.store, self.config.prefix)
        except psycopg.Error as exc:
            log.debug("fleet: registry not republished: %s", exc)
            return
        pending: list[tuple[Retained, Callable[[], None]]] = [
            *((c, functools.partial(mark_published, self.store, c)) for c in seals),
            *((c, functools.partial(mark_approver_published, self.store, c)) for c in issued),
        ]
        for change, mark in pending:
            info = self._client.publish(change.topic, change.message, qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # not connected: the next refresh tries again
            info.wait_for_publish(1.0)
            if info.is_published():
                mark()
                log.info("fleet: %s published", change.topic)

    def _verify_loop(self) -> None:
        refreshed = time.monotonic()
        while not self._stopping.is_set() or not self._inbox.empty():
            # Seals imported into the registry while the instance runs.
            if time.monotonic() - refreshed > self.config.registry_refresh_s:
                self._refresh_registry()
                refreshed = time.monotonic()
            taken = self._next_batch()
            if not taken:
                continue
            batch = Batch()
            for item in taken:
                try:
                    self.classify(item.topic, item.payload, batch)
                except Exception as exc:  # a bug must not stop the fleet: keep the message
                    log.exception("fleet: %s: message not understood", item.topic)
                    batch.rejections.append(
                        Rejection(item.topic, "internal", repr(exc), item.payload)
                    )
            self._verified.put((batch, taken))
        self._verified.put(None)

    def _write_loop(self) -> None:
        while (work := self._verified.get()) is not None:
            batch, taken = work
            self._commit(batch)
            # Only now: what they carried is committed.
            self._client.ack_all(item.mid for item in taken if item.qos > 0)
            self.stored += len(batch.records)
            if batch.checkpoints:
                self._checkpoints_stored.set()

    def _commit(self, batch: Batch) -> None:
        """Write until it commits: a database outage delays messages, never drops them (they
        stay unacknowledged: the broker still holds them). A batch PostgreSQL refuses for
        what it holds (not for being unreachable) is written a message at a time, so one
        message it cannot take is kept as a rejection and does not hold up the rest."""
        for attempt in range(1_000_000):
            try:
                outcome = self.store.write(batch)
            except psycopg.OperationalError as exc:  # also the pool's timeout
                delay = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
                log.error("fleet: database write failed (retry in %.1f s): %s", delay, exc)
                time.sleep(delay)
                continue
            except psycopg.Error as exc:
                log.error("fleet: a batch was refused (%s): storing it a message at a time", exc)
                self._commit_singly(batch)
                return
            if outcome.forks or outcome.chain_breaks or outcome.rejected or outcome.gap_mismatches:
                log.error("fleet: alarms raised: %s", outcome)
            return

    def _commit_singly(self, batch: Batch) -> None:
        for record, cose in batch.records:
            single = Batch(records=[(record, cose)])
            try:
                self._commit_or_raise(single)
            except psycopg.Error as exc:
                # Kept with what PostgreSQL can hold of its names (a NUL it cannot).
                device = record.device.replace("\x00", "\\x00")
                topic = f"{self.config.prefix}/{device}/events"
                rejection = Rejection(topic, "unstorable", str(exc), cose, device)
                self._commit(Batch(rejections=[rejection]))
        rest = Batch(
            rejections=batch.rejections, alarms=batch.alarms, checkpoints=batch.checkpoints,
            permits=batch.permits, key_histories=batch.key_histories, resolved=batch.resolved,
            gap_statements=batch.gap_statements,
        )  # fmt: skip
        try:
            self._commit_or_raise(rest)
        except psycopg.Error as exc:
            log.error("fleet: alarms, checkpoints or key histories not stored: %s", exc)

    def _commit_or_raise(self, batch: Batch) -> None:
        """One write, retried while the database is unreachable; other errors raised."""
        for attempt in range(1_000_000):
            try:
                self.store.write(batch)
                return
            except psycopg.OperationalError as exc:
                time.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
                log.error("fleet: database write failed: %s", exc)

    def classify(self, topic: str, payload: bytes, batch: Batch) -> None:
        """Verify one message into the batch: a record, an alarm, a gap statement, a
        checkpoint, or a rejection."""
        levels = topic.split("/")
        kind = levels[-1]
        device = levels[-2] if len(levels) >= 2 else ""
        command = topic.removeprefix(f"{self.config.prefix}/").split("/")
        try:
            if len(command) >= 4 and command[0] == "cmd" and command[2] == "result":
                self._permit(topic, payload, command, batch)
            elif kind == "events":
                batch.records.append((self.verifier.open(device, payload), payload))
            elif kind == "alarms":
                batch.alarms.append(self._alarm(topic, payload, levels))
            elif kind == "gaps":
                gap = verify_gap_message(topic, payload, self.gateway_keys)
                batch.gap_statements.append((gap, payload))
            elif kind == "checkpoint":
                batch.checkpoints.append(self._checkpoint(device, payload))
            elif kind == "keys" and payload:
                self._key_history(device, payload, batch)
        except KeyHistoryError as exc:
            batch.rejections.append(Rejection(topic, "bad_key_history", str(exc), payload))
        except RecordError as exc:
            batch.rejections.append(Rejection(topic, exc.reason, exc.detail, payload, device))
        except MessageError as exc:
            batch.rejections.append(Rejection(topic, type(exc).__name__, str(exc), payload, device))
        except (NoteError, UnicodeDecodeError, KeyError) as exc:
            batch.rejections.append(Rejection(topic, "bad_checkpoint", str(exc), payload))

    def _alarm(self, topic: str, payload: bytes, levels: list[str]) -> GatewayAlarm:
        message = verify_message(topic, payload, self.gateway_keys)
        device = None if len(levels) >= 3 and levels[-3] == "gateway" else levels[-2]
        return GatewayAlarm(message.gateway, device, message.seq, message.time_ms, message.body)

    def _permit(self, topic: str, payload: bytes, command: list[str], batch: Batch) -> None:
        """A gateway's result for a permit request: which document the permit is for."""
        message = verify_message(topic, payload, self.gateway_keys)
        if message.gateway != command[1]:
            raise WrongGateway(f"gateway {message.gateway!r} signed for {command[1]!r}'s results")
        body = message.body
        if body.get("action") != "permit" or not isinstance(body.get("document_sha256"), str):
            return  # another action's result, or a permit's without a document: nothing to learn
        try:
            result = PermitResult(
                gateway=message.gateway,
                approver=command[3],
                device=str(body["device"]),
                permit=int(body["permit"]),
                document_sha256=str(body["document_sha256"]).lower(),
                state=str(body["state"]),
                requested_by=None
                if body.get("requested_by") is None
                else str(body["requested_by"]),
                count=None if body.get("count") is None else int(body["count"]),
                time_ms=message.time_ms,
            )
        except (KeyError, TypeError, ValueError) as exc:
            batch.rejections.append(Rejection(topic, "bad_permit_result", repr(exc), payload))
            return
        batch.permits.append(result)

    def _key_history(self, gateway: str, payload: bytes, batch: Batch) -> None:
        """Learn a gateway's later keys from its retained key history, walked from the pinned
        key (SPEC §14.7); then take again the records and gap statements refused for a key
        nobody had."""
        if gateway not in self.gateway_keys:
            raise KeyHistoryError(f"gateway {gateway!r} has no pinned key")
        history = from_document(self.gateway_keys[gateway][0], payload, gateway)
        self._histories[gateway] = history
        keys = list(
            dict.fromkeys([*self.gateway_keys[gateway], *(e.public for e in history.epochs)])
        )
        if keys == self.gateway_keys[gateway]:
            return
        self.gateway_keys[gateway] = keys
        self.verifier = RecordVerifier(self.gateway_keys, self.verifier.seal_keys)
        batch.key_histories[gateway] = keys
        log.info("fleet: %s's key history: %d keys", gateway, len(keys))
        for rejection_id, topic, held in self.store.unknown_key_rejections():
            retried = Batch()
            self.classify(topic, held, retried)
            if retried.records or retried.gap_statements:
                batch.records.extend(retried.records)
                batch.gap_statements.extend(retried.gap_statements)
                batch.resolved.append(rejection_id)

    def _checkpoint(self, gateway: str, payload: bytes) -> SignedCheckpoint:
        walked = self._histories.get(gateway)
        if walked is not None:  # the key valid for the checkpoint's size
            return _signed(gateway, walked.open_checkpoint(payload.decode()))
        error = NoteError(f"gateway {gateway!r} has no pinned key")
        # Until its retained history arrives (it follows at once): any key learned before.
        for key in self.gateway_keys.get(gateway, []):
            try:
                checkpoint = KeyHistory.one(key).open_checkpoint(payload.decode())
            except NoteError as exc:
                error = exc
                continue
            return _signed(gateway, checkpoint)
        raise error


def _signed(gateway: str, checkpoint: tlog.SignedCheckpoint) -> SignedCheckpoint:
    if checkpoint.time_ms is None:  # a rollback is judged on it (SPEC §14.6)
        raise NoteError("the checkpoint has no sealink-time-ms line (SPEC §14.2)")
    return SignedCheckpoint(
        gateway, checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.time_ms
    )
