"""`sealink events list|export`: stored, countersigned events as JSON Lines.

`export` writes the evidence an auditor checks with `sealink verify`: per device in counter
order, one line per event {"device", "counter", "received_ms", "hash", "event" (hex), "cose"
(base64 COSE_Sign1)} and, where an operator adopted lost counters, one line per gap
{"gap": {"device", "first", "last", "adopted_ms", "operator", "note"}, "cose": base64}.
With `--with-checkpoint`, each row also names its leaf in the transparency log ("leaf") and a
last line {"checkpoint": {...}, "heads": [...]} carries the latest signed checkpoint and the
device heads it commits to (SPEC §14.4), read in the same snapshot as the rows. A gateway that
rotated its key (`sealink keys rotate`) writes a first line {"key_history": {...}} (`sealink
keys history --json`), and every row names its leaf, so the export verifies on its own with only
the first key pinned (SPEC §14.7).
"""

from __future__ import annotations

import argparse
import base64
import heapq
import sys
from collections.abc import Iterator
from typing import Any

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.cli.evidence import checkpoint_trailer
from sealink.errors import SealinkError
from sealink.evidence.keys import history_document
from sealink.ledger import Gap, Ledger

__all__ = ["export_rows", "register"]


def cmd_events_list(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger:
        for e in ledger.events(args.device, args.since, args.limit):
            print_json(
                {
                    "device": e["device"],
                    "counter": e["counter"],
                    "received_ms": e["received_ms"],
                    "hash": e["hash"].hex(),
                }
            )
    return 0


def _gap_row(gap: Gap) -> dict[str, Any]:
    return {
        "gap": {
            "device": gap.device,
            "first": gap.first,
            "last": gap.last,
            "adopted_ms": gap.adopted_ms,
            "operator": gap.operator,
            "note": gap.note,
        },
        "cose": base64.b64encode(gap.cose).decode(),
    }


def export_rows(
    ledger: Ledger, device: str | None, since: int, leaves: dict[tuple[str, int], int] | None = None
) -> Iterator[dict[str, Any]]:
    """Events and gaps of each device merged in counter order (a gap sorts at its first); with
    `leaves` ((device, first counter) -> leaf index), each row names its leaf."""
    events = (
        (
            (e["device"], e["counter"]),
            {
                "device": e["device"],
                "counter": e["counter"],
                "received_ms": e["received_ms"],
                "hash": e["hash"].hex(),
                "event": e["event"].hex(),
                "cose": base64.b64encode(e["cose"]).decode(),
            },
        )
        for e in ledger.events(device, since)
    )
    gaps = (((g.device, g.first), _gap_row(g)) for g in ledger.gaps(device) if g.last >= since)
    for key, row in heapq.merge(events, gaps, key=lambda item: item[0]):
        if leaves is not None and key in leaves:
            row["leaf"] = leaves[key]
        yield row


def cmd_events_export(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        config = load(args)
        with open_ledger(config) as ledger, ledger.log.snapshot():
            checkpoint = ledger.log.checkpoint() if args.with_checkpoint else None
            if args.with_checkpoint and checkpoint is None:
                raise SealinkError("no checkpoint yet (see `sealink evidence checkpoint`)")
            chain = ledger.key_history.transitions()
            if chain:
                history = history_document(config.gateway_id, chain[0].old, chain)
                print_json({"key_history": history}, out)
            # Which key may sign a row is decided by its leaf index (SPEC §14.7).
            leaves = ledger.log.leaf_indices(args.device) if checkpoint or chain else None
            for row in export_rows(ledger, args.device, args.since, leaves):
                print_json(row, out)
            if checkpoint is not None:
                trailer = checkpoint_trailer(ledger, checkpoint)
                trailer["export"] = {"device": args.device, "since": args.since}
                print_json(trailer, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def register(sub: Any) -> None:
    events = sub.add_parser("events", help="stored, countersigned events")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    p = add_command(ev_sub, "list", cmd_events_list, "list events (JSON Lines, no signatures)")
    with_config(p)
    p.add_argument("--device")
    p.add_argument("--since", type=int, default=0, metavar="COUNTER")
    p.add_argument("--limit", type=int)
    p = add_command(
        ev_sub,
        "export",
        cmd_events_export,
        "export events with device bytes and COSE_Sign1, and adopted gaps (JSON Lines)",
    )
    with_config(p)
    p.add_argument("--device")
    p.add_argument("--since", type=int, default=0, metavar="COUNTER")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.add_argument(
        "--with-checkpoint",
        action="store_true",
        help="add leaf indices and the latest signed checkpoint with its device heads",
    )
