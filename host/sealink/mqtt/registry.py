"""The fleet registry's wire format (SPEC §11.6), sans-IO: what the fleet signs for each seal
and what a gateway checks before it applies it.

    topic   = <prefix>/fleet/registry/<device>            (retained, one per seal)
    message = COSE_Sign1 by the fleet key over the §11.4 envelope with "fleet" for "gateway":
              {"body": bstr (JSON), "fleet": tstr, "seq": uint, "time_ms": uint, "topic": tstr}
    body    = {"device": tstr, "state": "active" | "revoked", "reason": tstr,
               "seal_key": hex of the seal chip's public key (X || Y), "since_ms": uint,
               ? "gateway": tstr, "counter": uint, "record_sha256": hex,   ; a placement
               ? "enrolment": hex}    ; with a placement: the §5.11 ENROL certificate for it

Both sides use this module (the fleet builds, the gateway opens), so one text decides what a
field may hold. Freshness (seq above the floor the gateway keeps) and the key comparison are
the gateway's, since they need its ledger; their refusal reasons are named here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sealink.config import NAME_RE
from sealink.crypto import GatewayKey
from sealink.crypto.enrolment import Certificate
from sealink.errors import KeyFileError, SealinkError
from sealink.mqtt.signed import envelope, open_own
from sealink.topics import FleetTopics

__all__ = [
    "REFUSALS",
    "STATES",
    "Placement",
    "RegistryEntry",
    "RegistryRefused",
    "build_entry",
    "check_state_and_reason",
    "key_field",
    "open_entry",
    "open_fleet_signed",
    "registry_topic",
    "uint_field",
]

STATES = ("active", "revoked")
# Why a gateway refuses a registry message (its alarm's `refusal`).
REFUSALS = ("bad_signature", "wrong_topic", "invalid", "rollback", "key_substitution")
_SEAL_KEY_LEN = 64
_HASH_LEN = 32
_BODY = frozenset({"device", "reason", "seal_key", "since_ms", "state"})
_PLACEMENT = frozenset({"gateway", "counter", "record_sha256"})
# An enrolment names its gateway only by key: it comes with the placement naming it by id.
_FORMS = (_BODY, _BODY | _PLACEMENT, _BODY | _PLACEMENT | {"enrolment"})
_TEXT_MAX = 256
MAX_ENTRY_BYTES = 4096


class RegistryRefused(SealinkError):
    """A registry message a gateway does not apply: `reason` one of REFUSALS."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Placement:
    """The gateway a seal is assigned to and where it stands (`sealink fleet devices move`):
    the fleet holds its records 1..counter, chained, and `head` is record `counter`'s hash."""

    gateway: str
    counter: int
    head: bytes


@dataclass(frozen=True)
class RegistryEntry:
    fleet: str
    device: str
    state: str
    reason: str
    seal_key: bytes
    since_ms: int
    seq: int
    time_ms: int
    placement: Placement | None = None
    # The authority's certificate enrolling the seal with the placement's gateway (its
    # acknowledgement key), which that gateway hands the seal; only with a placement.
    enrolment: Certificate | None = None


def registry_topic(prefix: str, device: str) -> str:
    return FleetTopics(prefix).registry(device)


def build_entry(key: GatewayKey, prefix: str, entry: RegistryEntry) -> bytes:
    """The fleet's signed, retained message for `entry` (its seq chosen by the fleet's store)."""
    assert entry.enrolment is None or entry.placement is not None, "an enrolment needs a place"
    body = {
        "device": entry.device,
        "reason": entry.reason,
        "seal_key": entry.seal_key.hex(),
        "since_ms": entry.since_ms,
        "state": entry.state,
    }
    if entry.placement is not None:
        body["gateway"] = entry.placement.gateway
        body["counter"] = entry.placement.counter
        body["record_sha256"] = entry.placement.head.hex()
        if entry.enrolment is not None:
            body["enrolment"] = entry.enrolment.to_cbor().hex()
    topic = registry_topic(prefix, entry.device)
    raw = json.dumps(body, sort_keys=True).encode()
    return key.sign1(envelope("fleet", entry.fleet, topic, raw, entry.seq, entry.time_ms))


