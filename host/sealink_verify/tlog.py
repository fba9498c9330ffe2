"""The transparency log's primitives, written again from the texts (never from sealink):
RFC 9162 §2.1 hashing and proof verification, the C2SP signed-note / tlog-checkpoint /
tlog-cosignature formats, and the leaf and device-heads encodings of the gateway (SPEC §14).
cwt verifies the Ed25519 note signature, cryptography the witnesses' cosignatures; cbor2
encodes; hashlib hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cwt import COSEKey

__all__ = [
    "NoteError",
    "SignedCheckpoint",
    "cosigners",
    "event_leaf_data",
    "gap_leaf_data",
    "heads_digest",
    "inclusion_root",
    "mth",
    "open_checkpoint",
    "open_note",
    "rfc9162_leaf",
    "signature_lines",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
]

_COSE_KEY_X = -2
_EM_DASH = "\u2014"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def rfc9162_leaf(data: bytes) -> bytes:
    return _sha256(bytes([0]) + data)


def _interior(left: bytes, right: bytes) -> bytes:
    return _sha256(bytes([1]) + left + right)


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf *hashes*, by the RFC's definition, iteratively: combine equal-sized
    perfect subtrees left to right, then fold the rest from the right."""
    if not leaves:
        return _sha256(b"")
    stack: list[tuple[int, bytes]] = []  # (number of leaves, hash)
    for leaf in leaves:
        width, value = 1, leaf
        while stack and stack[-1][0] == width:
            _, left = stack.pop()
            width, value = width * 2, _interior(left, value)
        stack.append((width, value))
    value = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        value = _interior(left, value)
    return value


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2, step by step."""
    return inclusion_root(leaf, index, size, path) == root


def inclusion_root(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root that an inclusion path computes from a leaf hash (RFC 9162 §2.1.3.2 without the
    final comparison); None when the path does not fit the index and size."""
    if index >= size or index < 0:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn % 2 == 1 or fn == sn:
            r = _interior(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _interior(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, path: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2, step by step; equal sizes need equal roots and an empty path, and
    the empty tree is consistent with any tree."""
    if first < 0 or second < first:
        return False
    if first == second:
        return len(path) == 0 and first_hash == second_hash
    if first == 0:
        return len(path) == 0 and first_hash == _sha256(b"")
    if len(path) == 0:
        return False
    proof = list(path)
    if first & (first - 1) == 0:  # an exact power of 2
        proof = [first_hash, *proof]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = _interior(c, fr), _interior(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _interior(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0


def event_leaf_data(device: str, counter: int, event: bytes, cose: bytes) -> bytes:
    """SPEC §14.1, from the exported event and COSE_Sign1 bytes themselves."""
    return bytes(
        cbor2.dumps(
            {
                "kind": "event",
                "device": device,
                "counter": counter,
                "event": _sha256(event),
                "cose": _sha256(cose),
            },
            canonical=True,
        )
    )


def gap_leaf_data(device: str, first: int, last: int, cose: bytes) -> bytes:
    return bytes(
        cbor2.dumps(
            {"kind": "gap", "device": device, "first": first, "last": last, "cose": _sha256(cose)},
            canonical=True,
        )
    )


def heads_digest(heads: Sequence[tuple[str, int, int, bytes]]) -> bytes:
    """SHA-256 of the deterministic CBOR [[device, counter, leaf, leaf hash], ...] by device."""
    rows = [list(h) for h in sorted(heads, key=lambda h: h[0])]
    return _sha256(bytes(cbor2.dumps(rows, canonical=True)))


class NoteError(Exception):
    """A checkpoint note that is malformed or not signed by the gateway key."""


@dataclass(frozen=True)
class SignedCheckpoint:
    origin: str
    size: int
    root: bytes
    extensions: dict[str, str]
    note: str

    @property
    def heads_hash(self) -> bytes | None:
        value = self.extensions.get("sealink-heads")
        try:
            return None if value is None else base64.b64decode(value, validate=True)
        except binascii.Error:
            return None

    @property
    def time_ms(self) -> int | None:
        value = self.extensions.get("sealink-time-ms", "")
        return int(value) if value.isdigit() else None

    def summary(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "size": self.size,
            "root": self.root.hex(),
            "time_ms": self.time_ms,
        }


def signature_lines(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(text, [(key name, decoded signature), ...]) of a signed note."""
    if any(ch < " " and ch != "\n" for ch in note):
        raise NoteError("control characters in the note")
    split = note.rfind("\n\n")
    if split == -1 or not note.endswith("\n"):
        raise NoteError("no blank line between text and signatures")
    lines = []
    for line in note[split + 2 :].split("\n")[:-1]:
        dash, _, rest = line.partition(" ")
        signer, _, blob = rest.partition(" ")
        if dash != _EM_DASH or not signer or not blob:
            raise NoteError(f"malformed signature line {line!r}")
        try:
            lines.append((signer, base64.b64decode(blob, validate=True)))
        except binascii.Error:
            raise NoteError(f"the signature of {signer} is not base64") from None
    return note[: split + 1], lines


def open_note(note: str, public_key_pem: bytes, name: str | None = None) -> str:
    """Verify a C2SP signed note under the gateway key and return its text. The signature that
    counts is the one under key name `name` (default: the text's first line, a checkpoint's
    origin) whose key ID is SHA-256(name || 0x0A || 0x01 || key)[:4]; others (witnesses, other
    keys) are ignored."""
    key = COSEKey.from_pem(public_key_pem)
    raw_key = key.to_dict()[_COSE_KEY_X]
    text, lines = signature_lines(note)
    if name is None:
        name = text.split("\n", 1)[0]
    key_id = _sha256(name.encode() + b"\n\x01" + raw_key)[:4]
    good = 0
    for signer, signature in lines:
        if signer != name or signature[:4] != key_id:
            continue  # not the gateway's key: ignored, as the note spec requires
        try:
            key.verify(text.encode(), signature[4:])
        except Exception:  # cwt's VerifyError and friends: any of them means forged
            raise NoteError(f"the signature of {name} does not verify") from None
        good += 1
    if not good:
        raise NoteError(f"no signature by {name} under the given gateway key")
    return text


def open_checkpoint(note: str, public_key_pem: bytes) -> SignedCheckpoint:
    """Verify the note (open_note) and parse its C2SP tlog-checkpoint text."""
    text = open_note(note, public_key_pem)
    lines = text[:-1].split("\n")
    if len(lines) < 3 or "" in lines:
        raise NoteError("a checkpoint text is at least three non-empty lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"bad tree size {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise NoteError("root hash is not base64") from None
    if len(root) != 32:
        raise NoteError("root hash is not 32 bytes")
    extensions = {}
    for line in lines[3:]:
        ext, _, value = line.partition(" ")
        extensions[ext] = value
    return SignedCheckpoint(origin, int(size_text), root, extensions, note)


# C2SP tlog-cosignature, cosignature/v1 (SPEC §14.6) ---------------------------------------------

_COSIGNATURE_ALG = b"\x04"


def cosigners(note: str) -> list[str]:
    """The key names of every signature line of a note, in order."""
    return [name for name, _ in signature_lines(note)[1]]


def verify_cosignature(note: str, name: str, public_raw: bytes) -> int | None:
    """The time (unix seconds) at which witness `name` with Ed25519 key `public_raw` cosigned
    the note's checkpoint; None if no line has that name and key ID; NoteError if one does and
    does not verify. Its signed message: "cosignature/v1\\n", "time <seconds>\\n", then the
    whole checkpoint text; the line: key ID (4) || big-endian u64 time || signature (64)."""
    text, lines = signature_lines(note)
    key_id = _sha256(name.encode() + b"\n" + _COSIGNATURE_ALG + public_raw)[:4]
    key = Ed25519PublicKey.from_public_bytes(public_raw)
    for signer, blob in lines:
        if signer != name or blob[:4] != key_id:
            continue
        if len(blob) != 76:
            raise NoteError(f"the cosignature of {name} is {len(blob)} bytes, not 76")
        time_s = int.from_bytes(blob[4:12], "big")
        message = b"cosignature/v1\ntime " + str(time_s).encode() + b"\n" + text.encode()
        try:
            key.verify(blob[12:], message)
        except InvalidSignature:
            raise NoteError(f"the cosignature of {name} does not verify") from None
        return time_s
    return None
