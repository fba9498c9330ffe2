"""`sealink alarms list`: the alarms the gateway raised, from the ledger.

An alarm about a device or an input goes through the outbox, whose row keeps its payload (the
alarm's only copy, schema v9): the signed message of SPEC §11.4, whose body is the JSON object
of §11.2. Each is shown from that body: when the gateway signed it, device, source (`device`,
`record` or `gateway`), code and code_name (device and record alarms), reason (gateway alarms),
detail. Alarms the gateway cannot store (the ledger itself failing) are published only, never
listed here. The signatures are not checked here: an auditor's tool is sealink_verify.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

import cbor2

from sealink.cli.common import add_command, iso_ms, load, open_ledger, print_json, with_config
from sealink.errors import LedgerError
from sealink.ledger import Ledger, OutboxRow

__all__ = ["alarm_row", "register"]

_FOLLOW_POLL_S = 0.25
_TAG_SIGN1 = 18  # COSE_Sign1 (RFC 9052)
_COLUMNS = ("time", "device", "source", "code", "code_name", "reason", "detail")
_WIDTHS = (24, 16, 8, 4, 18, 18, 0)


def _signed_body(row: OutboxRow) -> dict[str, Any]:
    """The JSON body inside the row's COSE_Sign1 (SPEC §11.4), and the signed time."""
    try:
        sign1 = cbor2.loads(row.payload)
        if not isinstance(sign1, cbor2.CBORTag) or sign1.tag != _TAG_SIGN1:
            raise ValueError("not a COSE_Sign1")
        signed = cbor2.loads(sign1.value[2])
        body = json.loads(signed["body"])
        if not isinstance(body, dict):
            raise ValueError("its body is not a JSON object")
        body.setdefault("time_ms", signed["time_ms"])
    except (ValueError, TypeError, KeyError, IndexError, cbor2.CBORDecodeError) as exc:
        raise LedgerError(
            f"alarm #{row.id} in the ledger's outbox does not decode: {exc}"
        ) from None
    return body


def alarm_row(row: OutboxRow) -> dict[str, Any]:
    """What `alarms list` shows of one stored alarm: its whole body, and which outbox row."""
    body = _signed_body(row)
    return {**body, "id": row.id, "device": body.get("device", row.device)}


def _human(alarm: dict[str, Any]) -> list[str]:
    detail = alarm.get("detail")
    return [
        iso_ms(alarm.get("time_ms")),
        alarm.get("device") or "(gateway)",
        str(alarm.get("source", "-")),
        str(alarm.get("code", "-")),
        str(alarm.get("code_name", "-")),
        str(alarm.get("reason", "-")),
        "-" if detail in (None, "") else str(detail),
    ]


def _print(alarm: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(alarm)
    else:
        _line(_human(alarm))
    sys.stdout.flush()  # a follower may be a pipe: each alarm as it comes


def _line(cells: list[str] | tuple[str, ...]) -> None:
    print("  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=True)).rstrip())


def cmd_alarms_list(args: argparse.Namespace) -> int:
    # Ctrl-C is how a follower stops: a quiet exit 0, wherever it lands.
    stop = contextlib.suppress(KeyboardInterrupt) if args.follow else contextlib.nullcontext()
    with stop, open_ledger(load(args)) as ledger:
        if not args.json:
            _line(_COLUMNS)
        last_id = _show(ledger, args, 0)
        while args.follow:
            time.sleep(_FOLLOW_POLL_S)
            last_id = _show(ledger, args, last_id)
    return 0


def _show(ledger: Ledger, args: argparse.Namespace, after_id: int) -> int:
    """Print the alarms past outbox id `after_id`; the last id shown (or `after_id`)."""
    for row in ledger.alarms(args.device, after_id):
        _print(alarm_row(row), args.json)
        after_id = row.id
    return after_id


def register(sub: Any) -> None:
    alarms = sub.add_parser("alarms", help="the alarms the gateway raised")
    al_sub = alarms.add_subparsers(dest="alarms_command", required=True, metavar="ACTION")
    p = add_command(
        al_sub,
        "list",
        cmd_alarms_list,
        "list stored alarms: time, device, source, code, reason, detail",
    )
    with_config(p)
    p.add_argument("--device", help="only this device's alarms (not the gateway's own)")
    p.add_argument(
        "--follow", "-f", action="store_true", help="then print new alarms as stored, until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="JSON Lines instead of columns")
