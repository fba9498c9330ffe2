"""Witness cosignatures of checkpoints: C2SP tlog-cosignature v1, Ed25519 (SPEC §14.6).

A cosignature is one more signature line of the checkpoint's signed note:

    — <witness name> <base64(key ID (4) || timestamp (8, big-endian) || Ed25519 signature (64))>

key ID = SHA-256(name || 0x0A || 0x04 || 32-byte public key)[:4] (crypto/vkey.py, which also
reads and writes the witness's verifier key); the signature is over

    cosignature/v1\\n
    time <timestamp, unix seconds, decimal>\\n
    <the whole checkpoint text, extension lines and final newline included>
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealink.crypto.vkey import COSIGNATURE_ALG, note_key_id
from sealink.evidence.note import CheckpointError, split_note

__all__ = [
    "Cosignature",
    "add_signatures",
    "cosign",
    "cosignature_key_id",
    "verify_cosignature",
]

_DASH = "\u2014 "
_HEADER = "cosignature/v1\n"
_MAX_TIME = (1 << 63) - 1


def cosignature_key_id(name: str, public_raw: bytes) -> bytes:
    return note_key_id(name, COSIGNATURE_ALG, public_raw)


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _message(text: str, time_s: int) -> bytes:
    return f"{_HEADER}time {time_s}\n{text}".encode()


@dataclass(frozen=True)
class Cosignature:
    witness: str
    time_s: int
    line: str

    def to_json(self) -> dict[str, object]:
        return {"witness": self.witness, "time_s": self.time_s, "line": self.line}


def cosign(private: Ed25519PrivateKey, name: str, text: str, time_s: int) -> Cosignature:
    """Cosign a checkpoint's text (a note's text, final newline included) at `time_s`."""
    if not 0 <= time_s <= _MAX_TIME:
        raise CheckpointError(f"cosignature time {time_s} is not a u64 below 2^63")
    signature = private.sign(_message(text, time_s))
    key_id = cosignature_key_id(name, _raw(private.public_key()))
    blob = base64.b64encode(key_id + time_s.to_bytes(8, "big") + signature).decode()
    return Cosignature(name, time_s, f"{_DASH}{name} {blob}")


def verify_cosignature(note: str, name: str, public_raw: bytes) -> Cosignature | None:
    """The cosignature of witness `name` (key `public_raw`) on `note`: None if the note has no
    line of that name and key ID; CheckpointError if it has one that does not verify."""
    parts = split_note(note)
    key_id = cosignature_key_id(name, public_raw)
    public = Ed25519PublicKey.from_public_bytes(public_raw)
    for signer, raw, line in parts.signatures:
        if signer != name or raw[:4] != key_id:
            continue
        if len(raw) != 4 + 8 + 64:
            raise CheckpointError(f"the cosignature of {name} is {len(raw)} bytes, not 76")
        time_s = int.from_bytes(raw[4:12], "big")
        try:
            public.verify(raw[12:], _message(parts.text, time_s))
        except InvalidSignature:
            raise CheckpointError(f"the cosignature of {name} does not verify") from None
        return Cosignature(name, time_s, line)
    return None


def add_signatures(note: str, lines: list[str]) -> str:
    """The note with more signature lines (those it already carries are not repeated)."""
    have = {line for _, _, line in split_note(note).signatures}
    return note + "".join(f"{line}\n" for line in lines if line not in have)
