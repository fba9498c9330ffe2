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
transaction (floor, placement, quarantine or release, audit rows) and takes effect at once.

A placement (the seal moved to a gateway by `sealink fleet devices move`) holds the seal on
every other gateway (`moved_by_fleet`), and on the one it names records what the fleet holds
of it beyond this ledger as a gap whose head its next event must chain to (`placed_by_fleet`).
A placement for a seal not registered here yet is taken when it is. The enrolment certificate
that may come with it (SPEC §5.11) is kept by the gateway it names, if it enrols this
gateway's acknowledgement key, and handed to the seal (ENROL after TIME, or at once in a
session already open).

The fleet's approver keys (SPEC §11.7, fleetapprovers.py) come on the same client and queue,
judged in the same order and refused with the same alarm.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from sealink.crypto.enrolment import Certificate
from sealink.errors import SealinkError
from sealink.gateway import fleetapprovers
from sealink.gateway.actions import Alarm
from sealink.ledger import DeviceRecord
from sealink.ledger.fleetreg import MOVED_BY_FLEET, REVOKED_BY_FLEET, Standing, placement_steps
from sealink.mqtt.client import Message, MqttClient
from sealink.mqtt.registry import (
    Placement,
    RegistryEntry,
    RegistryRefused,
    open_entry,
    registry_topic,
)

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["FleetDesk"]

log = logging.getLogger("sealink.gateway")


def _standing(entry: RegistryEntry, placement: Placement) -> Standing:
    return Standing(placement.gateway, placement.counter, placement.head, entry.seq)


