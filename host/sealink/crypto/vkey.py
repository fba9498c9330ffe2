"""C2SP signed-note verifier keys (vkeys): `<name>+<hex key ID>+<base64(algorithm || key)>`.

key ID = SHA-256(name || 0x0A || algorithm byte || public key)[:4]. Algorithm 0x01 is an Ed25519
note signature (a gateway's checkpoints, SPEC §14.2), 0x04 an Ed25519 cosignature/v1 (a
witness's, SPEC §14.6).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

__all__ = ["COSIGNATURE_ALG", "NOTE_ALG", "note_key_id", "parse_vkey", "vkey"]

NOTE_ALG = 0x01
COSIGNATURE_ALG = 0x04


def note_key_id(name: str, alg: int, public_raw: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_raw).digest()[:4]


def vkey(name: str, public_raw: bytes, alg: int) -> str:
    key = base64.b64encode(bytes([alg]) + public_raw).decode()
    return f"{name}+{note_key_id(name, alg, public_raw).hex()}+{key}"


def parse_vkey(text: str, alg: int) -> tuple[str, bytes]:
    """(name, raw 32-byte Ed25519 public key) of a vkey of algorithm `alg`; ValueError says
    what is wrong."""
    text = text.strip()
    parts = text.split("+", 2)  # a name has no '+', a key ID neither; base64 may
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"vkey {text!r}: not NAME+KEYID+KEY")
    name, _, blob = parts
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        raise ValueError(f"vkey {text!r}: the key is not base64") from None
    if len(raw) != 33 or raw[0] != alg:
        raise ValueError(f"vkey {text!r}: not an Ed25519 key of algorithm 0x{alg:02x}")
    if vkey(name, raw[1:], alg) != text:
        raise ValueError(f"vkey {text!r}: its key ID does not match its name and key")
    return name, raw[1:]