def uint_field(fields: dict[str, Any], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryRefused("invalid", f"{name} must be an unsigned integer")
    return value


def check_state_and_reason(body: dict[str, Any]) -> None:
    """The fields every fleet-signed body has (SPEC §11.6, §11.7): its state and reason."""
    if body["state"] not in STATES:
        raise RegistryRefused("invalid", f"state must be one of {', '.join(STATES)}")
    if not isinstance(body["reason"], str) or len(body["reason"]) > _TEXT_MAX:
        raise RegistryRefused("invalid", f"reason must be a string of at most {_TEXT_MAX}")


def key_field(body: dict[str, Any], name: str, length: int, what: str) -> bytes:
    """A public key in a fleet-signed body: hex of `length` bytes (`what`: its form)."""
    try:
        key = bytes.fromhex(body[name])
    except (ValueError, TypeError):
        raise RegistryRefused("invalid", f"{name} must be hex") from None
    if len(key) != length:
        raise RegistryRefused("invalid", f"{name} must be {length} bytes ({what})")
    return key


def _body(raw: Any) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, TypeError):
        raise RegistryRefused("invalid", "the body is not JSON (UTF-8)") from None
    if not isinstance(body, dict) or set(body) not in _FORMS:
        raise RegistryRefused("invalid", "the body must hold exactly device, reason, seal_key, "
                              "since_ms, state, and with a placement gateway, counter, "
                              "record_sha256 (and perhaps enrolment)")  # fmt: skip
    check_state_and_reason(body)
    body["seal_key"] = key_field(body, "seal_key", _SEAL_KEY_LEN, "X || Y")
    uint_field(body, "since_ms")
    body["placement"] = _placement(body) if "gateway" in body else None
    body["enrolment"] = _enrolment(body) if "enrolment" in body else None
    return body


def _enrolment(body: dict[str, Any]) -> Certificate:
    """The certificate's form and its seal; whose key it enrols is the named gateway's to
    judge, and its signature the seal's (the gateway may not know the authority's key)."""
    try:
        cert = Certificate.from_cbor(bytes.fromhex(body["enrolment"]), "enrolment")
    except (ValueError, TypeError):
        raise RegistryRefused("invalid", "enrolment must be hex") from None
    except KeyFileError as exc:
        raise RegistryRefused("invalid", str(exc)) from None
    if cert.device != body["device"]:
        raise RegistryRefused("invalid", f"the enrolment is {cert.device!r}'s, not the seal's")
    if not cert.gateway_key:
        raise RegistryRefused("invalid", "the enrolment enrols no gateway (a revocation)")
    return cert


def _placement(body: dict[str, Any]) -> Placement:
    gateway = body["gateway"]
    if not isinstance(gateway, str) or not NAME_RE.fullmatch(gateway):
        raise RegistryRefused("invalid", "gateway must be a gateway id")
    try:
        head = bytes.fromhex(body["record_sha256"])
    except (ValueError, TypeError):
        raise RegistryRefused("invalid", "record_sha256 must be hex") from None
    if len(head) != _HASH_LEN:
        raise RegistryRefused("invalid", f"record_sha256 must be {_HASH_LEN} bytes")
    return Placement(gateway, uint_field(body, "counter"), head)


def open_fleet_signed(
    payload: bytes, topic: str, fleet_public_raw: bytes, max_bytes: int, what: str
) -> tuple[dict[str, Any], int, int]:
    """The §11.4 envelope of a fleet-signed message (§11.6, §11.7) that arrived on `topic`:
    (fields, seq, time_ms), signed by the fleet key for this topic. RegistryRefused otherwise."""
    if len(payload) > max_bytes:
        raise RegistryRefused("invalid", f"{what} is at most {max_bytes} bytes")
    fields = open_own(payload, fleet_public_raw)
    if fields is None or not isinstance(fields.get("fleet"), str):
        raise RegistryRefused("bad_signature", "not a COSE_Sign1 by the fleet key")
    if fields.get("topic") != topic:
        signed = str(fields.get("topic"))[:200]
        raise RegistryRefused("wrong_topic", f"signed for {signed!r}, arrived on {topic!r}")
    return fields, uint_field(fields, "seq"), uint_field(fields, "time_ms")


def open_entry(payload: bytes, topic: str, fleet_public_raw: bytes, prefix: str) -> RegistryEntry:
    """The verified entry that arrived on `topic`: signed by the fleet key, for this topic, for
    the seal the topic names, each field of its form. RegistryRefused otherwise."""
    fields, seq, time_ms = open_fleet_signed(
        payload, topic, fleet_public_raw, MAX_ENTRY_BYTES, "a registry message"
    )
    body = _body(fields.get("body"))
    if registry_topic(prefix, str(body["device"])) != topic:
        raise RegistryRefused("wrong_topic", f"about {body['device']!r}, arrived on {topic!r}")
    return RegistryEntry(
        fields["fleet"],
        body["device"],
        body["state"],
        body["reason"],
        body["seal_key"],
        body["since_ms"],
        seq,
        time_ms,
        body["placement"],
        body["enrolment"],
    )
