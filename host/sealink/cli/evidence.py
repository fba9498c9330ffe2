"""`sealink evidence checkpoint|prove|consistency`: the gateway's transparency log (SPEC §14).

checkpoint                     the latest signed checkpoint (the C2SP note; --json adds the
                               device-heads table it commits to)
prove DEVICE COUNTER           inclusion proof of the record holding that counter, against the
                               latest checkpoint (or --checkpoint SIZE)
consistency OLD [NEW]          consistency proof between two tree sizes (NEW: the latest
                               checkpoint), for an auditor who kept an older checkpoint

`--json` prints what `sealink verify --proof` checks offline.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.errors import SealinkError
from sealink.evidence import Checkpoint
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
        checkpoint = _latest(ledger, args.size)
        return _emit(args, checkpoint_trailer(ledger, checkpoint), checkpoint.note)


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
        new = _latest(ledger, args.new_size)
        if not 0 <= args.old_size <= new.size:
            raise SealinkError(f"old size {args.old_size} must be between 0 and {new.size}")
        old = ledger.log.checkpoint(args.old_size)
        old_root = ledger.log.root(args.old_size)
        path = ledger.log.consistency(args.old_size, new.size)
    body = {
        "type": "consistency",
        "old_size": args.old_size,
        "new_size": new.size,
        "old_root": old_root.hex(),
        "new_root": new.root.hex(),
        "path": [p.hex() for p in path],
        "old_checkpoint": None if old is None else old.note,
        "new_checkpoint": new.note,
    }
    text = (
        f"{args.old_size} -> {new.size}\nold root {old_root.hex()}\nnew root {new.root.hex()}\n"
        + "".join(f"path     {p.hex()}\n" for p in path)
    )
    return _emit(args, body, text)


def register(sub: Any) -> None:
    evidence = sub.add_parser("evidence", help="the transparency log: checkpoints and proofs")
    ev_sub = evidence.add_subparsers(dest="evidence_command", required=True, metavar="ACTION")
    p = add_command(ev_sub, "checkpoint", cmd_checkpoint, "the latest signed checkpoint")
    with_config(p)
    p.add_argument("--size", type=int, help="the checkpoint of this tree size instead")
    p.add_argument("--json", action="store_true", help="JSON, with the device-heads table")
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
