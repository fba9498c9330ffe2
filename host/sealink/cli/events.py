"""`sealink events list|export`: stored, countersigned events.

`list` shows each event decoded from the record the ledger stores (the seal's own bytes, never
a JSON copy): device, counter, kind (SPEC §4.1, by name), permit, operator, the seal's time and
boot, when the gateway received it; columns for a person, JSON Lines with `--json`. `--follow`
then prints each event the ledger stores from then on, in commit order, until Ctrl-C.

`export` writes the evidence an auditor checks with `sealink verify`: per device in counter
order, one line per event {"device", "counter", "received_ms", "hash", "event" (hex), "cose"
(base64 COSE_Sign1)} and, where an operator adopted lost counters or the fleet placed a seal
moved here, one line per gap {"gap": {"device", "first", "last", "adopted_ms", "operator",
"note", ? "head" (hex: the placed record's hash)}, "cose": base64}.
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
import contextlib
import heapq
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from sealproto import messages
from sealproto.errors import DecodeError

from sealink.cli.common import add_command, iso_ms, load, open_ledger, print_json, with_config
from sealink.cli.evidence import checkpoint_trailer
from sealink.errors import LedgerError, SealinkError
from sealink.evidence.keys import history_document
from sealink.ledger import Gap, Ledger

__all__ = ["Progress", "event_row", "export_rows", "kind_name", "register"]


_FOLLOW_POLL_S = 0.25
_KIND_NAMES = {
    getattr(messages, name): name.removeprefix("KIND_").lower()
    for name in dir(messages)
    if name.startswith("KIND_")
}
_COLUMNS = ("received", "device", "counter", "kind", "permit", "operator", "boot", "time")


def kind_name(kind: int) -> str:
    """A record kind's name (SPEC §4.1, lower case); one this gateway does not know as `kind<n>`."""
    return _KIND_NAMES.get(kind, f"kind{kind}")


def event_row(stored: dict[str, Any]) -> dict[str, Any]:
    """What `events list` shows of a stored event, decoded from its record's bytes."""
    try:
        record = messages.decode(stored["event"])
    except DecodeError as exc:
        raise LedgerError(
            f"event {stored['device']} #{stored['counter']} in the ledger does not decode: {exc}"
        ) from None
    return {
        "device": stored["device"],
        "counter": stored["counter"],
        "kind": kind_name(record[messages.EV_KIND]),
        "permit": record[messages.EV_PERMIT],
        "operator": record[messages.EV_OPERATOR],
        "boot": record[messages.EV_BOOT],
        "time_s": record[messages.EV_TIME],
        "received_ms": stored["received_ms"],
        "hash": stored["hash"].hex(),
    }


def _human(row: dict[str, Any]) -> list[str]:
    # time_s 0: the seal had never been given the time (SPEC §4.1)
    seal_time = iso_ms(row["time_s"] * 1000) if row["time_s"] else "unset"
    return [
        iso_ms(row["received_ms"]),
        row["device"],
        str(row["counter"]),
        row["kind"],
        str(row["permit"] or "-"),
        str(row["operator"] or "-"),
        str(row["boot"]),
        seal_time,
    ]


class _Printer:
    """One row a line: JSON, or columns under one header line (fixed widths, so rows printed
    later, while following, line up with the first)."""

    _WIDTHS = (24, 16, 8, 11, 7, 9, 5, 0)

    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        if not as_json:
            self._line(_COLUMNS)

    def row(self, row: dict[str, Any]) -> None:
        if self._json:
            print_json(row)
        else:
            self._line(_human(row))
        sys.stdout.flush()  # a follower may be a pipe: each event as it comes

    def _line(self, cells: list[str] | tuple[str, ...]) -> None:
        print("  ".join(c.ljust(w) for c, w in zip(cells, self._WIDTHS, strict=True)).rstrip())


def cmd_events_list(args: argparse.Namespace) -> int:
    # Ctrl-C is how a follower stops: a quiet exit 0, wherever it lands.
    stop = contextlib.suppress(KeyboardInterrupt) if args.follow else contextlib.nullcontext()
    with stop, open_ledger(load(args)) as ledger:
        printer = _Printer(args.json)
        # One snapshot: an event stored while the list is read is either in it or followed.
        with ledger.log.snapshot():
            for e in ledger.events(args.device, args.since, args.limit):
                printer.row(event_row(e))
            next_leaf = ledger.log.size()
        if args.follow:
            _follow(ledger, args, printer, next_leaf)
    return 0


def _follow(ledger: Ledger, args: argparse.Namespace, printer: _Printer, next_leaf: int) -> None:
    while True:
        for index, e in ledger.events_logged_from(next_leaf, args.device):
            next_leaf = index + 1
            if e["counter"] >= args.since:
                printer.row(event_row(e))
        time.sleep(_FOLLOW_POLL_S)


def _gap_row(gap: Gap) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "device": gap.device,
        "first": gap.first,
        "last": gap.last,
        "adopted_ms": gap.adopted_ms,
        "operator": gap.operator,
        "note": gap.note,
    }
    if gap.head is not None:
        statement["head"] = gap.head.hex()
    return {"gap": statement, "cose": base64.b64encode(gap.cose).decode()}


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


class Progress:
    """How far a long command is, as one line on stderr redrawn at most every `_REDRAW_S`, and
    only when stderr is a terminal: a log, a pipe or a CI run gets no control characters. No
    progress library is a dependency (pyproject) and one counting line needs none."""

    _REDRAW_S = 0.2

    def __init__(self, what: str, *, shown: bool = True, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.shown = shown and self._stream.isatty()
        self.total: int | None = None
        self._what = what
        self._done = 0
        self._drawn_at: float | None = None

    def advance(self, n: int = 1) -> None:
        self._done += n
        now = time.monotonic()
        if self.shown and (self._drawn_at is None or now - self._drawn_at >= self._REDRAW_S):
            self._drawn_at = now
            of = f" of {self.total}" if self.total is not None else ""
            self._stream.write(f"\r{self._what} {self._done}{of}\x1b[K")
            self._stream.flush()

    def close(self) -> None:
        """Erase the line, so what the command prints next starts clean."""
        if self._drawn_at is not None:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


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
            # Rows on stdout are the output: a progress line on that terminal would garble them.
            progress = Progress("exported events", shown=args.out is not None)
            if progress.shown:
                progress.total = ledger.event_count(args.device, args.since)
            try:
                for row in export_rows(ledger, args.device, args.since, leaves):
                    print_json(row, out)
                    if "counter" in row:
                        progress.advance()
            finally:
                progress.close()
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
    p = add_command(
        ev_sub,
        "list",
        cmd_events_list,
        "list stored events: kind, permit, operator, times (no signatures; see export)",
    )
    with_config(p)
    p.add_argument("--device")
    p.add_argument("--since", type=int, default=0, metavar="COUNTER")
    p.add_argument("--limit", type=int, help="at most this many of the stored events")
    p.add_argument(
        "--follow", "-f", action="store_true", help="then print new events as stored, until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="JSON Lines instead of columns")
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
