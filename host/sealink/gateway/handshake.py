"""The host's answer to a HELLO (SPEC §5.2 steps 1 to 4): nothing, or a pending handshake.

A HELLO is replayable, so answering it changes nothing yet: the handshake stays pending until
the device's first session message verifies under its key (the link machine's `_confirm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sealproto import PROTOCOL_VERSION, auth, messages
from sealproto.errors import DecodeError
from sealproto.messages import K_SEQ, K_TYPE

from sealink.crypto.ackkey import AckKey
from sealink.crypto.enrolment import stored_signature
from sealink.gateway.checks import rollback
from sealink.gateway.fastpath import device_mac_ok, encode_frame, encode_session
from sealink.gateway.registry import DeviceRegistry, DeviceState

__all__ = ["Handshake", "NoAnswer", "answer_hello"]


@dataclass(frozen=True, slots=True)
class Handshake:
    state: DeviceState
    key: bytes
    boot_id: int
    next_counter: int
    firmware: str
    acked: int
    enrolment: int  # the serial of the seal's enrolment certificate, 0: none
    welcome: bytes  # the WELCOME frame that answers it
    hello: bytes  # the HELLO payload it answers (evidence, should nobody confirm it)

    def confirmed_by(self, msg: dict[int, Any]) -> bool:
        """Does this session message verify under the pending key (SPEC §5.2 step 5)?"""
        try:
            auth.verify(msg, self.key)
        except DecodeError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class NoAnswer:
    reason: str
    detail: str


def answer_hello(
    registry: DeviceRegistry,
    hello: dict[int, Any],
    payload: bytes,
    host_nonce: bytes,
    host_time_ms: int,
    prove: Callable[[DeviceState, int], bytes],
) -> Handshake | NoAnswer:
    """The WELCOME to a HELLO (SPEC §5.2); `prove(state, acked)` signs what the seal may free."""
    device = hello[messages.HE_DEVICE]
    version = hello[messages.HE_VERSION]
    if version != PROTOCOL_VERSION:
        detail = f"{device} speaks version {version}, this gateway {PROTOCOL_VERSION}"
        return NoAnswer("version", detail)
    state = registry.get(device)
    if state is None:
        return NoAnswer("unknown_device", f"HELLO from {device!r}")
    if not device_mac_ok(payload, state.key):
        return NoAnswer("bad_mac", f"HELLO claiming {device!r}: MAC does not verify")
    next_counter = hello[messages.HE_NEXT]
    boot_id = hello[messages.HE_BOOT]
    # A seal that no longer holds what the ledger stored (or boots "earlier") may hold other
    # records under the same counters: acked 0 lets it compact nothing.
    acked = 0 if rollback(state, next_counter, boot_id) else state.stored
    key = auth.session_key(state.key, hello[messages.HE_NONCE], host_nonce)
    welcome = {
        K_TYPE: messages.WELCOME,
        messages.WE_NONCE: host_nonce,
        messages.WE_ACKED: acked,
        messages.WE_TIME: host_time_ms,
        messages.WE_STORED: prove(state, acked),
        K_SEQ: 1,
    }
    frame = encode_frame(encode_session(welcome, key))
    firmware = hello[messages.HE_FIRMWARE]
    enrolment = hello[messages.HE_ENROLMENT]
    return Handshake(state, key, boot_id, next_counter, firmware, acked, enrolment, frame, payload)


def stored_proof(ack_key: AckKey | None, state: DeviceState, counter: int) -> bytes:
    """The signature that lets the seal free records 1..counter (SPEC §5.11), or nothing: no
    acknowledgement key, nothing stored, or L ends an adopted gap (no head to sign)."""
    if ack_key is None or counter == 0 or counter != state.stored or state.stored_hash is None:
        return b""
    return stored_signature(ack_key, state.device, counter, state.stored_hash)
