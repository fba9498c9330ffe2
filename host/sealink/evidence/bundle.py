"""One impression's evidence bundle (SPEC §14.5): everything an auditor needs to check it
offline, in one JSON document.

    {"format": "sealink-evidence-bundle", "version": 1, "device", "counter",
     "record" (hex EVENT), "seal": {"public_key"}, "countersignature" (hex COSE_Sign1),
     "gateway": {"id", "public_key", "kid"}, "leaf": {"index", "data"},
     "inclusion": {"tree_size", "path"}, "checkpoint": {"note"}, "heads": [...],
     "key_history": [{"public_key", "kid"}]}

Version 2, written only by a gateway that rotated its key (SPEC §14.7): `gateway` is its current
key, and `key_history` the whole chain, each entry after the first with its "transition".
Either version may carry "receipt" (hex), the record's COSE Receipt (SPEC §14.8): a field older
verifiers ignore, so it needs no new version.
Pure: the CLI reads the parts from the ledger in one snapshot and writes the file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sealink.evidence.keys import KeyTransition, history_entries
from sealink.evidence.leaf import Head
from sealink.evidence.note import Checkpoint

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BUNDLE_VERSION_ROTATED",
    "BundleParts",
    "bundle_text",
    "make_bundle",
]

BUNDLE_FORMAT = "sealink-evidence-bundle"
BUNDLE_VERSION = 1
BUNDLE_VERSION_ROTATED = 2


@dataclass(frozen=True)
class BundleParts:
    """What the ledger holds of one stored event and the checkpoint that covers it."""

    gateway_id: str
    gateway_key: bytes  # raw 32-byte Ed25519 public key: the first of the key history
    device: str
    counter: int
    event: bytes
    cose: bytes
    seal_key: bytes  # X || Y
    leaf_index: int
    leaf_data: bytes
    path: Sequence[bytes]
    checkpoint: Checkpoint
    heads: Sequence[Head]
    transitions: Sequence[KeyTransition] = ()  # from gateway_key on, oldest first


def _key(public: bytes) -> dict[str, str]:
    return {"public_key": public.hex(), "kid": hashlib.sha256(public).digest()[:8].hex()}


def make_bundle(parts: BundleParts, receipt: bytes | None = None) -> dict[str, Any]:
    current = parts.transitions[-1].new if parts.transitions else parts.gateway_key
    bundle = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION_ROTATED if parts.transitions else BUNDLE_VERSION,
        "device": parts.device,
        "counter": parts.counter,
        "record": parts.event.hex(),
        "seal": {"public_key": parts.seal_key.hex()},
        "countersignature": parts.cose.hex(),
        "gateway": {"id": parts.gateway_id, **_key(current)},
        "leaf": {"index": parts.leaf_index, "data": parts.leaf_data.hex()},
        "inclusion": {
            "tree_size": parts.checkpoint.size,
            "path": [p.hex() for p in parts.path],
        },
        "checkpoint": {"note": parts.checkpoint.note},
        "heads": [h.to_json() for h in sorted(parts.heads, key=lambda h: h.device)],
        "key_history": history_entries(parts.gateway_key, parts.transitions),
    }
    if receipt is not None:
        bundle["receipt"] = receipt.hex()
    return bundle


def bundle_text(bundle: dict[str, Any]) -> str:
    """Stable bytes for one bundle: sorted keys, two-space indent, UTF-8."""
    return json.dumps(bundle, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
