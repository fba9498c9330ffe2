"""The approval commands' wire format (SPEC §11.5), sans-IO: the approver's signed request, its
body's rules, and the check of the gateway's signed result.

    request = COSE_Sign1 (EdDSA, kid = the approver key's) over deterministic CBOR
              {"approver": tstr, "body": bstr (JSON), "seq": uint, "time_ms": uint,
               "topic": tstr}
    result  = a §11.4 message of the gateway (MessageSigner) on the result topic

Both sides use this module: the approver builds and the gateway opens, so one text of the rules
decides what a field may hold.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.approvals._keys import ApproverKey
from sealink.crypto.signer import key_id
from sealink.errors import SealinkError
from sealink.mqtt.signed import open_own

__all__ = [
    "ACTIONS",
    "REASONS",
    "ApprovalRefused",
    "OpenedRequest",
    "ResultError",
    "build_request",
    "check_body",
    "claimed",
    "open_request",
    "verify_result",
]

ACTIONS = ("permit", "revoke", "release", "bundle")
# The gateway's own refusal reasons (a seal's refusal is its RESULT name instead).
REASONS = ("bad_signature", "unknown_approver", "not_allowed", "replay", "stale", "invalid")

_TAG_SIGN1 = 18
_HDR_KID = 4
_SIG_STRUCTURE = "Signature1"
_REQUEST_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_TEXT_MAX = 256  # requested_by, note: for the record, not a document
_DEVICE_MAX = 100
MAX_REQUEST_BYTES = 4096

# action -> {field: (type, required)}, on top of the fields every request has
_FIELDS: dict[str, dict[str, tuple[type, bool]]] = {
    "permit": {
        "count": (int, True),
        "not_before_s": (int, True),
        "not_after_s": (int, True),
        "operator": (int, False),
        "operators": (list, False),
        "document_sha256": (str, False),
    },
    "revoke": {"permit": (int, True)},
    "release": {"note": (str, True)},
    "bundle": {"counter": (int, True)},
}
_COMMON = {
    "request": (str, True),
    "action": (str, True),
    "device": (str, True),
    "requested_by": (str, True),
}


class ApprovalRefused(SealinkError):
    """A request the gateway refuses: `reason` one of REASONS, `field` the body field an
    `invalid` one names, `detail` the words for a person."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        super().__init__(f"{reason}: {detail}")


class ResultError(SealinkError):
    """A result message that is not the gateway's signed answer for this topic."""


def _invalid(field: str, problem: str) -> ApprovalRefused:
    return ApprovalRefused("invalid", f"{field} {problem}", field)


