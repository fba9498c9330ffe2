"""The witness service: follow each configured gateway's retained checkpoint, ask the gateway
for the consistency proof it lacks (MQTT 5 request/response), and cosign what extends the
checkpoint it cosigned last (SPEC §14.6).

    async with Witness(config, key) as witness:   # or: await witness.run()
        ...

Checkpoints are handled one at a time, in arrival order: the decision (judge.py) needs the
state the previous one left. The state is on disk before the cosignature is published; a
checkpoint already cosigned, delivered again, has its cosignature published again (so a
crash between the two loses nothing). Refusals (split view, rollback, failing proof) are
alarmed on `<prefix>/witness/<name>/alarms`, logged, and their evidence kept in the state dir.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealink.crypto.signer import load_ed25519
from sealink.evidence import (
    Checkpoint,
    CheckpointError,
    add_signatures,
    cosign,
    open_note,
    split_note,
)
from sealink.evidence.judge import Cosign, NeedProof, Refuse, Seen, judge, judge_reply
from sealink.mqtt.client import Message, MqttClient
from sealink.topics import Topics, WitnessTopics
from sealink.witness.config import FollowedGateway, WitnessConfig
from sealink.witness.state import Cosigned, StateDir

__all__ = ["Witness", "load_witness_key"]

log = logging.getLogger("sealink.witness")

_PROOF_ATTEMPTS = 3
_MAX_NOTE_BYTES = 16 * 1024


def load_witness_key(path: Path) -> Ed25519PrivateKey:
    return load_ed25519(path, "witness key")


class Witness:
    def __init__(self, config: WitnessConfig, key: Ed25519PrivateKey) -> None:
        self.config = config
        self._key = key
        self.state = StateDir(config.state_dir)
        self.topics = WitnessTopics(config.mqtt.prefix, config.name)
        self._gateways = {
            Topics(config.mqtt.prefix, g.gateway_id).checkpoint(): g for g in config.gateways
        }
        self._responses = self.topics.proof_responses()[: -len("#")]
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._client: MqttClient | None = None
        # What happened, for whoever watches in-process (the tests): counts, and each refusal.
        self.proof_requests = 0
        self.cosigned = 0
        self.refusals: list[tuple[str, Refuse]] = []

    async def run(self) -> None:
        for gateway in self.config.gateways:
            self.state.load(gateway.origin)  # an unreadable state stops here, before anything
        async with MqttClient(
            self.config.mqtt,
            self.config.client_id,
            [*self._gateways, self.topics.proof_responses()],
            self._on_message,
        ) as client:
            self._client = client
            log.info(
                "witness started",
                extra={"fields": {"name": self.config.name, "gateways": len(self._gateways)}},
            )
            while True:
                message = await self._queue.get()
                try:
                    await self._checkpoint(self._gateways[message.topic], message.payload)
                except (OSError, CheckpointError) as exc:
                    log.error(
                        "checkpoint not handled",
                        extra={"fields": {"topic": message.topic, "error": str(exc)}},
                    )

    def _on_message(self, message: Message) -> None:
        if message.topic.startswith(self._responses):
            future = self._pending.pop(message.correlation or b"", None)
            if future is not None and not future.done():
                future.set_result(message.payload)
        elif message.topic in self._gateways:
            self._queue.put_nowait(message)

    # one checkpoint --------------------------------------------------------------------------

    def _last(self, gateway: FollowedGateway) -> Cosigned | None:
        last = self.state.load(gateway.origin)
        if last is None and gateway.initial is not None:
            return Cosigned(*gateway.initial)
        return last

    def _open(self, gateway: FollowedGateway, payload: bytes) -> Checkpoint | None:
        public = Ed25519PublicKey.from_public_bytes(gateway.public_raw)
        try:
            checkpoint = open_note(payload[:_MAX_NOTE_BYTES].decode(), public, gateway.public_raw)
        except (CheckpointError, UnicodeDecodeError) as exc:
            log.warning(
                "not a checkpoint of the gateway's key: ignored",
                extra={"fields": {"origin": gateway.origin, "why": str(exc)}},
            )
            return None
        if checkpoint.origin != gateway.origin:
            log.warning(
                "checkpoint of another origin: ignored",
                extra={"fields": {"origin": gateway.origin, "got": checkpoint.origin}},
            )
            return None
        return checkpoint

    async def _checkpoint(self, gateway: FollowedGateway, payload: bytes) -> None:
        if not payload:
            return
        checkpoint = self._open(gateway, payload)
        if checkpoint is None:
            return
        last = self._last(gateway)
        decision = judge(last, checkpoint)
        reply: bytes | None = None
        if isinstance(decision, NeedProof):
            assert last is not None
            reply = await self._request_proof(gateway, decision)
            decision = judge_reply(last, checkpoint, reply)
        if isinstance(decision, Seen):
            assert last is not None and last.note is not None and last.line is not None
            self._publish(gateway, add_signatures(last.note, [last.line]))
        elif isinstance(decision, Cosign):
            self._cosign(gateway, checkpoint)
        elif isinstance(decision, Refuse):
            self._refuse(gateway, last, checkpoint, decision, reply)

    def _cosign(self, gateway: FollowedGateway, checkpoint: Checkpoint) -> None:
        text = split_note(checkpoint.note).text
        cosignature = cosign(self._key, self.config.name, text, int(time.time()))
        cosigned = Cosigned(
            checkpoint.size, checkpoint.root, checkpoint.time_ms, checkpoint.note, cosignature.line
        )
        self.state.save(gateway.origin, cosigned)  # on disk first: see the module's docstring
        self._publish(gateway, add_signatures(checkpoint.note, [cosignature.line]))
        self.cosigned += 1
        log.info(
            "cosigned",
            extra={"fields": {"origin": gateway.origin, "size": checkpoint.size}},
        )

    def _publish(self, gateway: FollowedGateway, note: str) -> None:
        assert self._client is not None
        topic = Topics(self.config.mqtt.prefix, gateway.gateway_id).cosignature(self.config.name)
        self._client.publish(topic, note.encode(), retain=True)

    def _refuse(
        self,
        gateway: FollowedGateway,
        last: Cosigned | None,
        checkpoint: Checkpoint,
        refusal: Refuse,
        reply: bytes | None,
    ) -> None:
        self.refusals.append((gateway.origin, refusal))
        fields = {"origin": gateway.origin, "reason": refusal.reason, "size": checkpoint.size}
        if refusal.reason == "no_proof":  # the gateway or the broker away: the next one retries
            log.warning("not cosigned", extra={"fields": {**fields, "detail": refusal.detail}})
            return
        files = {"offered.note": checkpoint.note}
        if last is not None:
            files["cosigned.note" if last.note else "anchor.json"] = last.note or json.dumps(
                last.to_json(), sort_keys=True
            )
        if reply is not None:
            files["proof.json"] = reply.decode(errors="replace")
        folder = self.state.keep_evidence(gateway.origin, refusal.reason, files)
        log.error(
            "not cosigned: alarm",
            extra={"fields": {**fields, "detail": refusal.detail, "evidence": str(folder)}},
        )
        body = {
            "witness": self.config.name,
            "gateway": gateway.gateway_id,
            "time_ms": time.time_ns() // 1_000_000,
            "detail": refusal.detail,
            "evidence": str(folder),
            **fields,
        }
        assert self._client is not None
        self._client.publish(self.topics.alarms(), json.dumps(body, sort_keys=True).encode())

    async def _request_proof(self, gateway: FollowedGateway, need: NeedProof) -> bytes | None:
        assert self._client is not None
        request = json.dumps({"old_size": need.old_size, "new_size": need.new_size}).encode()
        topic = Topics(self.config.mqtt.prefix, gateway.gateway_id).proof_request()
        for attempt in range(_PROOF_ATTEMPTS):
            correlation = os.urandom(16)
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._pending[correlation] = future
            self.proof_requests += 1
            self._client.publish(
                topic,
                request,
                response_topic=self.topics.proof_response(gateway.gateway_id),
                correlation=correlation,
            )
            try:
                async with asyncio.timeout(self.config.proof_timeout_s * (attempt + 1)):
                    return await future
            except TimeoutError:
                log.warning(
                    "no proof reply",
                    extra={"fields": {"origin": gateway.origin, "attempt": attempt + 1}},
                )
            finally:
                self._pending.pop(correlation, None)
        return None
