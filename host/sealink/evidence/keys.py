"""The gateway's key history (SPEC §14.7): key-transition statements, C2SP signed notes signed by
the key that retires and by the key that takes over.

    sealink/gateway/<id>/keys\n               origin (also both signatures' key name)
    <n>\n                                     the transition's number, 1 for the first
    old <hex kid> <base64 old key>\n          the retiring Ed25519 key (raw 32 bytes) and its kid
    new <hex kid> <base64 new key>\n          the key that takes over
    size <log size>\n                         leaves from this index on are the new key's
    time-ms <unix ms>\n                       when the gateway switched
    \n
    — <origin> <base64(key ID of the old key || its signature)>\n
    — <origin> <base64(key ID of the new key || its signature)>\n

kid = SHA-256(key)[:8] (SPEC §11.1); key ID = SHA-256(origin || 0x0A || 0x01 || key)[:4]. A
key is valid for the leaves from its transition's `size` up to the next one's, and for the
checkpoints of a size above its `size` up to the next one's (the first key from size 0).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.crypto.signer import GatewayKey
from sealink.evidence.note import CheckpointError, checkpoint_origin, note_key_id, split_note

__all__ = [
    "HISTORY_FORMAT",
    "KeyHistoryError",
    "KeyTransition",
    "checkpoint_keys",
    "history_document",
    "history_entries",
    "keys_origin",
    "kid_of",
    "leaf_key",
    "open_transition",
    "sign_transition",
    "walk",
]

HISTORY_FORMAT = "sealink-key-history"
_DECIMAL = r"(0|[1-9][0-9]*)"
_KEY_LINE = r"([0-9a-f]{16}) ([A-Za-z0-9+/]{43}=)"
_TEXT_RE = re.compile(
    rf"^([^\s+]+)\n([1-9][0-9]*)\nold {_KEY_LINE}\nnew {_KEY_LINE}\n"
    rf"size {_DECIMAL}\ntime-ms {_DECIMAL}\n$"
)


class KeyHistoryError(CheckpointError):
    """A key-transition statement or a chain of them that does not hold."""


def keys_origin(gateway_id: str) -> str:
    return f"{checkpoint_origin(gateway_id)}/keys"


def kid_of(public_raw: bytes) -> bytes:
    return hashlib.sha256(public_raw).digest()[:8]


@dataclass(frozen=True)
class KeyTransition:
    origin: str
    seq: int
    old: bytes  # raw 32-byte Ed25519 public keys
    new: bytes
    size: int
    time_ms: int
    note: str


def _text(origin: str, seq: int, old: bytes, new: bytes, size: int, time_ms: int) -> str:
    def line(raw: bytes) -> str:
        return f"{kid_of(raw).hex()} {base64.b64encode(raw).decode()}"

    return f"{origin}\n{seq}\nold {line(old)}\nnew {line(new)}\nsize {size}\ntime-ms {time_ms}\n"


def sign_transition(
    old: GatewayKey, new: GatewayKey, origin: str, seq: int, size: int, time_ms: int
) -> KeyTransition:
    """The transition from `old` to `new`, signed by both (the old key's line first)."""
    if old.public_raw() == new.public_raw():
        raise KeyHistoryError("a key transition needs a new key")
    text = _text(origin, seq, old.public_raw(), new.public_raw(), size, time_ms)
    lines = [
        "\u2014 "
        + origin
        + " "
        + base64.b64encode(
            note_key_id(origin, k.public_raw()) + k.private.sign(text.encode())
        ).decode()
        for k in (old, new)
    ]
    note = text + "\n" + "".join(f"{line}\n" for line in lines)
    return KeyTransition(origin, seq, old.public_raw(), new.public_raw(), size, time_ms, note)


def open_transition(note: str) -> KeyTransition:
    """Parse a transition and check that both the old and the new key signed it."""
    parts = split_note(note)
    found = _TEXT_RE.match(parts.text)
    if found is None:
        raise KeyHistoryError("not a key-transition statement (SPEC §14.7)")
    origin, seq, old_kid, old_b64, new_kid, new_b64, size, time_ms = found.groups()
    try:
        old, new = (base64.b64decode(k, validate=True) for k in (old_b64, new_b64))
    except binascii.Error:
        raise KeyHistoryError("a key in the transition is not base64") from None
    if kid_of(old).hex() != old_kid or kid_of(new).hex() != new_kid:
        raise KeyHistoryError("a kid in the transition is not SHA-256 of its key")
    if old == new:
        raise KeyHistoryError("the transition names the same key twice")
    for role, raw in (("old", old), ("new", new)):
        key_id = note_key_id(origin, raw)
        lines = [sig for name, sig, _ in parts.signatures if name == origin and sig[:4] == key_id]
        if not lines:
            raise KeyHistoryError(f"transition {seq}: no signature by the {role} key")
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(lines[0][4:], parts.text.encode())
        except InvalidSignature:
            raise KeyHistoryError(f"transition {seq}: the {role} key's signature fails") from None
    return KeyTransition(origin, int(seq), old, new, int(size), int(time_ms), note)


def walk(first: bytes, notes: Sequence[str], origin: str) -> list[KeyTransition]:
    """Check a chain of transitions from the first key: each numbered in turn, of `origin`,
    signed by the key before it and the next, at a log size and time not before the last."""
    chain: list[KeyTransition] = []
    current, size, time_ms = first, 0, 0
    for number, note in enumerate(notes, 1):
        t = open_transition(note)
        if t.origin != origin:
            raise KeyHistoryError(f"transition {number} is of {t.origin}, not {origin}")
        if t.seq != number:
            raise KeyHistoryError(f"transition {number} says it is number {t.seq}")
        if t.old != current:
            raise KeyHistoryError(
                f"transition {number} retires kid {kid_of(t.old).hex()}, but the key then was "
                f"kid {kid_of(current).hex()}: the chain skips a key"
            )
        if t.size < size or t.time_ms < time_ms:
            raise KeyHistoryError(f"transition {number} goes back in log size or time")
        chain.append(t)
        current, size, time_ms = t.new, t.size, t.time_ms
    return chain


def leaf_key(first: bytes, chain: Sequence[KeyTransition], leaf: int) -> bytes:
    """The key that countersigned the leaf of that index."""
    key = first
    for t in chain:
        if leaf >= t.size:
            key = t.new
    return key


def checkpoint_keys(first: bytes, chain: Sequence[KeyTransition], tree_size: int) -> list[bytes]:
    """The keys that may sign a checkpoint of that size: those current while the tree had it
    (at a switch's size, the old key before the switch and the new one after it)."""
    bounds = [0, *(t.size for t in chain), None]
    keys = [first, *(t.new for t in chain)]
    return [
        key
        for key, start, end in zip(keys, bounds, bounds[1:], strict=False)
        if start is not None and start <= tree_size and (end is None or tree_size <= end)
    ]


def history_entries(first: bytes, chain: Sequence[KeyTransition]) -> list[dict[str, Any]]:
    """The key history as a bundle and `sealink keys history --json` carry it: the first key,
    then each later key with the transition that brought it in, oldest first."""
    entries: list[dict[str, Any]] = [{"public_key": first.hex(), "kid": kid_of(first).hex()}]
    for t in chain:
        entries.append(
            {"public_key": t.new.hex(), "kid": kid_of(t.new).hex(), "transition": t.note}
        )
    return entries


def history_document(
    gateway_id: str, first: bytes, chain: Sequence[KeyTransition]
) -> dict[str, Any]:
    """`sealink keys history --json`, an export's first line and the service's retained keys
    topic: {"format", "gateway", "keys": history_entries}."""
    return {
        "format": HISTORY_FORMAT,
        "gateway": gateway_id,
        "keys": history_entries(first, chain),
    }
