"""The gateway's key history (SPEC §14.7), walked from the first key the auditor pinned.

Each later key comes with a key-transition statement: a C2SP signed note of origin
`sealink/gateway/<id>/keys` whose text is six lines: the origin, the transition's number (1
first), `old <hex kid> <base64 key>`, `new <hex kid> <base64 key>`, `size <log size>`, `time-ms
<unix ms>`,

signed by the old key and by the new one (note key IDs SHA-256(origin || 0x0A || 0x01 ||
key)[:4]). Key n+1 countersigns the leaves from index `size` on and the checkpoints of a size
above `size`; key n the ones before. Written again from the text, never from sealink.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink_verify import tlog

__all__ = [
    "Epoch",
    "KeyHistory",
    "KeyHistoryError",
    "from_document",
    "from_entries",
    "history_entries",
    "walk",
]

_TEXT = re.compile(
    r"^(sealink/gateway/[^\s+]+/keys)\n([1-9][0-9]*)\n"
    r"old ([0-9a-f]{16}) ([A-Za-z0-9+/]{43}=)\nnew ([0-9a-f]{16}) ([A-Za-z0-9+/]{43}=)\n"
    r"size (0|[1-9][0-9]*)\ntime-ms (0|[1-9][0-9]*)\n$"
)


class KeyHistoryError(Exception):
    """A key history that does not walk from the pinned key: named, without a traceback."""


def _kid(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:8]


@dataclass(frozen=True)
class Epoch:
    """One key of the history and the part of the log it signed."""

    number: int  # 1: the first key
    public: bytes  # raw Ed25519
    from_size: int  # the first leaf index it countersigns
    until_size: int | None  # the first leaf index of the next key (None: the current key)

    @property
    def kid(self) -> bytes:
        return _kid(self.public)

    def pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.public).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def name(self) -> str:
        return f"key {self.number} (kid {self.kid.hex()})"

    def leaf_problem(self, leaf: int) -> str | None:
        """Why this key may not have countersigned the leaf of that index (None: it may)."""
        if leaf < self.from_size:
            return f"{self.name()} took over at log size {self.from_size}, after leaf {leaf}"
        if self.until_size is not None and leaf >= self.until_size:
            return (
                f"{self.name()} was retired at log size {self.until_size}, before leaf {leaf}: "
                "a retired key signed it (stolen?)"
            )
        return None


@dataclass(frozen=True)
class KeyHistory:
    epochs: tuple[Epoch, ...]

    @classmethod
    def one(cls, public: bytes) -> KeyHistory:
        return cls((Epoch(1, public, 0, None),))

    @property
    def first(self) -> Epoch:
        return self.epochs[0]

    @property
    def rotated(self) -> bool:
        return len(self.epochs) > 1

    def by_kid(self, kid: bytes) -> Epoch | None:
        return next((e for e in self.epochs if e.kid == kid), None)

    def for_tree(self, size: int) -> list[Epoch]:
        """The keys that may sign a checkpoint of this tree size: those current while the tree
        had it (at a switch's size, the old key before it and the new one after)."""
        return [
            e
            for e in self.epochs
            if e.from_size <= size and (e.until_size is None or size <= e.until_size)
        ]

    def open_checkpoint(self, note: str) -> tlog.SignedCheckpoint:
        """Verify a checkpoint under a key valid for its size (NoteError otherwise)."""
        if not self.rotated:
            return tlog.open_checkpoint(note, self.first.pem())
        size_line = note.split("\n", 2)[1] if note.count("\n") >= 2 else ""
        epochs = self.for_tree(int(size_line)) if size_line.isdigit() else [self.first]
        error = tlog.NoteError("no key of the history signs a checkpoint of that size")
        for epoch in epochs:
            try:
                return tlog.open_checkpoint(note, epoch.pem())
            except tlog.NoteError as exc:
                error = exc
        names = " or ".join(e.name() for e in epochs)
        raise tlog.NoteError(f"{error} ({names} signs the checkpoints of that size)")


def _transition(note: str) -> tuple[str, int, bytes, bytes, int, int]:
    try:
        text, lines = tlog.signature_lines(note)
    except tlog.NoteError as exc:
        raise KeyHistoryError(f"a transition is not a signed note: {exc}") from None
    found = _TEXT.match(text)
    if found is None:
        raise KeyHistoryError("not a key-transition statement (SPEC §14.7)")
    origin, seq, old_kid, old_b64, new_kid, new_b64, size, time_ms = found.groups()
    try:
        old, new = (base64.b64decode(k, validate=True) for k in (old_b64, new_b64))
    except binascii.Error:
        raise KeyHistoryError(f"transition {seq}: a key is not base64") from None
    if (_kid(old).hex(), _kid(new).hex()) != (old_kid, new_kid):
        raise KeyHistoryError(f"transition {seq}: a kid is not SHA-256 of its key")
    signatures = [raw for signer, raw in lines if signer == origin]
    for role, key in (("old", old), ("new", new)):
        key_id = hashlib.sha256(origin.encode() + b"\n\x01" + key).digest()[:4]
        mine = [s for s in signatures if s[:4] == key_id]
        if not mine:
            raise KeyHistoryError(f"transition {seq}: not signed by the {role} key")
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(mine[0][4:], text.encode())
        except InvalidSignature:
            raise KeyHistoryError(
                f"transition {seq}: the {role} key's signature does not verify"
            ) from None
    return origin, int(seq), old, new, int(size), int(time_ms)


def walk(first: bytes, notes: Sequence[str], gateway_id: str | None = None) -> KeyHistory:
    """From the first key: each transition numbered in turn, of one origin (that of
    `gateway_id` when given), retiring the key before it, signed by both, never going back in
    log size or time."""
    epochs = [Epoch(1, first, 0, None)]
    time_ms = 0
    origin = None if gateway_id is None else f"sealink/gateway/{gateway_id}/keys"
    for number, note in enumerate(notes, 1):
        t_origin, seq, old, new, size, switched_ms = _transition(note)
        last = epochs[-1]
        if origin is not None and t_origin != origin:
            raise KeyHistoryError(f"transition {number} is of {t_origin}, not {origin}")
        origin = t_origin
        if seq != number:
            raise KeyHistoryError(f"transition {number} says it is number {seq}")
        if old != last.public:
            raise KeyHistoryError(
                f"transition {number} retires kid {_kid(old).hex()}, but the key before it is "
                f"kid {last.kid.hex()}: the chain skips a key"
            )
        if size < last.from_size or switched_ms < time_ms:
            raise KeyHistoryError(f"transition {number} goes back in log size or time")
        epochs[-1] = Epoch(last.number, last.public, last.from_size, size)
        epochs.append(Epoch(number + 1, new, size, None))
        time_ms = switched_ms
    return KeyHistory(tuple(epochs))


def history_entries(doc: Any) -> list[tuple[bytes, str | None]]:
    """(public key, transition note or None) of each entry of a key history: the `keys` of
    `sealink keys history --json`, a bundle's `key_history`; the first entry has no note, each
    entry's kid is SHA-256 of its key and its transition brings in that key."""
    if not isinstance(doc, list) or not doc:
        raise KeyHistoryError("a key history is a non-empty list of keys")
    entries: list[tuple[bytes, str | None]] = []
    for number, entry in enumerate(doc, 1):
        try:
            public = bytes.fromhex(entry["public_key"])
            kid = bytes.fromhex(entry["kid"])
            note = entry.get("transition")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise KeyHistoryError(f"key history entry {number}: no public_key and kid") from None
        if len(public) != 32 or _kid(public) != kid:
            raise KeyHistoryError(f"key history entry {number}: kid is not SHA-256(key)[:8]")
        if (number == 1) != (note is None) or not (note is None or isinstance(note, str)):
            raise KeyHistoryError(
                f"key history entry {number}: "
                + ("the first key has no transition" if number == 1 else "no transition")
            )
        entries.append((public, note))
    return entries


def from_entries(
    first: bytes, entries: list[tuple[bytes, str | None]], gateway_id: str | None = None
) -> KeyHistory:
    """Walk a key history's entries from the pinned first key."""
    if entries[0][0] != first:
        raise KeyHistoryError(
            f"the key history starts with kid {_kid(entries[0][0]).hex()}, not the pinned "
            f"key, kid {_kid(first).hex()}"
        )
    history = walk(first, [note for _, note in entries[1:] if note is not None], gateway_id)
    if [e.public for e in history.epochs] != [public for public, _ in entries]:
        raise KeyHistoryError("an entry's key is not the one its transition brings in")
    return history


def from_document(first: bytes, payload: bytes | str, gateway_id: str) -> KeyHistory:
    """Walk a key history document from the pinned first key: the gateway's retained
    `<prefix>/gateway/<id>/keys` (SPEC §14.7), as `sealink keys history --json` prints it."""
    try:
        doc = json.loads(payload)
        entries = history_entries(doc["keys"] if isinstance(doc, dict) else None)
    except (ValueError, KeyError) as exc:
        raise KeyHistoryError(f"not a key history document: {exc!r}") from None
    return from_entries(first, entries, gateway_id)
