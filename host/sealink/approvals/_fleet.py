"""Fleet approver keys' wire format (SPEC §11.7), sans-IO: what the fleet signs for each
approver it issues and what a gateway checks before it applies it.

    topic   = <prefix>/fleet/approvers/<name>             (retained, one per approver)
    message = COSE_Sign1 by the fleet's registry key over the §11.4 envelope with "fleet":
              {"body": bstr (JSON), "fleet": tstr, "seq": uint, "time_ms": uint, "topic": tstr}
    body    = {"name": tstr, "state": "active" | "revoked", "public_key": hex (Ed25519, 32 bytes),
               "actions": [tstr, ...], "reason": tstr, "since_ms": uint}

The fleet builds, the gateway opens, so one text decides what a field may hold. A refusal is
the registry's (RegistryRefused, alarmed `fleet_registry_refused`): the two are judged alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sealink.approvals._wire import ACTIONS
from sealink.crypto import GatewayKey
from sealink.mqtt.registry import (  # the two messages' fields are judged alike
    RegistryRefused,
    check_state_and_reason,
    key_field,
    open_fleet_signed,
    uint_field,
)
from sealink.mqtt.signed import envelope
from sealink.topics import FleetTopics, approver_name_problem

__all__ = ["ApproverEntry", "approver_topic", "build_approver", "open_approver"]

_BODY = frozenset({"name", "state", "public_key", "actions", "reason", "since_ms"})
_KEY_LEN = 32
MAX_APPROVER_BYTES = 4096


@dataclass(frozen=True)
class ApproverEntry:
    fleet: str
    name: str
    state: str
    public_key: bytes
    actions: tuple[str, ...]
    reason: str
    since_ms: int
    seq: int
    time_ms: int


def approver_topic(prefix: str, name: str) -> str:
    return FleetTopics(prefix).approver(name)


def build_approver(key: GatewayKey, prefix: str, entry: ApproverEntry) -> bytes:
    """The fleet's signed, retained message for `entry` (its seq chosen by the fleet's store)."""
    body = {
        "actions": list(entry.actions),
        "name": entry.name,
        "public_key": entry.public_key.hex(),
        "reason": entry.reason,
        "since_ms": entry.since_ms,
        "state": entry.state,
    }
    topic = approver_topic(prefix, entry.name)
    raw = json.dumps(body, sort_keys=True).encode()
    return key.sign1(envelope("fleet", entry.fleet, topic, raw, entry.seq, entry.time_ms))


def _actions(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or len(set(value)) != len(value)
        or any(a not in ACTIONS for a in value)
    ):
        raise RegistryRefused(
            "invalid", f"actions must be a non-empty list of distinct ones of {', '.join(ACTIONS)}"
        )
    return tuple(value)


def _body(raw: Any) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        raise RegistryRefused("invalid", "the body is not JSON (UTF-8)") from None
    if not isinstance(body, dict) or set(body) != _BODY:
        raise RegistryRefused("invalid", f"the body must hold exactly {', '.join(sorted(_BODY))}")
    if not isinstance(body["name"], str) or approver_name_problem(body["name"]) is not None:
        raise RegistryRefused("invalid", "name must be an approver name (SPEC §11.5)")
    check_state_and_reason(body)
    body["public_key"] = key_field(body, "public_key", _KEY_LEN, "Ed25519")
    body["actions"] = _actions(body["actions"])
    uint_field(body, "since_ms")
    return body


def open_approver(
    payload: bytes, topic: str, fleet_public_raw: bytes, prefix: str
) -> ApproverEntry:
    """The verified entry that arrived on `topic`: signed by the fleet key, for this topic, for
    the approver the topic names, each field of its form. RegistryRefused otherwise."""
    fields, seq, time_ms = open_fleet_signed(
        payload, topic, fleet_public_raw, MAX_APPROVER_BYTES, "an approver message"
    )
    body = _body(fields.get("body"))
    if approver_topic(prefix, body["name"]) != topic:
        raise RegistryRefused("wrong_topic", f"about {body['name']!r}, arrived on {topic!r}")
    return ApproverEntry(
        fields["fleet"],
        body["name"],
        body["state"],
        body["public_key"],
        body["actions"],
        body["reason"],
        body["since_ms"],
        seq,
        time_ms,
    )