def _check_value(name: str, kind: type, value: Any) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _invalid(name, f"must be an integer, not {value!r}"[:200])
    if kind is int and value < 0:
        raise _invalid(name, f"must not be negative, not {value}")
    if kind is str and not isinstance(value, str):
        raise _invalid(name, f"must be a string, not {type(value).__name__}")
    if kind is list and (
        not isinstance(value, list)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise _invalid(name, "must be a list of operator ids (integers)")


def check_body(body: Any) -> dict[str, Any]:
    """The body if it has every field its action needs, each of the right form, and nothing
    else; ApprovalRefused("invalid", field=...) naming the first field that does not. The wire
    ranges of the command itself are sealink.commands' (the gateway checks them on top)."""
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    action = body.get("action")
    if action not in _FIELDS:
        raise _invalid("action", f"must be one of {', '.join(ACTIONS)}, not {action!r}"[:200])
    fields = {**_COMMON, **_FIELDS[action]}
    for name, (kind, required) in fields.items():
        if name not in body:
            if required:
                raise _invalid(name, "is missing")
            continue
        _check_value(name, kind, body[name])
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise _invalid(unknown[0][:64], f"is not a field of {action}")
    if not _REQUEST_RE.match(body["request"]):
        raise _invalid("request", "must be 1..64 characters of A-Z a-z 0-9 . _ -")
    if not 0 < len(body["device"]) <= _DEVICE_MAX:
        raise _invalid("device", f"must be 1..{_DEVICE_MAX} characters")
    for name in ("requested_by", "note"):
        if name in body and not 0 < len(body[name]) <= _TEXT_MAX:
            raise _invalid(name, f"must be 1..{_TEXT_MAX} characters")
    if "document_sha256" in body and not _DIGEST_RE.match(body["document_sha256"]):
        raise _invalid("document_sha256", "must be 64 lower-case hex digits (a SHA-256)")
    return body


class _Seq:
    """seq from the clock in microseconds, strictly increasing within this process (two
    clients of one approver in one process share it)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last


_SEQ = _Seq()


def build_request(
    key: ApproverKey,
    approver: str,
    topic: str,
    body: dict[str, Any],
    seq: int | None = None,
    now_ms: int | None = None,
) -> bytes:
    """The COSE_Sign1 request of `approver` for `topic` (`<prefix>/cmd/<gateway>/request`)."""
    payload = {
        "approver": approver,
        "body": json.dumps(body, sort_keys=True).encode(),
        "seq": _SEQ.next() if seq is None else seq,
        "time_ms": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        "topic": topic,
    }
    return key.sign1(bytes(cbor2.dumps(payload, canonical=True)))


@dataclass(frozen=True)
class OpenedRequest:
    approver: str
    seq: int
    time_ms: int
    topic: str
    body: dict[str, Any]


def _parts(payload: bytes) -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    """(protected, signed payload, signature, the payload's map), nothing verified yet."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise ApprovalRefused("invalid", f"a request is at most {MAX_REQUEST_BYTES} bytes")
    try:
        sign1 = cbor2.loads(payload)
        protected, _unprotected, signed, signature = sign1.value
        fields = cbor2.loads(signed)
        if sign1.tag != _TAG_SIGN1 or not isinstance(fields, dict):
            raise ValueError("not a COSE_Sign1 of a map")
        if not all(isinstance(p, bytes) for p in (protected, signed, signature)):
            raise ValueError("COSE_Sign1 parts are not byte strings")
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, RecursionError):
        raise ApprovalRefused("bad_signature", "not a COSE_Sign1 request (SPEC §11.5)") from None
    return protected, signed, signature, fields


def claimed(payload: bytes) -> tuple[str | None, str | None]:
    """(approver, request id) the payload claims, unverified: where a refusal is addressed."""
    try:
        fields = _parts(payload)[3]
        body = json.loads(fields.get("body", b"{}"))
    except (ApprovalRefused, ValueError, TypeError):
        return None, None
    approver = fields.get("approver")
    request = body.get("request") if isinstance(body, dict) else None
    return (
        approver if isinstance(approver, str) else None,
        request if isinstance(request, str) and _REQUEST_RE.match(request) else None,
    )


def open_request(payload: bytes, topic: str, approver_key: bytes | None) -> OpenedRequest:
    """The verified request that arrived on `topic`; `approver_key` is the raw Ed25519 public
    key registered under the name the payload claims (None: no such approver). Checks the
    signature, the topic binding and the body's form; seq, time and rights are the caller's."""
    protected, signed, signature, fields = _parts(payload)
    approver = fields.get("approver")
    if not isinstance(approver, str) or approver_key is None:
        raise ApprovalRefused("unknown_approver", f"{str(approver)[:64]!r} is not registered")
    try:
        kid = cbor2.loads(protected).get(_HDR_KID)
        public = Ed25519PublicKey.from_public_bytes(approver_key)
        if kid != key_id(public):
            raise InvalidSignature
        public.verify(signature, cbor2.dumps([_SIG_STRUCTURE, protected, b"", signed]))
    except (InvalidSignature, cbor2.CBORDecodeError, ValueError, AttributeError):
        raise ApprovalRefused(
            "bad_signature", f"not signed by approver {approver!r}'s registered key"
        ) from None
    seq, time_ms, signed_topic = fields.get("seq"), fields.get("time_ms"), fields.get("topic")
    for name, value in (("seq", seq), ("time_ms", time_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _invalid(name, "must be an unsigned integer")
    if signed_topic != topic:
        raise _invalid("topic", f"signed for {str(signed_topic)[:200]!r}, arrived on {topic!r}")
    try:
        body = json.loads(fields["body"])
    except (KeyError, ValueError, TypeError):
        raise _invalid("body", "must be a JSON object (UTF-8)") from None
    assert isinstance(seq, int) and isinstance(time_ms, int)
    return OpenedRequest(approver, seq, time_ms, topic, check_body(body))


def verify_result(payload: bytes, gateway_public_raw: bytes, topic: str) -> dict[str, Any]:
    """The body of a result the gateway signed (SPEC §11.4) for `topic`; ResultError if not."""
    fields = open_own(payload, gateway_public_raw)
    if fields is None:
        raise ResultError("not signed by the gateway's key")
    if fields.get("topic") != topic:
        raise ResultError(f"signed for {fields.get('topic')!r}, delivered on {topic!r}")
    try:
        body = json.loads(fields["body"])
    except (KeyError, ValueError, TypeError):
        raise ResultError("the signed body is not JSON") from None
    if not isinstance(body, dict):
        raise ResultError("the signed body is not a JSON object")
    return body
