"""The gateway's side of the witness protocol (SPEC §14.6).

It answers consistency-proof requests on `<prefix>/gateway/<id>/proof/request` (MQTT 5: the
reply goes to the request's response topic with its correlation data), from the ledger and
only between sizes it checkpointed, so a witness that was away for a week catches up with one
proof. It keeps the cosignatures that the configured witnesses ([[witnesses]]) publish on
`<prefix>/gateway/<id>/cosignature/<name>`, each verified against the witness's key and the
checkpoint this gateway stored; anything else on those topics is logged and alarmed, never
stored. Every witness may ask for proofs: whoever cosigns need not be known to the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from sealink.errors import LedgerError
from sealink.evidence import CheckpointError, Cosignature, split_note, verify_cosignature
from sealink.ledger import now_ms
from sealink.mqtt.client import Message, MqttClient

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["WitnessDesk", "consistency_reply"]

log = logging.getLogger("sealink.gateway")

_MAX_REQUEST_BYTES = 1024
_MAX_NOTE_BYTES = 16 * 1024
_MAX_SIZE = (1 << 63) - 1  # SQLite's INTEGER


class RequestError(Exception):
    """A proof request the gateway does not answer with a proof; the message is the reply's."""


def _request(payload: bytes) -> tuple[int, int]:
    if len(payload) > _MAX_REQUEST_BYTES:
        raise RequestError(f"a request is at most {_MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(payload)
    except ValueError:
        raise RequestError("not JSON") from None
    sizes = [body.get(k) if isinstance(body, dict) else None for k in ("old_size", "new_size")]
    checked = [n for n in sizes if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    if len(checked) != 2 or max(checked) > _MAX_SIZE:
        raise RequestError('expected {"old_size": N, "new_size": M}, integers 0 to 2^63 - 1')
    return checked[0], checked[1]


def consistency_reply(gateway: Gateway, payload: bytes) -> dict[str, Any]:
    """The reply to one request (on the ledger's thread): the proof as `sealink evidence
    consistency --json` prints it, or {"type": "error", "error": why}."""
    try:
        old_size, new_size = _request(payload)
        log_store = gateway.ledger.log
        with log_store.snapshot():
            new = log_store.checkpoint(new_size)
            if new is None:
                raise RequestError(f"no checkpoint of size {new_size}")
            if old_size > new_size:
                raise RequestError(f"old size {old_size} is beyond new size {new_size}")
            if old_size and log_store.checkpoint(old_size) is None:
                raise RequestError(f"no checkpoint of size {old_size}")
            return log_store.consistency_proof(old_size, new).to_json()
    except (RequestError, LedgerError) as exc:
        return {"type": "error", "error": str(exc)}


class WitnessDesk:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._keys = {w.name: w.public_raw for w in gateway.config.witnesses}
        self._cosignature_prefix = gateway.topics.cosignatures()[: -len("#")]
        self._client: MqttClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        gateway = self._gateway
        topics = gateway.topics
        async with MqttClient(
            gateway.config.mqtt,
            f"{gateway.config.client_id}-witness-desk",
            [topics.proof_request(), topics.cosignatures()],
            self._on_message,
        ) as client:
            self._client = client
            try:
                await asyncio.Future()  # until the service stops
            finally:
                self._client = None
                for task in self._tasks:
                    task.cancel()

    def _on_message(self, message: Message) -> None:
        if message.topic == self._gateway.topics.proof_request():
            work = self._answer(message)
        elif message.topic.startswith(self._cosignature_prefix):
            work = self._keep(message.topic[len(self._cosignature_prefix) :], message.payload)
        else:
            return
        task = asyncio.create_task(work, name=f"witness-desk:{message.topic}")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # One bad message must not stop the desk (nor the gateway): say so and go on.
            log.error(
                "witness message failed",
                exc_info=task.exception(),
                extra={"fields": {"task": task.get_name()}},
            )

    async def _answer(self, message: Message) -> None:
        if not message.response_topic:
            log.warning("proof request without a response topic: ignored")
            return
        gateway = self._gateway
        reply = await gateway.db(consistency_reply, gateway, message.payload)
        if reply["type"] == "error":
            log.info("proof request refused", extra={"fields": {"why": reply["error"]}})
        client = self._client
        if client is not None:
            client.publish(
                message.response_topic,
                json.dumps(reply, sort_keys=True).encode(),
                correlation=message.correlation,
            )

    async def _keep(self, witness: str, payload: bytes) -> None:
        key = self._keys.get(witness)
        if key is None:
            log.debug("cosignature of an unconfigured witness", extra={"fields": {"w": witness}})
            return
        if not payload:
            return  # a retained cosignature being cleared
        gateway = self._gateway
        try:
            note = payload[:_MAX_NOTE_BYTES].decode()
            text = split_note(note).text
            size_line = text.split("\n")[1] if text.count("\n") >= 3 else ""
            if not size_line.isdigit():
                raise CheckpointError("not a checkpoint")
            stored = await gateway.db(gateway.ledger.log.checkpoint, int(size_line))
            if stored is None or split_note(stored.note).text != text:
                raise CheckpointError(
                    f"cosigns a checkpoint of size {size_line} this gateway never signed"
                )
            cosignature = verify_cosignature(note, witness, key)
            if cosignature is None:
                raise CheckpointError("has no cosignature line of the witness's key")
        except (CheckpointError, UnicodeDecodeError) as exc:
            self._reject(witness, str(exc))
            return
        await self._store(stored.size, cosignature)

    async def _store(self, size: int, cosignature: Cosignature) -> None:
        gateway = self._gateway
        try:
            new = await gateway.db(gateway.ledger.log.add_cosignature, size, cosignature, now_ms())
        except LedgerError as exc:
            log.error("cosignature not stored", extra={"fields": {"error": str(exc)}})
            return
        if new:
            log.info(
                "checkpoint cosigned",
                extra={"fields": {"witness": cosignature.witness, "size": size}},
            )

    def _reject(self, witness: str, why: str) -> None:
        gateway = self._gateway
        fields = {"witness": witness, "reason": "cosignature_rejected", "detail": why}
        log.warning("cosignature rejected", extra={"fields": fields})
        body = {
            "device": None,
            "gateway": gateway.gateway_id,
            "time_ms": now_ms(),
            "source": "gateway",
            **fields,
        }
        topic = gateway.topics.alarms(None)
        gateway.publisher.publish_now(topic, gateway.signer.sign(topic, body))
