"""The gateway's transparency log (SPEC §14): RFC 9162 Merkle tree over every stored record,
C2SP signed checkpoints that also commit to every device's head, inclusion and consistency
proofs, one impression's evidence bundle. Pure: the ledger stores the nodes
(sealink.ledger.log), the service signs on a timer."""

from sealink.evidence.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    BUNDLE_VERSION_ROTATED,
    BundleParts,
    bundle_text,
    make_bundle,
)
from sealink.evidence.cosign import (
    Cosignature,
    add_signatures,
    cosign,
    verify_cosignature,
)
from sealink.evidence.keys import (
    KeyHistoryError,
    KeyTransition,
    checkpoint_keys,
    history_document,
    keys_origin,
    leaf_key,
    open_transition,
    sign_transition,
    walk,
)
from sealink.evidence.leaf import Head, event_leaf, gap_leaf, heads_cbor, heads_hash
from sealink.evidence.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from sealink.evidence.note import (
    Checkpoint,
    CheckpointError,
    checkpoint_origin,
    note_key_id,
    open_note,
    sign_checkpoint,
    split_note,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "BUNDLE_VERSION_ROTATED",
    "EMPTY_ROOT",
    "BundleParts",
    "Checkpoint",
    "CheckpointError",
    "Cosignature",
    "Frontier",
    "Head",
    "KeyHistoryError",
    "KeyTransition",
    "add_signatures",
    "bundle_text",
    "checkpoint_keys",
    "checkpoint_origin",
    "consistency_path",
    "cosign",
    "event_leaf",
    "gap_leaf",
    "heads_cbor",
    "heads_hash",
    "history_document",
    "inclusion_path",
    "keys_origin",
    "leaf_hash",
    "leaf_key",
    "make_bundle",
    "node_hash",
    "note_key_id",
    "open_note",
    "open_transition",
    "sign_checkpoint",
    "sign_transition",
    "split_note",
    "verify_consistency",
    "verify_cosignature",
    "verify_inclusion",
    "walk",
]
