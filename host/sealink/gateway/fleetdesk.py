"""The gateway's side of the fleet registry (SPEC §11.6): a seal the fleet revoked is
quarantined here, one it reinstated is released, whatever gateway it was stolen from.

Registry messages arrive retained on `<prefix>/fleet/registry/+` on the desk's own MQTT client
(with `[fleet] public_key` set; none: the desk does nothing). They are handled one at a time,
in arrival order. Each is verified (the fleet key's signature, the topic it was signed for,
the body's form), then judged against the ledger: its seq must be above the last one applied
for that seal (an older message put back is a rollback; the same one again, as the broker
redelivers a retained message at each connection, changes nothing and is not alarmed), and
its seal key must be the one this gateway holds (another is a key substitution). A refused
message changes nothing and raises a gateway alarm; an applied one is written in one ledger
transaction (floor, quarantine or release, audit row) and takes effect at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from sealink.errors import SealinkError
from sealink.gateway.actions import Alarm
from sealink.ledger.fleetreg import REVOKED_BY_FLEET
from sealink.mqtt.client import Message, MqttClient
from sealink.mqtt.registry import RegistryEntry, RegistryRefused, open_entry, registry_topic

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["FleetDesk"]

log = logging.getLogger("sealink.gateway")


class FleetDesk:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._work: asyncio.Queue[Message] = asyncio.Queue()
        self._client: MqttClient | None = None
        self._started = asyncio.Event()
        self.taken = 0  # registry messages applied: their seq is the seal's floor now
        self.applied = 0  # of those, the ones that quarantined or released a seal
        self.refused: list[RegistryRefused] = []

    @property
    def enabled(self) -> bool:
        return self._gateway.config.fleet.public_key is not None

    async def ready(self, timeout: float) -> None:
        """Until the desk's subscription is in place (the retained registry follows)."""
        async with asyncio.timeout(timeout):
            await self._started.wait()
            assert self._client is not None
            await self._client.wait_subscribed(timeout)

    async def run(self) -> None:
        if not self.enabled:
            return
        gateway = self._gateway
        topic = registry_topic(gateway.config.mqtt.prefix, "+")
        async with MqttClient(
            gateway.config.mqtt, f"{gateway.config.client_id}-fleet", [topic], self._work.put_nowait
        ) as client:
            self._client = client
            self._started.set()
            try:
                await self._worker()
            finally:
                self._client = None
                self._started.clear()

    async def _worker(self) -> None:
        while True:
            message = await self._work.get()
            try:
                await self._take(message)
            except RegistryRefused as exc:
                self._refuse(message.topic, exc)
            except SealinkError as exc:
                # The ledger failed (a full disk): nothing applied; the broker's retained copy
                # comes again at the next connection, and the ledger's own alarm tells why.
                log.error("fleet registry not applied", extra={"fields": {"error": str(exc)}})

    async def _take(self, message: Message) -> None:
        gateway = self._gateway
        key = gateway.config.fleet.public_key
        assert key is not None
        if not message.payload:
            return  # a retained message cleared: says nothing about the seal
        entry = open_entry(message.payload, message.topic, key, gateway.config.mqtt.prefix)
        floor = await gateway.db(gateway.ledger.fleet_floor, entry.device)
        if floor is not None and entry.seq <= floor[0]:
            if entry.seq == floor[0] and message.payload == floor[1]:
                return  # the retained message again (a reconnection): already applied
            raise RegistryRefused(
                "rollback", f"seq {entry.seq} of {entry.device} is not above {floor[0]}"
            )
        await self._check_key(entry)
        done = await gateway.db(
            gateway.ledger.apply_fleet_state,
            entry.device,
            entry.seq,
            entry.state,
            entry.reason,
            message.payload,
        )
        self.taken += 1
        await gateway.reload_device(entry.device)
        fields = {"device": entry.device, "state": entry.state, "seq": entry.seq, "done": done}
        log.warning("fleet registry applied", extra={"fields": fields})
        if done == "quarantined":
            self.applied += 1
            gateway.alarm("fleet", Alarm(entry.device, REVOKED_BY_FLEET, entry.reason,
                                         {"seq": entry.seq, "fleet": entry.fleet}))  # fmt: skip
        elif done == "released":
            self.applied += 1
            gateway.alarm("fleet", Alarm(entry.device, "reinstated_by_fleet", entry.reason,
                                         {"seq": entry.seq, "fleet": entry.fleet}))  # fmt: skip

    async def _check_key(self, entry: RegistryEntry) -> None:
        gateway = self._gateway
        record = await gateway.db(gateway.ledger.device_record, entry.device)
        held = record.seal_key if record is not None else None
        if held is not None and held != entry.seal_key:
            raise RegistryRefused(
                "key_substitution",
                f"the registry's seal key for {entry.device} is {entry.seal_key.hex()[:16]}..., "
                f"this gateway holds {held.hex()[:16]}...",
            )

    def _refuse(self, topic: str, exc: RegistryRefused) -> None:
        self.refused.append(exc)
        fields = {"topic": topic[:200], "refusal": exc.reason}
        log.warning("fleet registry refused", extra={"fields": {**fields, "detail": exc.detail}})
        # The gateway's own alarm topic: nothing in a refused message can be trusted, its
        # device included.
        self._gateway.alarm("fleet", Alarm(None, "fleet_registry_refused", exc.detail, fields))
