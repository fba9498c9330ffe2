"""The gateway's transparency log (SPEC §14): RFC 9162 Merkle tree over every stored record,
C2SP signed checkpoints that also commit to every device's head, inclusion and consistency
proofs. Pure: the ledger stores the nodes (sealink.ledger.log), the service signs on a timer."""

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
)

__all__ = [
    "EMPTY_ROOT",
    "Checkpoint",
    "CheckpointError",
    "Frontier",
    "Head",
    "checkpoint_origin",
    "consistency_path",
    "event_leaf",
    "gap_leaf",
    "heads_cbor",
    "heads_hash",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "note_key_id",
    "open_note",
    "sign_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]