class FleetDesk:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._work: asyncio.Queue[Message] = asyncio.Queue()
        self._client: MqttClient | None = None
        self._started = asyncio.Event()
        self.taken = 0  # registry messages applied: their seq is the seal's floor now
        self.applied = 0  # of those, the ones that quarantined or released a seal
        self.refused: list[RegistryRefused] = []
        # Approver messages taken (SPEC §11.7), by what each did ("same": applied already).
        self.approvers_taken: collections.Counter[str] = collections.Counter()
        # Placements for seals not registered here yet, taken again once they are.
        self._waiting: dict[str, Message] = {}

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
        prefix = gateway.config.mqtt.prefix
        topics = [registry_topic(prefix, "+"), fleetapprovers.topic_filter(prefix)]
        async with MqttClient(
            gateway.config.mqtt, f"{gateway.config.client_id}-fleet", topics, self._work.put_nowait
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
            gateway = self._gateway
            try:
                if fleetapprovers.is_approver_topic(gateway.config.mqtt.prefix, message.topic):
                    done = await fleetapprovers.take_approver(gateway, message)
                    self.approvers_taken[done] += 1
                else:
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
            if entry.seq != floor[0] or message.payload != floor[1]:
                raise RegistryRefused(
                    "rollback", f"seq {entry.seq} of {entry.device} is not above {floor[0]}"
                )
            # The retained message again (a reconnection): applied already, but its placement
            # may be left to take (taking it again changes nothing else).
            if not await self._placement_left(entry, message):
                return
        await self._check_key(entry)
        enrolment = self._enrolment_here(entry)
        placed = None
        if entry.placement is not None:
            standing = _standing(entry, entry.placement)
            topic = gateway.topics.gaps(entry.device)
            placed = (standing, gateway.gateway_id, gateway.key.sign1, topic)
        moved, done = await gateway.db(
            gateway.ledger.apply_fleet_state,
            entry.device,
            entry.seq,
            entry.state,
            entry.reason,
            message.payload,
            placed,
            enrolment,
        )
        self.taken += 1
        if moved == "unregistered":
            self._waiting[entry.device] = message
        else:
            self._waiting.pop(entry.device, None)
        await gateway.reload_device(entry.device)
        fields = {"device": entry.device, "state": entry.state, "seq": entry.seq, "done": done,
                  "moved": moved, "enrolment": enrolment.serial if enrolment else None}  # fmt: skip
        log.warning("fleet registry applied", extra={"fields": fields})
        self._alarm_placement(entry, moved)
        if done == "quarantined":
            self.applied += 1
            gateway.alarm("fleet", Alarm(entry.device, REVOKED_BY_FLEET, entry.reason,
                                         {"seq": entry.seq, "fleet": entry.fleet}))  # fmt: skip
        elif done == "released":
            self.applied += 1
            gateway.alarm("fleet", Alarm(entry.device, "reinstated_by_fleet", entry.reason,
                                         {"seq": entry.seq, "fleet": entry.fleet}))  # fmt: skip

    def loaded(self, device: str) -> None:
        """The ledger's view of a seal was (re)read, as after its registration here: a
        placement that found it unregistered is taken now."""
        message = self._waiting.pop(device, None)
        if message is not None:
            self._work.put_nowait(message)

    async def _placement_left(self, entry: RegistryEntry, message: Message) -> bool:
        """Whether an applied entry's placement has something left to do here, as when the
        seal was registered after it was applied and a restart forgot `_waiting`; a seal still
        not registered has it kept waiting again."""
        if entry.placement is None:
            return False
        gateway = self._gateway
        record = await gateway.db(gateway.ledger.device_record, entry.device)
        if record is None:
            self._waiting[entry.device] = message
            return False
        reason = record.quarantine.reason if record.quarantine is not None else None
        here = gateway.gateway_id
        steps = placement_steps(
            _standing(entry, entry.placement), here, reason, record.ahead_acked, record.stored
        )
        enrols = (
            entry.enrolment is not None
            and entry.placement.gateway == here
            and _held_serial(record) < entry.enrolment.serial
        )
        return steps.left or enrols

    def _enrolment_here(self, entry: RegistryEntry) -> Certificate | None:
        """The entry's certificate if this gateway is to hand it to the seal: the placement
        names this gateway, and the certificate must then enrol this gateway's own
        acknowledgement key (else the whole message is refused). Another gateway's is not
        kept: it is that gateway's to hand over, and this one holds the seal. The authority's
        signature is the seal's to check (its firmware holds the authority key; a gateway
        does not)."""
        cert, placement = entry.enrolment, entry.placement
        if cert is None or placement is None or placement.gateway != self._gateway.gateway_id:
            return None
        ack_key = self._gateway.ack_key
        if ack_key is None:
            raise RegistryRefused("invalid", "an enrolment for this gateway, which has no "
                                  "acknowledgement key ([gateway] ack_key_file)")  # fmt: skip
        if cert.gateway_key != ack_key.public:
            raise RegistryRefused(
                "invalid",
                f"the enrolment for this gateway enrols key {cert.gateway_key[:8].hex()}..., "
                f"not this gateway's ({ack_key.public[:8].hex()}...)",
            )
        return cert

    def _alarm_placement(self, entry: RegistryEntry, moved: str) -> None:
        placement = entry.placement
        if placement is None or moved in ("unchanged", "unregistered"):
            return
        # "to", not "gateway": that field of an alarm names its signer (SPEC §11.4).
        fields = {"seq": entry.seq, "fleet": entry.fleet, "to": placement.gateway,
                  "counter": placement.counter, "record_sha256": placement.head.hex()}  # fmt: skip
        if moved == "moved_away":
            detail = f"moved to {placement.gateway} by the fleet: {entry.reason}"
            self._gateway.alarm("fleet", Alarm(entry.device, MOVED_BY_FLEET, detail, fields))
        else:
            detail = f"placed here by the fleet at counter {placement.counter}: {entry.reason}"
            self._gateway.alarm("fleet", Alarm(entry.device, "placed_by_fleet", detail, fields))

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


def _held_serial(record: DeviceRecord) -> int:
    """The serial of the certificate the ledger holds for the seal (0: none), as
    `sealink devices enrol` or an earlier registry message left it."""
    if record.enrolment is None:
        return 0
    return Certificate.from_json(record.enrolment, f"device {record.device}: enrolment").serial
