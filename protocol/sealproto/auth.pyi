"""HMAC-SHA256, the session key and the record hash chain (SPEC §4.1, §4.2)."""

from typing import Final

from sealproto.messages import Message

GENESIS: Final[bytes]

def hmac_sha256(key: bytes | bytearray, data: bytes | bytearray | memoryview) -> bytes: ...
def equal(a: bytes | bytearray, b: bytes | bytearray) -> bool:
    """Constant-time comparison (for equal lengths)."""

def sign(msg: Message, key: bytes) -> Message:
    """Set msg[K_MAC] = HMAC(key, encode(msg without K_MAC)) and return msg."""

def verify(msg: Message, key: bytes) -> None:
    """Raise DecodeError(MAC) unless msg[K_MAC] is the MAC of the rest of msg under key."""

def accept(msg: Message, key: bytes, last_seq: int) -> int:
    """Verify a session message's MAC, then its seq; return the seq to remember as last_seq.

    Raises DecodeError(MAC), or DecodeError(REPLAY) if seq <= last_seq.
    """

def session_key(device_key: bytes, device_nonce: bytes, host_nonce: bytes) -> bytes:
    """HMAC(device_key, b"sealink/session/v1" || device_nonce || host_nonce)."""

def record_hash(payload: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of an EVENT's full payload: the next event's `prev`."""

def seal_digest(event: Message) -> bytes:
    """SHA-256 of the EVENT without keys 9 (sig) and 15 (mac): what the seal's chip signs."""

def enrolment_digest(msg: Message) -> bytes:
    """SHA-256 of an ENROL without keys 3 (sig), 14 (seq) and 15 (mac): what the authority signs."""

def stored_digest(device: str, counter: int, head: bytes) -> bytes:
    """SHA-256 of the STORED statement {0: 13, 1: device, 2: counter, 3: head}: what a gateway
    signs in WELCOME key 4 and ACK key 2."""
