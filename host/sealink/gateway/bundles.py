"""One impression's evidence bundle (SPEC §14.5) and its receipt (§14.8), built from the
ledger: for `sealink evidence bundle|receipt` and for an approver's `bundle` request (§11.5),
one code for both.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.crypto.signer import GatewayKey
from sealink.errors import SealinkError
from sealink.evidence import (
    BundleParts,
    Checkpoint,
    CheckpointError,
    KeyTransition,
    add_signatures,
    bundle_text,
    checkpoint_keys,
    heads_hash,
    keys_origin,
    leaf_key,
    make_bundle,
    open_note,
    walk,
)
from sealink.evidence.keys import kid_of
from sealink.evidence.merkle import leaf_hash, verify_inclusion
from sealink.evidence.receipt import make_receipt
from sealink.ledger import Ledger

__all__ = [
    "ReceiptRefused",
    "bundle_base64",
    "bundle_parts",
    "cosigned",
    "latest",
    "receipt_of",
]


def latest(ledger: Ledger, size: int | None = None) -> Checkpoint:
    checkpoint = ledger.log.checkpoint(size)
    if checkpoint is None:
        if size is not None:
            raise SealinkError(
                f"no checkpoint of size {size} (known: {ledger.log.checkpoint_sizes()})"
            )
        raise SealinkError(
            "no checkpoint yet: the service signs one every ledger.checkpoint_interval_s "
            "while the log grows, and when it stops"
        )
    return checkpoint


def cosigned(ledger: Ledger, checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint with the witnesses' cosignature lines the ledger keeps for it."""
    lines = [c.line for c in ledger.log.cosignatures(checkpoint.size)]
    return dataclasses.replace(checkpoint, note=add_signatures(checkpoint.note, lines))


def bundle_parts(
    ledger: Ledger,
    key: GatewayKey,
    gateway_id: str,
    device: str,
    counter: int,
    checkpoint_size: int | None = None,
) -> BundleParts:
    """Everything one record's evidence bundle holds (SPEC §14.5), read from the ledger and
    checked against the key history; SealinkError names what is missing or wrong."""
    record = ledger.device_record(device)  # its own snapshot: before the log's
    if record is None:
        raise SealinkError(f"unknown device {device} (registered: {ledger.device_ids()})")
    if record.seal_key is None:
        raise SealinkError(f"{device} has no seal key registered: none of its records verify")
    with ledger.log.snapshot():
        checkpoint = cosigned(ledger, latest(ledger, checkpoint_size))
        leaf = ledger.log.leaf_of(device, counter)
        if leaf is None:
            raise SealinkError(f"{device} #{counter} is not in the log")
        if leaf.kind != "event":
            raise SealinkError(
                f"{device} #{counter} is in the gap {leaf.first}..{leaf.last} an operator "
                "declared lost: there is no record to bundle"
            )
        if leaf.index >= checkpoint.size:
            raise SealinkError(
                f"{device} #{counter} is leaf {leaf.index}, not yet covered by the checkpoint "
                f"of size {checkpoint.size}: ask again after the next checkpoint"
            )
        row = next(ledger.events(device, counter, 1))
        path = ledger.log.inclusion(leaf.index, checkpoint.size)
        heads = ledger.log.heads(checkpoint.size)
        chain = ledger.key_history.transitions()
    if heads_hash(heads) != checkpoint.heads_hash:
        raise SealinkError(
            f"the ledger's device heads at size {checkpoint.size} are not the ones its "
            "checkpoint signed: the ledger was changed"
        )
    first = chain[0].old if chain else key.public_raw()
    walk(first, [t.note for t in chain], keys_origin(gateway_id))
    _signed_by(first, chain, checkpoint, row["cose"], leaf.index, f"{device} #{counter}")
    return BundleParts(
        gateway_id=gateway_id,
        gateway_key=first,
        device=device,
        counter=counter,
        event=row["event"],
        cose=row["cose"],
        seal_key=record.seal_key,
        leaf_index=leaf.index,
        leaf_data=leaf.data,
        path=path,
        checkpoint=checkpoint,
        heads=heads,
        transitions=chain,
    )


