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
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.crypto.signer import GatewayKey
from sealink.crypto.vkey import NOTE_ALG, vkey
from sealink.errors import SealinkError
from sealink.evidence import (
    BundleParts,
    Checkpoint,
    bundle_text,
    checkpoint_origin,
    make_bundle,
)
from sealink.evidence.receipt import receipt_json
from sealink.files import write_durably
from sealink.gateway.bundles import (
    ReceiptRefused,
    bundle_parts,
    cosigned,
    latest,
    receipt_of,
)
from sealink.ledger import Ledger

__all__ = ["checkpoint_trailer", "register"]


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
        checkpoint = cosigned(ledger, latest(ledger, args.size))
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
        checkpoint = latest(ledger, args.checkpoint)
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
        proof = ledger.log.consistency_proof(args.old_size, latest(ledger, args.new_size))
    text = (
        f"{proof.old_size} -> {proof.new_size}\nold root {proof.old_root.hex()}\n"
        f"new root {proof.new_root.hex()}\n" + "".join(f"path     {p.hex()}\n" for p in proof.path)
    )
    return _emit(args, proof.to_json(), text)


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
        return bundle_parts(
            ledger, key, config.gateway_id, args.device, args.counter, args.checkpoint
        ), key


def cmd_bundle(args: argparse.Namespace) -> int:
    out = Path(args.out or f"{args.device}-{args.counter}.bundle.json")
    parts, key = _evidence_of(args, out)
    try:
        receipt = receipt_of(parts, key)
    except ReceiptRefused:
        receipt = None  # the bundle proves the record without it
    _write_new(out, bundle_text(make_bundle(parts, receipt)).encode(), args.force)
    print(
        f"wrote {out}: {parts.device} #{parts.counter}, leaf {parts.leaf_index} of the "
        f"checkpoint of size {parts.checkpoint.size}; check it with `sealink-verify bundle {out}`",
        file=sys.stderr,
    )
    return 0


def cmd_receipt(args: argparse.Namespace) -> int:
    out = None if args.json else Path(args.out or f"{args.device}-{args.counter}.receipt.cbor")
    parts, key = _evidence_of(args, out)
    receipt = receipt_of(parts, key)
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
