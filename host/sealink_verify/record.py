"""One countersigned record as it arrives on `<prefix>/<device>/events` (SPEC §11.1), checked
alone: what a consumer that sees records one at a time, in any order, can prove of each.

    record = open_record(topic_device, cose, {"gw-1": [raw_key]}, seal_keys)

It proves the COSE_Sign1 is signed by a key of the gateway its payload names (the kid picks
the key; every key of that gateway's history may be given), that the payload names the device
of the topic and the event's own counter (a MUST of §11.1), and, where the seal's public key
is known, the seal's signature (§4.1). The chain (`prev`) needs the neighbouring record: the
caller compares `prev` with the `record_hash` of counter - 1 whenever it holds both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cwt import COSE, COSEKey

from sealink_verify.audit import seal_signature_ok
from sealink_verify.mqtt import MessageError, signing_kid

__all__ = ["CountersignedRecord", "RecordError", "RecordVerifier", "open_record"]

_EV_COUNTER, _EV_TIME_S, _EV_KIND, _EV_PERMIT, _EV_OPERATOR, _EV_PREV = 1, 4, 5, 6, 7, 8
_OKP, _ED25519 = 1, 6
# Built once: the fleet's writer reads four fields of every record it stores.
_FIELD_KEYS = {"kind": _EV_KIND, "permit": _EV_PERMIT, "operator": _EV_OPERATOR}


class RecordError(Exception):
    """A record that does not verify; `reason` names the failed check in one word."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class CountersignedRecord:
    device: str
    counter: int
    gateway: str
    received_ms: int
    kid: bytes
    event: bytes = field(repr=False)
    fields: dict[int, Any] = field(repr=False)
    # True: the seal's signature verified; None: no public key of the seal was given.
    seal_verified: bool | None

    @property
    def record_hash(self) -> bytes:
        """SHA-256 of the event bytes: the next record's `prev`."""
        return hashlib.sha256(self.event).digest()

    @property
    def prev(self) -> bytes:
        value = self.fields.get(_EV_PREV)
        return value if isinstance(value, bytes) else b""

    def field_int(self, name: str) -> int:
        """kind, permit, operator or time_s of the event (0 when absent)."""
        value = self.fields.get(_FIELD_KEYS.get(name, _EV_TIME_S), 0)
        return value if isinstance(value, int) else 0


class _Keys:
    """kid -> (gateway, COSEKey), built once: a consumer checks thousands of records a second."""

    def __init__(self, gateway_keys: Mapping[str, Iterable[bytes]]) -> None:
        self.by_kid: dict[bytes, tuple[str, Any]] = {}
        for gateway, keys in gateway_keys.items():
            for raw in keys:
                kid = hashlib.sha256(raw).digest()[:8]
                cose_key = COSEKey.new({1: _OKP, 2: kid, 3: -8, -1: _ED25519, -2: raw})
                self.by_kid[kid] = (gateway, cose_key)


class RecordVerifier:
    """`open_record` with its keys prepared once."""

    def __init__(
        self,
        gateway_keys: Mapping[str, Iterable[bytes]],
        seal_keys: Mapping[str, ec.EllipticCurvePublicKey] | None = None,
    ) -> None:
        self._keys = _Keys(gateway_keys)
        self.seal_keys = dict(seal_keys or {})
        self._cose = COSE.new()

    def open(self, device: str, cose: bytes) -> CountersignedRecord:
        try:
            kid = signing_kid(cose)
        except MessageError as exc:
            raise RecordError("not_signed", str(exc)) from None
        owner = self._keys.by_kid.get(kid)
        if owner is None:
            raise RecordError("unknown_key", f"kid {kid.hex()} is no pinned gateway key")
        gateway, key = owner
        try:
            signed = self._cose.decode(cose, key)
        except Exception as exc:  # cwt raises several types; any of them means "not verified"
            raise RecordError("bad_countersignature", f"kid {kid.hex()}: {exc}") from None
        return self._payload(device, gateway, kid, signed)

    def _payload(self, device: str, gateway: str, kid: bytes, signed: bytes) -> CountersignedRecord:
        try:
            payload = cbor2.loads(signed)
            event_bytes, counter = payload["event"], payload["counter"]
            fields = cbor2.loads(event_bytes)
            received_ms = payload["received_ms"]
        except (cbor2.CBORDecodeError, ValueError, KeyError, TypeError) as exc:
            raise RecordError("malformed", f"signed payload unreadable: {exc!r}") from None
        if not (isinstance(fields, dict) and isinstance(counter, int) and 1 <= counter < 2**32):
            # SPEC §4: an EVENT's counter is a uint32, at least 1.
            raise RecordError("malformed", "the event is not a map, or the counter not uint32 >= 1")
        if not (isinstance(received_ms, int) and 0 <= received_ms < 2**63):
            raise RecordError("malformed", f"received_ms {received_ms!r} is no Unix time in ms")
        if payload.get("device") != device or fields.get(_EV_COUNTER) != counter:
            raise RecordError(
                "mismatch",
                f"payload names {payload.get('device')}#{counter}, topic and event say "
                f"{device}#{fields.get(_EV_COUNTER)}",
            )
        if payload.get("gateway") != gateway:
            raise RecordError(
                "mismatch", f"payload names gateway {payload.get('gateway')!r}, {gateway} signed"
            )
        seal_key = self.seal_keys.get(device)
        seal_ok = None if seal_key is None else seal_signature_ok(seal_key, fields)
        if seal_ok is False:
            raise RecordError("bad_seal_signature", f"{device}#{counter}: the seal's sig fails")
        return CountersignedRecord(
            device=device,
            counter=counter,
            gateway=gateway,
            received_ms=int(received_ms),
            kid=kid,
            event=event_bytes,
            fields=fields,
            seal_verified=seal_ok,
        )


def open_record(
    device: str,
    cose: bytes,
    gateway_keys: Mapping[str, Iterable[bytes]],
    seal_keys: Mapping[str, ec.EllipticCurvePublicKey] | None = None,
) -> CountersignedRecord:
    """The verified record, or RecordError naming the failed check (see the module doc)."""
    return RecordVerifier(gateway_keys, seal_keys).open(device, cose)
