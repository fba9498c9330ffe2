"""What one leaf of the gateway's log is, and the device-heads table a checkpoint commits to.

Leaf data (deterministic CBOR, text keys, SPEC §14.1):

    event: {"cose": SHA-256(COSE_Sign1), "kind": "event", "event": SHA-256(EVENT bytes),
            "device": tstr, "counter": uint}
    gap:   {"cose": SHA-256(gap COSE_Sign1), "kind": "gap", "device": tstr, "first": uint,
            "last": uint}

Heads (SPEC §14.3): [[device, counter, leaf index, leaf hash], ...] sorted by device, one entry
per device with a leaf in the tree: its newest leaf and the highest counter it covers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cbor2

from sealink.crypto.signer import cbor_head

__all__ = [
    "Head",
    "event_leaf",
    "event_leaf_reference",
    "gap_leaf",
    "heads_cbor",
    "heads_hash",
]


# The event leaf's map (5 pairs) in deterministic key order (length first, then bytewise):
# "cose", "kind" (= "event"), "event", "device", "counter".
_EV_HEAD = b"\xa5\x64cose\x58\x20"
_EV_KIND = b"\x64kind\x65event\x65event\x58\x20"
_EV_COUNTER = b"\x67counter"
_U64_END = 1 << 64


def event_leaf(device: str, counter: int, event_hash: bytes, cose: bytes) -> bytes:
    """The leaf data of a stored event: `event_hash` is SHA-256 of its wire bytes (the ledger's
    `hash` column, the chain's prev of the next record). Assembled from fixed pieces, once per
    event on the commit path: the same bytes as `event_leaf_reference` (the tests check)."""
    if len(event_hash) != 32 or not 0 <= counter < _U64_END:
        return event_leaf_reference(device, counter, event_hash, cose)
    raw = device.encode()
    return b"".join(
        (
            _EV_HEAD,
            hashlib.sha256(cose).digest(),
            _EV_KIND,
            event_hash,
            b"\x66device",
            cbor_head(3, len(raw)),
            raw,
            _EV_COUNTER,
            cbor_head(0, counter),
        )
    )


def event_leaf_reference(device: str, counter: int, event_hash: bytes, cose: bytes) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "cose": hashlib.sha256(cose).digest(),
                "kind": "event",
                "event": event_hash,
                "device": device,
                "counter": counter,
            },
            canonical=True,
        )
    )


def gap_leaf(device: str, first: int, last: int, cose: bytes) -> bytes:
    return bytes(
        cbor2.dumps(
            {
                "cose": hashlib.sha256(cose).digest(),
                "kind": "gap",
                "device": device,
                "first": first,
                "last": last,
            },
            canonical=True,
        )
    )


@dataclass(frozen=True, slots=True)
class Head:
    """A device's newest leaf in a tree: the highest counter it covers, where, its hash."""

    device: str
    counter: int
    leaf: int
    hash: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "counter": self.counter,
            "leaf": self.leaf,
            "hash": self.hash.hex(),
        }


def heads_cbor(heads: list[Head]) -> bytes:
    rows = [[h.device, h.counter, h.leaf, h.hash] for h in sorted(heads, key=lambda h: h.device)]
    return bytes(cbor2.dumps(rows, canonical=True))


def heads_hash(heads: list[Head]) -> bytes:
    return hashlib.sha256(heads_cbor(heads)).digest()
