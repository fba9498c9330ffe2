"""The gateway's side of fleet approver keys (SPEC §11.7): an approver the fleet issued may
sign this gateway's approval requests (§11.5), one it revoked may not, on every gateway.

Messages arrive retained on `<prefix>/fleet/approvers/+` on the fleet desk's client and queue
(fleetdesk.py), so they are judged one at a time in arrival order, as registry messages are:
verified (the fleet key's signature, the topic, the body's form), then against the ledger's
floor for the name (an older message put back is a rollback; the same bytes again change
nothing) and the key the ledger holds for the name (ledger/fleetapprovers.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sealink.approvals import approver_topic, open_approver
from sealink.ledger.fleetapprovers import FleetApproverRefused, FleetApproverUpdate
from sealink.mqtt.client import Message
from sealink.mqtt.registry import RegistryRefused

if TYPE_CHECKING:
    from sealink.gateway.service import Gateway

__all__ = ["is_approver_topic", "take_approver", "topic_filter"]

log = logging.getLogger("sealink.gateway")


def topic_filter(prefix: str) -> str:
    return approver_topic(prefix, "+")


def is_approver_topic(prefix: str, topic: str) -> bool:
    return topic.startswith(approver_topic(prefix, ""))


async def take_approver(gateway: Gateway, message: Message) -> str:
    """Judge and apply one fleet approver message; returns what it did to the approver
    ("added", "adopted", "revoked", "unchanged", "same": the bytes applied already).
    RegistryRefused (its §11.7 refusal): nothing changed."""
    key = gateway.config.fleet.public_key
    assert key is not None
    prefix = gateway.config.mqtt.prefix
    if not message.payload:
        return "same"  # a retained message cleared: says nothing about the approver
    entry = open_approver(message.payload, message.topic, key, prefix)
    floor = await gateway.db(gateway.ledger.fleet_approver_floor, entry.name)
    if floor is not None and entry.seq <= floor[0]:
        if entry.seq == floor[0] and message.payload == floor[1]:
            return "same"  # the retained message again, at a reconnection
        raise RegistryRefused(
            "rollback", f"seq {entry.seq} of approver {entry.name} is not above {floor[0]}"
        )
    update = FleetApproverUpdate(
        entry.name,
        entry.seq,
        entry.state,
        entry.public_key,
        entry.actions,
        entry.reason,
        message.payload,
    )
    try:
        done = await gateway.db(gateway.ledger.apply_fleet_approver, update)
    except FleetApproverRefused as exc:
        raise RegistryRefused(exc.reason, exc.detail) from None
    fields = {"approver": entry.name, "state": entry.state, "seq": entry.seq, "done": done}
    log.warning("fleet approver applied", extra={"fields": fields})
    return done
