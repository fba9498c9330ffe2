"""Enrolment certificates (SPEC §5.11): which gateway's acknowledgements a seal trusts.

The enrolment authority (the organisation's key platform; never a gateway host) signs, for one
seal, a serial number and one gateway's acknowledgement key, or no key at all (a revocation).
The gateway hands the certificate to the seal in an ENROL command; the seal's chip checks it
against the authority key built into the seal's firmware, and from then on the seal frees
journal space only on acknowledgements that gateway key signed. A newer serial replaces an
older one: moving a seal to another gateway is a new certificate, and so is revoking one.

On disk a certificate is one JSON object, which the authority's machine writes and the gateway
imports (`sealink authority certify`, `sealink devices enrol`):
    {"device": "seal-0001", "serial": 1796000000, "gateway_key": "<128 hex>" or "",
     "signature": "<128 hex>"}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealproto import auth, cbor, messages
from sealproto.errors import DecodeError

from sealink.crypto.ackkey import AckKey
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import SEAL_KEY_LEN, SealKey
from sealink.errors import KeyFileError

__all__ = ["Certificate", "certify", "stored_signature"]

_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Certificate:
    device: str
    serial: int
    gateway_key: bytes  # X || Y of the gateway's acknowledgement key; b"": revoked
    signature: bytes  # the authority's r || s over auth.enrolment_digest(message)

    def message(self) -> dict[int, Any]:
        """The ENROL command carrying this certificate (seq and MAC added by the session)."""
        return {
            messages.K_TYPE: messages.ENROL,
            messages.EN_SERIAL: self.serial,
            messages.EN_GATEWAY: self.gateway_key,
            messages.EN_SIG: self.signature,
            messages.EN_DEVICE: self.device,
        }

    def signed_by(self, authority_public: bytes) -> bool:
        return SealKey(authority_public).verify(
            auth.enrolment_digest(self.message()), self.signature
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "device": self.device,
                "serial": self.serial,
                "gateway_key": self.gateway_key.hex(),
                "signature": self.signature.hex(),
            }
        )

    def to_cbor(self) -> bytes:
        """The ENROL command without seq and MAC, deterministic CBOR: the form a fleet
        registry message carries (SPEC §11.6 `enrolment`)."""
        return cbor.dumps(self.message())

    @classmethod
    def from_json(cls, text: str, where: str) -> Certificate:
        try:
            obj = json.loads(text)
            cert = cls(
                str(obj["device"]),
                int(obj["serial"]),
                bytes.fromhex(obj["gateway_key"]),
                bytes.fromhex(obj["signature"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{where}: not an enrolment certificate ({exc})") from None
        return cert._checked(where)

    @classmethod
    def from_cbor(cls, data: bytes, where: str) -> Certificate:
        """The certificate `to_cbor` wrote; KeyFileError for any other bytes."""
        try:
            msg = cbor.loads(data)
        except DecodeError as exc:
            raise KeyFileError(f"{where}: not an enrolment certificate ({exc})") from None
        if not isinstance(msg, dict) or msg.get(messages.K_TYPE) != messages.ENROL:
            raise KeyFileError(f"{where}: not an ENROL message")
        try:
            cert = cls(
                msg[messages.EN_DEVICE],
                msg[messages.EN_SERIAL],
                msg[messages.EN_GATEWAY],
                msg[messages.EN_SIG],
            )
        except KeyError as exc:
            raise KeyFileError(f"{where}: not an enrolment certificate (no {exc})") from None
        cert = cert._checked(where)
        if cert.to_cbor() != data:
            raise KeyFileError(f"{where}: not the deterministic encoding of an ENROL message")
        return cert

    def _checked(self, where: str) -> Certificate:
        try:
            messages.encode(self.message() | {messages.K_SEQ: 1})
        except DecodeError as exc:
            raise KeyFileError(f"{where}: not an enrolment certificate ({exc})") from None
        if self.gateway_key and len(self.gateway_key) != SEAL_KEY_LEN:
            raise KeyFileError(f"{where}: gateway_key must be {SEAL_KEY_LEN} bytes or empty")
        return self

    @classmethod
    def load(cls, path: Path) -> Certificate:
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyFileError(f"certificate {path}: cannot read ({exc.strerror})") from None
        return cls.from_json(text, f"certificate {path}")


def certify(
    authority: P256Key, device: str, gateway_key: bytes, serial: int | None = None
) -> Certificate:
    """A certificate enrolling `gateway_key` for `device` (b"": revoking every gateway). The
    serial defaults to the time in seconds, so that a later certificate replaces an earlier one
    without the authority keeping a count."""
    serial = int(time.time()) if serial is None else serial
    if not 0 < serial <= _U32:
        raise ValueError(f"serial must be 1..{_U32}, got {serial}")
    if gateway_key:
        SealKey(gateway_key)  # a point on P-256, or ValueError
    unsigned = Certificate(device, serial, gateway_key, b"")
    return Certificate(
        device, serial, gateway_key, authority.sign(auth.enrolment_digest(unsigned.message()))
    )


def stored_signature(ack_key: AckKey, device: str, counter: int, head: bytes) -> bytes:
    """The gateway's signature that it durably stored `device`'s records 1..counter, the last
    hashing to `head` (WELCOME key 4, ACK key 2)."""
    return ack_key.sign(auth.stored_digest(device, counter, head))
