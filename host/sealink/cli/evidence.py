"""`sealink evidence checkpoint|prove|consistency`: the gateway's transparency log (SPEC §14).

checkpoint                     the latest signed checkpoint (the C2SP note, with the cosignature
                               lines of the witnesses; --json lists them and adds the
                               device-heads table it commits to)
vkey                           the gateway's note verifier key, for a witness's config
prove DEVICE COUNTER           inclusion proof of the record holding that counter, against the
                               latest checkpoint (or --checkpoint SIZE)
consistency OLD [NEW]          consistency proof between two tree sizes (NEW: the latest
                               checkpoint), for an auditor who kept an older checkpoint
bundle DEVICE COUNTER          one impression's evidence bundle (SPEC §14.5): one JSON file
                               that `sealink-verify bundle` checks offline with nothing else
receipt DEVICE COUNTER         the record's COSE Receipt of inclusion (RFC 9942, SPEC §14.8)
                               against the same checkpoint as its bundle, binary CBOR

`--json` prints what `sealink verify --proof` checks offline.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.crypto.signer import GatewayKey
from sealink.crypto.vkey import NOTE_ALG, vkey
from sealink.errors import SealinkError
from sealink.evidence import (
    BundleParts,
    Checkpoint,
    CheckpointError,
    KeyTransition,
    add_signatures,
    bundle_text,
    checkpoint_keys,
    checkpoint_origin,
    heads_hash,
    keys_origin,
    leaf_key,
    make_bundle,
    open_note,
    walk,
)
from sealink.evidence.keys import kid_of
from sealink.evidence.merkle import leaf_hash, verify_inclusion
from sealink.evidence.receipt import make_receipt, receipt_json
from sealink.files import write_durably
from sealink.ledger import Ledger

__all__ = ["checkpoint_trailer", "register"]


def _latest(ledger: Ledger, size: int | None = None) -> Checkpoint:
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


def checkpoint_trailer(ledger: Ledger, checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint with the heads table it commits to (an export's last line)."""
    heads = [h.to_json() for h in ledger.log.heads(checkpoint.size)]
    return {"checkpoint": checkpoint.to_json(), "heads": heads}


def _emit(args: argparse.Namespace, body: dict[str, Any], text: str) -> int:
    if args.json:
        print_json(body)
    else:
        sys.stdout.write(text)
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger, ledger.log.snapshot():
        checkpoint = cosigned(ledger, _latest(ledger, args.size))
        body = checkpoint_trailer(ledger, checkpoint)
        body["cosignatures"] = [c.to_json() for c in ledger.log.cosignatures(checkpoint.size)]
        return _emit(args, body, checkpoint.note)


def cmd_vkey(args: argparse.Namespace) -> int:
    config = load(args)
    key = GatewayKey.load(config.key_file)
    print(vkey(checkpoint_origin(config.gateway_id), key.public_raw(), NOTE_ALG))
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger, ledger.log.snapshot():
        checkpoint = _latest(ledger, args.checkpoint)
        leaf = ledger.log.leaf_of(args.device, args.counter)
        if leaf is None:
            raise SealinkError(f"{args.device} #{args.counter} is not in the log")
        if leaf.index >= checkpoint.size:
            raise SealinkError(
                f"{args.device} #{args.counter} is leaf {leaf.index}, not yet covered by the "
                f"checkpoint of size {checkpoint.size}: ask again after the next checkpoint"
            )
        path = ledger.log.inclusion(leaf.index, checkpoint.size)
    body = {
        "type": "inclusion",
        "device": args.device,
        "counter": args.counter,
        "leaf_index": leaf.index,
        "leaf_kind": leaf.kind,
        "leaf_data": leaf.data.hex(),
        "leaf_hash": leaf.hash.hex(),
        "tree_size": checkpoint.size,
        "root": checkpoint.root.hex(),
        "path": [p.hex() for p in path],
        "checkpoint": checkpoint.note,
    }
    text = (
        f"{args.device} #{args.counter}: leaf {leaf.index} ({leaf.kind}) of {checkpoint.size}\n"
        f"leaf hash {leaf.hash.hex()}\nroot      {checkpoint.root.hex()}\n"
        + "".join(f"path      {p.hex()}\n" for p in path)
    )
    return _emit(args, body, text)