def _signed_by(
    first: bytes,
    chain: Sequence[KeyTransition],
    checkpoint: Checkpoint,
    cose: bytes,
    leaf: int,
    what: str,
) -> None:
    """Refuse to write a bundle whose record or checkpoint was signed by another key than the
    one the key history names for it (SPEC §14.7): a key replaced without `keys rotate`."""
    signer = leaf_key(first, chain, leaf)
    protected = cbor2.loads(cbor2.loads(cose).value[0])
    if protected.get(4) != kid_of(signer):
        raise SealinkError(
            f"{what} was countersigned under another gateway key than the key history names "
            f"for it (kid {kid_of(signer).hex()}): the key was replaced without `sealink keys "
            "rotate`, no key history to bundle"
        )
    candidates = checkpoint_keys(first, chain, checkpoint.size)
    for note_key in candidates:
        try:
            open_note(checkpoint.note, Ed25519PublicKey.from_public_bytes(note_key), note_key)
            return
        except CheckpointError:
            continue
    kids = " or ".join(kid_of(k).hex() for k in candidates)
    raise SealinkError(
        f"the checkpoint of size {checkpoint.size} was signed under another gateway key than "
        f"the key history names for it (kid {kids}): no key history to bundle"
    )


class ReceiptRefused(SealinkError):
    """No receipt of this record and checkpoint: the gateway may not sign one (SPEC §14.8)."""


def receipt_of(parts: BundleParts, key: GatewayKey) -> bytes:
    """Sign the receipt of the bundle's leaf and checkpoint size (SPEC §14.8): only with a key
    the key history names for that size, over the root that checkpoint signed."""
    size, what = parts.checkpoint.size, f"{parts.device} #{parts.counter}"
    current = parts.transitions[-1].new if parts.transitions else parts.gateway_key
    if key.public_raw() != current:
        raise ReceiptRefused(
            f"the key file's key (kid {key.kid.hex()}) is not the last key of the key history "
            f"(kid {kid_of(current).hex()}): finish `sealink keys rotate` first"
        )
    if key.public_raw() not in checkpoint_keys(parts.gateway_key, parts.transitions, size):
        raise ReceiptRefused(
            f"the checkpoint of size {size} belongs to a retired gateway key, which the gateway "
            "no longer holds: ask for a receipt against a checkpoint signed since the last "
            "`sealink keys rotate` (--checkpoint SIZE)"
        )
    leaf = leaf_hash(parts.leaf_data)
    if not verify_inclusion(leaf, parts.leaf_index, size, parts.path, parts.checkpoint.root):
        raise ReceiptRefused(
            f"{what}: the ledger's inclusion path does not reach the root its checkpoint of "
            f"size {size} signed: the ledger was changed"
        )
    if not parts.path:
        raise ReceiptRefused(
            f"{what} is the only leaf of the checkpoint of size {size}: an RFC 9942 receipt "
            "needs an inclusion path of at least one node; ask again after the next checkpoint"
        )
    return make_receipt(key, size, parts.leaf_index, parts.path, parts.checkpoint.root)


def bundle_base64(
    ledger: Ledger, key: GatewayKey, gateway_id: str, device: str, counter: int
) -> str:
    """The bundle file `sealink evidence bundle` writes, against the latest checkpoint, in
    base64: with its receipt when the gateway may sign one, without it otherwise."""
    parts = bundle_parts(ledger, key, gateway_id, device, counter)
    try:
        receipt = receipt_of(parts, key)
    except ReceiptRefused:
        receipt = None  # the bundle proves the record without it
    return base64.b64encode(bundle_text(make_bundle(parts, receipt)).encode()).decode()
