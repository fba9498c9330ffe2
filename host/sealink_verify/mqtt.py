"""A consumer's check of the gateway's signed MQTT messages: status and alarms (SPEC §11.4),
gap statements (§11.2 `gaps`), and of the fleet's registry messages (§11.6) and approver
messages (§11.7).

    body = verify_message(topic, payload, {"gw-1": [public_key_raw]}).body

Written again from the text of SPEC §11.4 with cwt and cbor2, never from sealink. A message
verifies when it is a COSE_Sign1 under a key of the gateway its payload names, for the very topic
it arrived on (a gateway topic `<prefix>/gateway/<id>/...` must name that gateway), and its body
is a JSON object. `Freshness` adds what one message cannot show: a retained message rolled back
to an older one, or an alarm delivered twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import cbor2
from cwt import COSE, COSEKey

from sealink_verify.audit import GapStatement

__all__ = [
    "ApproverMessage",
    "BadSignature",
    "Enrolment",
    "Freshness",
    "GapMessage",
    "MessageError",
    "NotSigned",
    "RegistryMessage",
    "RolledBack",
    "SignedMessage",
    "UnknownKey",
    "WrongGateway",
    "WrongTopic",
    "signing_kid",
    "verify_approver_message",
    "verify_gap_message",
    "verify_message",
    "verify_registry_message",
]

_TAG_SIGN1 = 18
_HDR_KID = 4
_OKP, _ED25519 = 1, 6


class MessageError(Exception):
    """A message that does not verify; its subclass says which check failed."""


class NotSigned(MessageError):
    """Not a COSE_Sign1 of the §11.4 form (unsigned JSON from before, or garbage)."""


class UnknownKey(MessageError):
    """Signed with a key id that no gateway given to the check holds."""


class BadSignature(MessageError):
    """The signature does not verify under the key its kid names."""


class WrongTopic(MessageError):
    """Signed for another topic: replayed onto this one."""


class WrongGateway(MessageError):
    """The payload names a gateway whose keys did not sign it, or another gateway's topic."""


class RolledBack(MessageError):
    """Older than a message already accepted on the topic (or the same seq, other bytes)."""


@dataclass(frozen=True)
class SignedMessage:
    topic: str
    gateway: str
    seq: int
    time_ms: int
    kid: bytes
    body: dict[str, Any]
    body_bytes: bytes = field(repr=False)


def _kid(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:8]


def _keys_by_kid(gateway_keys: Mapping[str, Iterable[bytes]]) -> dict[bytes, tuple[str, bytes]]:
    return {_kid(raw): (gateway, raw) for gateway, keys in gateway_keys.items() for raw in keys}


def signing_kid(payload: bytes) -> bytes:
    """The kid of a COSE_Sign1's protected header, read before anything is verified."""
    try:
        sign1 = cbor2.loads(payload)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise NotSigned(f"not CBOR: {exc}") from None
    if not isinstance(sign1, cbor2.CBORTag) or sign1.tag != _TAG_SIGN1:
        raise NotSigned("not a tagged COSE_Sign1 (tag 18)")
    parts = list(sign1.value) if isinstance(sign1.value, list | tuple) else []
    if len(parts) != 4 or not isinstance(parts[0], bytes):
        raise NotSigned("a COSE_Sign1 is [protected, unprotected, payload, signature]")
    try:
        protected = cbor2.loads(parts[0]) if parts[0] else {}
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise NotSigned(f"protected header not CBOR: {exc}") from None
    kid = protected.get(_HDR_KID) if isinstance(protected, dict) else None
    if not isinstance(kid, bytes):
        raise NotSigned("no kid in the protected header")
    return kid


def _signed_fields(payload: bytes, kid: bytes, raw: bytes) -> dict[Any, Any]:
    """The signed CBOR map of a COSE_Sign1 that verifies under the Ed25519 key `raw`."""
    key = COSEKey.new({1: _OKP, 2: kid, 3: -8, -1: _ED25519, -2: raw})
    try:
        signed = COSE.new().decode(payload, key)
    except Exception as exc:  # cwt raises several types; any of them means "not verified"
        raise BadSignature(f"COSE_Sign1 does not verify under kid {kid.hex()}: {exc}") from None
    try:
        fields = cbor2.loads(signed)
    except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
        raise NotSigned(f"signed payload is not CBOR: {exc!r}") from None
    if not isinstance(fields, dict):
        raise NotSigned("signed payload is not the §11.4 map")
    return fields