def cmd_consistency(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger, ledger.log.snapshot():
        proof = ledger.log.consistency_proof(args.old_size, _latest(ledger, args.new_size))
    text = (
        f"{proof.old_size} -> {proof.new_size}\nold root {proof.old_root.hex()}\n"
        f"new root {proof.new_root.hex()}\n" + "".join(f"path     {p.hex()}\n" for p in proof.path)
    )
    return _emit(args, proof.to_json(), text)


def _bundle_parts(
    ledger: Ledger, key: GatewayKey, gateway_id: str, args: argparse.Namespace
) -> BundleParts:
    device, counter = args.device, args.counter
    record = ledger.device_record(device)  # its own snapshot: before the log's
    if record is None:
        raise SealinkError(f"unknown device {device} (registered: {ledger.device_ids()})")
    if record.seal_key is None:
        raise SealinkError(f"{device} has no seal key registered: none of its records verify")
    with ledger.log.snapshot():
        checkpoint = cosigned(ledger, _latest(ledger, args.checkpoint))
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


def _write_new(path: Path, data: bytes, force: bool) -> None:
    """Write evidence, for others to read (no secret in it), whole or not at all; without
    `force`, never over an existing file."""
    try:
        write_durably(path, data, mode=0o644, replace=force)
    except FileExistsError:
        raise SealinkError(f"{path} exists; not overwriting (--force)") from None


def _evidence_of(args: argparse.Namespace, out: Path | None) -> tuple[BundleParts, GatewayKey]:
    """The bundle's parts and the gateway key, refusing early to replace `out`."""
    config = load(args)
    if out is not None and out.exists() and not args.force:
        raise SealinkError(f"{out} exists; not overwriting (--force)")
    key = GatewayKey.load(config.key_file)
    with open_ledger(config) as ledger:
        return _bundle_parts(ledger, key, config.gateway_id, args), key


class ReceiptRefused(SealinkError):
    """No receipt of this record and checkpoint: the gateway may not sign one (SPEC §14.8)."""


def cmd_bundle(args: argparse.Namespace) -> int:
    out = Path(args.out or f"{args.device}-{args.counter}.bundle.json")
    parts, key = _evidence_of(args, out)
    try:
        receipt = _receipt(parts, key)
    except ReceiptRefused:
        receipt = None  # the bundle proves the record without it
    _write_new(out, bundle_text(make_bundle(parts, receipt)).encode(), args.force)
    print(
        f"wrote {out}: {parts.device} #{parts.counter}, leaf {parts.leaf_index} of the "
        f"checkpoint of size {parts.checkpoint.size}; check it with `sealink-verify bundle {out}`",
        file=sys.stderr,
    )
    return 0


def _receipt(parts: BundleParts, key: GatewayKey) -> bytes:
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


def cmd_receipt(args: argparse.Namespace) -> int:
    out = None if args.json else Path(args.out or f"{args.device}-{args.counter}.receipt.cbor")
    parts, key = _evidence_of(args, out)
    receipt = _receipt(parts, key)
    if out is None:
        print_json({"device": parts.device, "counter": parts.counter, **receipt_json(receipt)})
        return 0
    _write_new(out, receipt, args.force)
    print(
        f"wrote {out}: {parts.device} #{parts.counter}, leaf {parts.leaf_index} of the "
        f"checkpoint of size {parts.checkpoint.size}, {len(receipt)} bytes; check it with "
        f"`sealink-verify receipt {out} --bundle BUNDLE --gateway-key PEM`",
        file=sys.stderr,
    )
    return 0


def _one_record(p: argparse.ArgumentParser, default_out: str) -> None:
    """The arguments of a command that writes one record's evidence to a file."""
    with_config(p)
    p.add_argument("device")
    p.add_argument("counter", type=int)
    p.add_argument("--out", "-o", metavar="FILE", help=f"default: {default_out}")
    p.add_argument("--checkpoint", type=int, metavar="SIZE", help="default: the latest")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")


def register(sub: Any) -> None:
    evidence = sub.add_parser("evidence", help="the transparency log: checkpoints and proofs")
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    p = add_command(ev_sub, "checkpoint", cmd_checkpoint, "the latest signed checkpoint")
    with_config(p)
    p.add_argument("--size", type=int, help="the checkpoint of this tree size instead")
    p.add_argument(
        "--json", action="store_true", help="JSON, with the cosignatures and the device heads"
    )
    p = add_command(ev_sub, "vkey", cmd_vkey, "the gateway's note verifier key, for witnesses")
    with_config(p)
    p = add_command(ev_sub, "prove", cmd_prove, "inclusion proof of one record")
    with_config(p)
    p.add_argument("device")
    p.add_argument("counter", type=int)
    p.add_argument("--checkpoint", type=int, metavar="SIZE", help="default: the latest")
    p.add_argument("--json", action="store_true")
    p = add_command(ev_sub, "consistency", cmd_consistency, "consistency proof of two sizes")
    with_config(p)
    p.add_argument("old_size", type=int, metavar="OLD_SIZE")
    p.add_argument("new_size", type=int, nargs="?", metavar="NEW_SIZE", help="default: latest")
    p.add_argument("--json", action="store_true")
    p = add_command(ev_sub, "bundle", cmd_bundle, "one impression's evidence, in one file")
    _one_record(p, "DEVICE-COUNTER.bundle.json")
    p = add_command(ev_sub, "receipt", cmd_receipt, "one record's COSE Receipt (RFC 9942)")
    _one_record(p, "DEVICE-COUNTER.receipt.cbor")
    p.add_argument("--json", action="store_true", help="print its fields (hex) instead")
