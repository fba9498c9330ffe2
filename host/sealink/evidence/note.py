"""Signed checkpoints: C2SP tlog-checkpoint text in a C2SP signed note, Ed25519 (SPEC §14.2).

    sealink/gateway/<id>\n                    origin (also the signature's key name)
    <tree size>\n                             decimal, no leading zeroes
    <base64 root hash>\n                      RFC 4648 §4 base64 of the RFC 9162 root
    sealink-heads <base64 SHA-256(heads)>\n   extension: the device-heads table (§14.3)
    sealink-time-ms <unix ms>\n               extension: when the gateway signed it
    \n
    — <origin> <base64(key ID (4 bytes, big-endian) || Ed25519 signature (64))>\n

key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]; the signature is
over the note text, final newline included, blank line excluded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.crypto.signer import GatewayKey
from sealink.errors import SealinkError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "NoteParts",
    "checkpoint_origin",
    "checkpoint_text",
    "note_key_id",
    "open_note",
    "sign_checkpoint",
    "sign_note",
    "split_note",
]

_ED25519 = b"\x01"
_DASH = "\u2014 "
HEADS_EXT = "sealink-heads"
TIME_EXT = "sealink-time-ms"
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]*)$")


class CheckpointError(SealinkError):
    """A checkpoint note that is malformed or not signed by the expected key."""


def checkpoint_origin(gateway_id: str) -> str:
    return f"sealink/gateway/{gateway_id}"


def note_key_id(name: str, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public_raw).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    heads_hash: bytes
    time_ms: int
    note: str

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root.hex(),
            "heads_hash": self.heads_hash.hex(),
            "time_ms": self.time_ms,
            "note": self.note,
        }


def checkpoint_text(origin: str, size: int, root: bytes, heads_hash: bytes, time_ms: int) -> str:
    return (
        f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
        f"{HEADS_EXT} {base64.b64encode(heads_hash).decode()}\n{TIME_EXT} {time_ms}\n"
    )


def sign_checkpoint(
    key: GatewayKey, origin: str, size: int, root: bytes, heads_hash: bytes, time_ms: int
) -> Checkpoint:
    if not origin or any(c.isspace() for c in origin) or "+" in origin:
        raise CheckpointError(f"origin {origin!r}: a key name has no spaces and no '+'")
    note = sign_note(key, origin, checkpoint_text(origin, size, root, heads_hash, time_ms))
    return Checkpoint(origin, size, root, heads_hash, time_ms, note)


@dataclass(frozen=True)
class NoteParts:
    """A signed note cut in two: the text (final newline included) and its signature lines,
    each as (key name, decoded bytes, the line itself)."""

    text: str
    signatures: tuple[tuple[str, bytes, str], ...]


def split_note(note: str) -> NoteParts:
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckpointError("a note has no control characters but newline")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise CheckpointError("not a signed note: no blank line before the signatures")
    signatures = []
    for line in note[cut + 2 :].splitlines():
        if not line.startswith(_DASH):
            raise CheckpointError(f"not a signature line: {line!r}")
        name, _, blob = line[len(_DASH) :].partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise CheckpointError(f"signature of {name!r} is not base64") from None
        if not name or len(raw) < 4:
            raise CheckpointError(f"not a signature line: {line!r}")
        signatures.append((name, raw, line))
    if not signatures:
        raise CheckpointError("a signed note has at least one signature line")
    return NoteParts(note[: cut + 1], tuple(signatures))


def sign_note(key: GatewayKey, name: str, text: str) -> str:
    """A C2SP signed note of `text` (ending in a newline) with one Ed25519 signature."""
    signature = key.private.sign(text.encode())
    blob = base64.b64encode(note_key_id(name, key.public_raw()) + signature).decode()
    return f"{text}\n{_DASH}{name} {blob}\n"


def open_note(note: str, public: Ed25519PublicKey, public_raw: bytes) -> Checkpoint:
    """Parse and verify a checkpoint note signed by `public` under its origin (CheckpointError
    names what is wrong). Signatures of other keys are ignored, as the note spec requires."""
    parts = split_note(note)
    text = parts.text
    lines = text.splitlines()
    if len(lines) < 3 or any(not line for line in lines):
        raise CheckpointError("a checkpoint has at least three non-empty lines")
    origin, size_line, root_line = lines[:3]
    if not _SIZE_RE.match(size_line):
        raise CheckpointError(f"tree size {size_line!r} is not a decimal without leading zeroes")
    try:
        root = base64.b64decode(root_line, validate=True)
    except binascii.Error:
        raise CheckpointError("root hash is not base64") from None
    if len(root) != 32:
        raise CheckpointError(f"root hash is {len(root)} bytes, not 32")
    extensions = dict(line.partition(" ")[::2] for line in lines[3:])
    try:
        heads = base64.b64decode(extensions[HEADS_EXT], validate=True)
        time_ms = int(extensions[TIME_EXT])
    except (KeyError, ValueError, binascii.Error):
        raise CheckpointError(f"no valid {HEADS_EXT} and {TIME_EXT} extension lines") from None
    key_id = note_key_id(origin, public_raw)
    verified = False
    for name, raw, _ in parts.signatures:
        if name != origin or raw[:4] != key_id:
            continue  # another key's signature (a witness, a rotated key): not ours to judge
        try:
            public.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise CheckpointError(f"the signature of {origin} does not verify") from None
        verified = True
    if not verified:
        raise CheckpointError(f"no signature by {origin} with key ID {key_id.hex()}")
    return Checkpoint(origin, int(size_line), root, heads, time_ms, note)