def _signed_by_gateway(
    payload: bytes, gateway_keys: Mapping[str, Iterable[bytes]]
) -> tuple[str, bytes, dict[Any, Any]]:
    """(the gateway whose key signed `payload`, the key's kid, the verified fields);
    UnknownKey if no key of `gateway_keys` has that kid."""
    kid = signing_kid(payload)
    owner = _keys_by_kid(gateway_keys).get(kid)
    if owner is None:
        raise UnknownKey(f"kid {kid.hex()} is not a key of {', '.join(sorted(gateway_keys))}")
    gateway, raw = owner
    return gateway, kid, _signed_fields(payload, kid, raw)


def verify_message(
    topic: str, payload: bytes, gateway_keys: Mapping[str, Iterable[bytes]]
) -> SignedMessage:
    """The verified message, or a MessageError naming the check that failed. `gateway_keys`:
    gateway id -> its raw Ed25519 public keys (every key of its history, SPEC §14.7)."""
    gateway, kid, fields = _signed_by_gateway(payload, gateway_keys)
    try:
        message = SignedMessage(
            topic=fields["topic"],
            gateway=fields["gateway"],
            seq=fields["seq"],
            time_ms=fields["time_ms"],
            kid=kid,
            body=json.loads(fields["body"]),
            body_bytes=fields["body"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise NotSigned(f"signed payload is not the §11.4 map: {exc!r}") from None
    types_ok = all(
        (
            isinstance(message.topic, str),
            isinstance(message.gateway, str),
            isinstance(message.seq, int),
            isinstance(message.time_ms, int),
            isinstance(message.body, dict),
        )
    )
    if not types_ok:
        raise NotSigned("signed payload fields have the wrong types")
    if message.topic != topic:
        raise WrongTopic(f"signed for {message.topic!r}, delivered on {topic!r}")
    if message.gateway != gateway:
        raise WrongGateway(f"payload names gateway {message.gateway!r}, signed by {gateway!r}")
    levels = topic.split("/")
    if len(levels) >= 3 and levels[-3] == "gateway" and levels[-2] != gateway:
        raise WrongGateway(f"gateway {gateway!r} signed for gateway {levels[-2]!r}'s topic")
    if message.body.get("gateway", gateway) != gateway:
        raise WrongGateway(f"body names gateway {message.body.get('gateway')!r}")
    return message


@dataclass(frozen=True)
class GapMessage:
    """A verified gap statement: `gateway` (whose key signed it) says that counters
    first..last of `device` have no record there, declared lost by `statement.operator`
    (§5.8), or, with `statement.head`, held by the fleet when it moved the seal there (§11.6)."""

    gateway: str
    kid: bytes
    device: str
    statement: GapStatement


_GAP_FIELDS = {"adopted_ms", "device", "first", "kind", "last", "note", "operator"}


def verify_gap_message(
    topic: str, payload: bytes, gateway_keys: Mapping[str, Iterable[bytes]]
) -> GapMessage:
    """A gap statement from `<prefix>/<device>/gaps` (SPEC §11.2): a COSE_Sign1 of §11.1's
    form under a key of a gateway in `gateway_keys` (the statement names no gateway: the key
    does), its payload the gap map about the seal the topic names; a MessageError naming the
    failed check otherwise."""
    gateway, kid, fields = _signed_by_gateway(payload, gateway_keys)
    head = fields.get("head")
    well_formed = (
        set(fields) in (_GAP_FIELDS, _GAP_FIELDS | {"head"})
        and fields["kind"] == "gap"
        and isinstance(fields["device"], str)
        and _uint(fields["first"])
        and _uint(fields["last"])
        and 1 <= fields["first"] <= fields["last"] < 2**32  # §4: counters are uint32 from 1
        and _uint(fields["adopted_ms"])
        and isinstance(fields["operator"], str)
        and isinstance(fields["note"], str)
        and (head is None or (isinstance(head, bytes) and len(head) == 32))
    )
    if not well_formed:
        raise NotSigned("signed payload is not the §11.2 gap statement")
    levels = topic.split("/")
    if len(levels) < 3 or levels[-1] != "gaps" or levels[-2] != fields["device"]:
        raise WrongTopic(f"a gap of seal {fields['device']!r}, delivered on {topic!r}")
    statement = GapStatement(
        fields["first"],
        fields["last"],
        fields["adopted_ms"],
        fields["operator"],
        fields["note"],
        head,
    )
    return GapMessage(gateway, kid, fields["device"], statement)


@dataclass(frozen=True)
class RegistryMessage:
    topic: str
    fleet: str
    seq: int
    time_ms: int
    device: str
    state: str
    reason: str
    seal_key: bytes
    since_ms: int
    # A placement (`sealink fleet devices move`): the gateway the seal is assigned to, the
    # highest counter the fleet held whole when it was moved, and that record's hash (hex).
    gateway: str | None = None
    counter: int | None = None
    record_sha256: str | None = None
    # With a placement: the enrolment authority's certificate for the placement's gateway.
    enrolment: Enrolment | None = None


@dataclass(frozen=True)
class Enrolment:
    """A §5.11 ENROL certificate as a registry message carries it (its fields in hex): the
    seal's chip checks `signature` under the authority key built into its firmware."""

    serial: int
    gateway_key: str
    signature: str
    device: str


_REGISTRY_BODY = {"device", "reason", "seal_key", "since_ms", "state"}
_PLACEMENT = {"gateway", "counter", "record_sha256"}
_REGISTRY_FORMS = (_REGISTRY_BODY, _REGISTRY_BODY | _PLACEMENT,
                   _REGISTRY_BODY | _PLACEMENT | {"enrolment"})  # fmt: skip
_ENROL = 12  # SPEC §4 message type; ENROL keys 1 serial, 2 gateway_key, 3 sig, 4 device_id
_GATEWAY_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")  # SPEC §11.6: a gateway id


def _uint(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _fleet_signed(
    topic: str, payload: bytes, fleet_key: bytes
) -> tuple[dict[str, Any], str, int, int]:
    """The envelope of a message the fleet signs (§11.6, §11.7), verified under its key and for
    `topic`: (its fields, fleet, seq, time_ms)."""
    kid = signing_kid(payload)
    if kid != _kid(fleet_key):
        raise UnknownKey(f"kid {kid.hex()} is not the fleet key's ({_kid(fleet_key).hex()})")
    fields = _signed_fields(payload, kid, fleet_key)
    fleet, seq, time_ms = fields.get("fleet"), fields.get("seq"), fields.get("time_ms")
    if not (isinstance(fleet, str) and _uint(seq) and _uint(time_ms)):
        raise NotSigned("signed payload is not the §11.6 map (fleet, seq, time_ms)")
    if fields.get("topic") != topic:
        raise WrongTopic(f"signed for {fields.get('topic')!r}, delivered on {topic!r}")
    return fields, fleet, seq, time_ms


def verify_registry_message(topic: str, payload: bytes, fleet_key: bytes) -> RegistryMessage:
    """A fleet registry message (SPEC §11.6) that verifies under the fleet's raw Ed25519 key
    `fleet_key`, signed for `topic` (`<prefix>/fleet/registry/<device>`), its body about that
    seal and of the §11.6 form; a MessageError naming the failed check otherwise. Its seq
    orders it; `Freshness` is the caller's, as for §11.4 messages."""
    fields, fleet, seq, time_ms = _fleet_signed(topic, payload, fleet_key)
    try:
        body = json.loads(fields["body"])
        seal_key = bytes.fromhex(body["seal_key"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise NotSigned(f"body is not the §11.6 object: {exc!r}") from None
    well_formed = (
        isinstance(body, dict)
        and set(body) in _REGISTRY_FORMS
        and body["state"] in ("active", "revoked")
        and isinstance(body["reason"], str)
        and len(body["reason"]) <= 256
        and len(seal_key) == 64
        and _uint(body["since_ms"])
        and isinstance(body["device"], str)
    )
    if not well_formed:
        raise NotSigned("body is not the §11.6 object")
    gateway, counter, digest = _placement(body) if "gateway" in body else (None, None, None)
    enrolment = _enrolment(body) if "enrolment" in body else None
    head, sep, device = topic.rpartition("/")
    if not sep or not head.endswith("/fleet/registry") or device != body["device"]:
        raise WrongTopic(f"about seal {body['device']!r}, delivered on {topic!r}")
    return RegistryMessage(
        topic,
        fleet,
        seq,
        time_ms,
        device,
        body["state"],
        body["reason"],
        seal_key,
        body["since_ms"],
        gateway,
        counter,
        digest,
        enrolment,
    )


def _enrolment(body: dict[str, Any]) -> Enrolment:
    """The certificate's form, from SPEC §5.11 and §11.6: the deterministic CBOR map of an
    ENROL message without seq and MAC, enrolling a 64-byte key for the body's seal."""
    try:
        raw = bytes.fromhex(body["enrolment"])
        msg = cbor2.loads(raw)
    except (ValueError, TypeError, cbor2.CBORDecodeError):
        raise NotSigned("enrolment is not hex of CBOR") from None
    well_formed = (
        isinstance(msg, dict)
        and set(msg) == {0, 1, 2, 3, 4}
        and msg[0] == _ENROL
        and _uint(msg[1])
        and 0 < msg[1] <= 0xFFFFFFFF
        and isinstance(msg[2], bytes)
        and len(msg[2]) == 64
        and isinstance(msg[3], bytes)
        and len(msg[3]) == 64
        and isinstance(msg[4], str)
        and cbor2.dumps(msg, canonical=True) == raw
    )
    if not well_formed:
        raise NotSigned("enrolment is not a §5.11 ENROL certificate enrolling a gateway key")
    if msg[4] != body["device"]:
        raise NotSigned(f"enrolment enrols seal {msg[4]!r}, not {body['device']!r}")
    return Enrolment(msg[1], msg[2].hex(), msg[3].hex(), msg[4])


def _placement(body: dict[str, Any]) -> tuple[str, int, str]:
    gateway, counter, digest = body["gateway"], body["counter"], body["record_sha256"]
    try:
        whole = isinstance(digest, str) and len(bytes.fromhex(digest)) == 32
    except ValueError:
        whole = False
    if not (isinstance(gateway, str) and _GATEWAY_ID.fullmatch(gateway) and _uint(counter)):
        raise NotSigned("placement is not the §11.6 form (gateway id, counter)")
    if not whole:
        raise NotSigned("placement record_sha256 is not 32 bytes of hex")
    return gateway, counter, digest.lower()


@dataclass(frozen=True)
class ApproverMessage:
    topic: str
    fleet: str
    seq: int
    time_ms: int
    name: str
    state: str
    reason: str
    public_key: bytes
    actions: tuple[str, ...]
    since_ms: int


_APPROVER_BODY = {"name", "state", "reason", "public_key", "actions", "since_ms"}
_APPROVER_ACTIONS = {"permit", "revoke", "release", "bundle"}  # SPEC §11.5
_APPROVER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # SPEC §11.5: an approver name


def verify_approver_message(topic: str, payload: bytes, fleet_key: bytes) -> ApproverMessage:
    """A fleet approver message (SPEC §11.7) that verifies under the fleet's raw Ed25519 key
    `fleet_key`, signed for `topic` (`<prefix>/fleet/approvers/<name>`), its body about that
    approver and of the §11.7 form; a MessageError naming the failed check otherwise. Its seq
    orders it; `Freshness` is the caller's, as for §11.4 messages."""
    fields, fleet, seq, time_ms = _fleet_signed(topic, payload, fleet_key)
    try:
        body = json.loads(fields["body"])
        public_key = bytes.fromhex(body["public_key"])
        actions = body["actions"]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise NotSigned(f"body is not the §11.7 object: {exc!r}") from None
    well_formed = (
        isinstance(body, dict)
        and set(body) == _APPROVER_BODY
        and isinstance(body["name"], str)
        and _APPROVER_NAME.fullmatch(body["name"]) is not None
        and body["state"] in ("active", "revoked")
        and isinstance(body["reason"], str)
        and len(body["reason"]) <= 256
        and len(public_key) == 32
        and isinstance(actions, list)
        and len(actions) > 0
        and all(isinstance(a, str) and a in _APPROVER_ACTIONS for a in actions)
        and len(set(actions)) == len(actions)
        and _uint(body["since_ms"])
    )
    if not well_formed:
        raise NotSigned("body is not the §11.7 object")
    head, sep, name = topic.rpartition("/")
    if not sep or not head.endswith("/fleet/approvers") or name != body["name"]:
        raise WrongTopic(f"about approver {body['name']!r}, delivered on {topic!r}")
    return ApproverMessage(
        topic,
        fleet,
        seq,
        time_ms,
        name,
        body["state"],
        body["reason"],
        public_key,
        tuple(actions),
        body["since_ms"],
    )


class Freshness:
    """Per topic, the highest seq accepted (SPEC §11.4): a lower one is a rollback (an older
    retained message put back), the same one with other bytes a forgery's collision; the same
    bytes again are a redelivery (`accept` returns False)."""

    def __init__(self) -> None:
        self._highest: dict[str, tuple[int, bytes]] = {}

    def accept(self, message: SignedMessage) -> bool:
        """True: news; False: a redelivery of the latest; RolledBack otherwise."""
        last = self._highest.get(message.topic)
        if last is not None:
            seq, body = last
            if message.seq == seq and message.body_bytes == body:
                return False
            if message.seq <= seq:
                raise RolledBack(f"{message.topic}: seq {message.seq} after seq {seq} was accepted")
        self._highest[message.topic] = (message.seq, message.body_bytes)
        return True
