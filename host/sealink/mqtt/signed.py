"""Signed MQTT messages (SPEC §11.4): every status and alarm the gateway publishes is a
COSE_Sign1 made with its countersigning key, whose payload binds the JSON body to its topic, the
gateway id, a sequence number and the time:

    COSE_Sign1 = 18([ bstr({1: -8, 4: kid}), {}, payload, signature ])
    payload    = {"body": bstr (JSON), "gateway": tstr, "seq": uint, "time_ms": uint,
                  "topic": tstr}                                     (deterministic CBOR)

`seq` increases strictly over everything one `MessageSigner` signs and starts from the clock in
microseconds, so a later run of the gateway continues above an earlier one's. Only the gateway's
process signs (the publisher's child asks it), so one gateway has one sequence.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.crypto import GatewayKey
from sealink.errors import KeyFileError
from sealink.files import write_durably

__all__ = ["GatewayStatus", "MessageSigner", "envelope", "open_own"]


def _read_floor(path: Path) -> int:
    """The floor a file holds; 0 when there is none yet. Anything else in it is an error that
    names the file (a seq that could go back is worse than a gateway that stops)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the signed messages' seq floor: {exc}") from None
    if not text.isdigit():
        raise KeyFileError(f"{path}: not a seq floor (a decimal number): {text[:40]!r}")
    return int(text)


_TAG_SIGN1 = 18
_SIG_STRUCTURE = "Signature1"


def envelope(role: str, signer: str, topic: str, body: bytes, seq: int, time_ms: int) -> bytes:
    """The payload a §11.4 message signs: `role` names the signer's field ("gateway"; the
    fleet's registry, §11.6, has "fleet"), so one envelope serves every signer."""
    payload = {"body": body, role: signer, "seq": seq, "time_ms": time_ms, "topic": topic}
    return bytes(cbor2.dumps(payload, canonical=True))


# How far past the last seq a floor file reserves: one durable write per hour of clock.
_FLOOR_BLOCK = 3_600_000_000


class MessageSigner:
    """Signs the gateway's non-record messages. One per gateway process.

    With `floor_file`, seq never goes back across runs whatever the clock does (an NTP step
    back, a Raspberry Pi booting without an RTC): the file holds a floor above every seq signed
    so far, written durably before the first seq beyond the floor it had is used."""

    def __init__(
        self,
        key: GatewayKey,
        gateway_id: str,
        clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        floor_file: Path | None = None,
    ) -> None:
        self._key = key
        self.gateway_id = gateway_id
        self._clock_us = clock_us
        self._floor_file = floor_file
        self._floor = _read_floor(floor_file) if floor_file is not None else 0
        self._seq = self._floor

    def _next(self) -> tuple[int, int]:
        """(seq, time_ms). The clock and the floor keep a restarted gateway above its last
        run; +1 keeps a burst strictly increasing within a microsecond and over a clock step
        back in a run."""
        now_us = self._clock_us()
        self._seq = max(self._seq + 1, now_us)
        if self._floor_file is not None and self._seq >= self._floor:
            self._floor = self._seq + _FLOOR_BLOCK
            write_durably(self._floor_file, str(self._floor).encode())
        return self._seq, now_us // 1000

    def sign(self, topic: str, body: dict[str, Any]) -> bytes:
        """The COSE_Sign1 of `body` (a JSON object) for `topic`."""
        return self.sign_json(topic, json.dumps(body, sort_keys=True).encode())

    def sign_json(self, topic: str, body: bytes) -> bytes:
        seq, time_ms = self._next()
        return self._key.sign1(envelope("gateway", self.gateway_id, topic, body, seq, time_ms))


class GatewayStatus:
    """The gateway's retained status messages (SPEC §11.4): one `instance` per run, a number
    per connection, so the gateway can tell its own last will from another gateway's status."""

    def __init__(self, signer: MessageSigner, topic: str, info: dict[str, Any]) -> None:
        self._signer = signer
        self.topic = topic
        self._info = info
        self.instance = os.urandom(8).hex()

    def _body(self, state: str, connection: int) -> dict[str, Any]:
        body = {
            "connection": connection,
            "gateway": self._signer.gateway_id,
            "instance": self.instance,
            "state": state,
            "time_ms": time.time_ns() // 1_000_000,
        }
        return {**self._info, **body}

    def connecting(self, connection: int) -> tuple[bytes, bytes]:
        """(online, last will) for this connection. The will is signed second, so the broker's
        publishing it after the online one never looks like a rollback; it carries the
        connect's time, not the time the broker publishes it."""
        online = self._signer.sign(self.topic, self._body("online", connection))
        will = self._signer.sign(self.topic, self._body("offline", connection))
        return online, will

    def stopped(self, connection: int) -> bytes:
        return self._signer.sign(self.topic, self._body("stopped", connection))


def open_own(payload: bytes, public_raw: bytes) -> dict[str, Any] | None:
    """The signed payload map of a message signed by the gateway's own key, or None if it is
    not one (undecodable, another key, a bad signature): how the gateway reads its own status
    topic. Consumers use sealink_verify.mqtt, which checks everything."""
    try:
        sign1 = cbor2.loads(payload)
        if not isinstance(sign1, cbor2.CBORTag) or sign1.tag != _TAG_SIGN1:
            return None
        protected, _unprotected, signed, signature = sign1.value
        to_sign = cbor2.dumps([_SIG_STRUCTURE, protected, b"", signed])
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, to_sign)
        fields = cbor2.loads(signed)
    except (InvalidSignature, ValueError, TypeError, cbor2.CBORDecodeError):
        return None
    return fields if isinstance(fields, dict) else None
