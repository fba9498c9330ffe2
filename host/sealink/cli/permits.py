"""`sealink permits issue|revoke|list`: commands queued in the ledger; the running service
sends them when the seal is connected (SPEC §5.7). Every field is checked against the wire
before anything is queued."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.commands import CommandFieldError, validate_command
from sealink.errors import CommandError
from sealink.ledger import Ledger

__all__ = ["register"]

# body field -> the option that sets it, so a refusal names what the user typed
_OPTIONS = {
    "permit": "--permit",
    "count": "--count",
    "not_before_s": "--not-before",
    "not_after_s": "--not-after",
    "operator": "--operator",
    "operators": "--operators",
}


def _checked(kind: str, body: dict[str, Any], options: dict[str, str] = _OPTIONS) -> None:
    try:
        validate_command(kind, body)
    except CommandFieldError as exc:
        option = options.get(exc.field)
        raise CommandError(f"{option} {exc.problem}" if option else str(exc)) from None


def _operator_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: operator ids, comma-separated") from None


def cmd_permits_issue(args: argparse.Namespace) -> int:
    now = int(time.time())
    not_before = args.not_before if args.not_before is not None else now
    not_after = args.not_after if args.not_after is not None else not_before + args.valid_for
    body = {
        "permit": args.permit,
        "count": args.count,
        "not_before_s": not_before,
        "not_after_s": not_after,
        "operator": args.operator,
    }
    if args.operators is not None:
        body["operators"] = args.operators
    with open_ledger(load(args)) as ledger:
        if args.permit is None:
            body["permit"] = ledger.next_permit_id(args.device)
        _checked("permit", body)  # queue_command checks too; this names the option
        command = ledger.queue_command(args.device, "permit", body)
        print_json({"command": command, "device": args.device, **body})
        if args.wait:
            return _wait(ledger, args.device, command, args.timeout)
    return 0


# The running service writes the command's state from its own process: the ledger row is the
# only event this process can see, so it is read again at this interval until the deadline.
_WAIT_POLL_S = 0.1


def _wait(ledger: Ledger, device: str, command: int, timeout_s: float) -> int:
    """Wait for the seal's answer to `command`: exit 0 when it took the permit, 1 otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = next(c for c in ledger.commands(device) if c.id == command)
        if state.state != "pending":
            break
        if time.monotonic() >= deadline:
            print(
                f"sealink: permit not delivered within {timeout_s:g} s: the seal has not "
                "connected (it stays queued and is sent when it does)",
                file=sys.stderr,
            )
            return 1
        time.sleep(_WAIT_POLL_S)
    print_json({"command": command, "state": state.state, "result": state.result})
    if state.state == "done":
        return 0
    why = f"{state.state}, result {state.result}"
    print(f"sealink: the seal refused the permit: {why}", file=sys.stderr)
    return 1


def cmd_permits_revoke(args: argparse.Namespace) -> int:
    body = {"permit": args.permit}
    _checked("revoke", body, {"permit": "PERMIT"})
    with open_ledger(load(args)) as ledger:
        command = ledger.queue_command(args.device, "revoke", body)
    print_json({"command": command, "device": args.device, "revoke": args.permit})
    return 0


def cmd_permits_list(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger:
        for c in ledger.commands(args.device):
            print_json(
                {
                    "command": c.id,
                    "device": c.device,
                    "kind": c.kind,
                    "state": c.state,
                    "result": c.result,
                    **c.body,
                }
            )
    return 0


def register(sub: Any) -> None:
    permits = sub.add_parser("permits", help="stamping permits sent to seals")
    per_sub = permits.add_subparsers(dest="permits_command", required=True, metavar="ACTION")
    p = add_command(
        per_sub,
        "issue",
        cmd_permits_issue,
        "queue a permit; the running service sends it when the seal connects",
    )
    with_config(p)
    p.add_argument("device")
    p.add_argument("--count", type=int, required=True, help="impressions allowed (at least 1)")
    p.add_argument(
        "--valid-for",
        type=int,
        default=3600,
        metavar="S",
        help="validity from not-before, seconds (default 3600)",
    )
    p.add_argument("--not-before", type=int, metavar="UNIX_S")
    p.add_argument("--not-after", type=int, metavar="UNIX_S")
    p.add_argument("--operator", type=int, default=0, help="operator id (uint32, default 0)")
    p.add_argument(
        "--operators",
        type=_operator_ids,
        metavar="ID,ID",
        help="only these operators, once identified at the seal, open it (SPEC §5.7)",
    )
    p.add_argument(
        "--permit",
        type=int,
        help="permit id: above every id issued to this device (default: the next one)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the seal's answer")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="default 60")
    p = add_command(per_sub, "revoke", cmd_permits_revoke, "queue the revocation of a permit")
    with_config(p)
    p.add_argument("device")
    p.add_argument("permit", type=int)
    p = add_command(per_sub, "list", cmd_permits_list, "queued and sent commands (JSON Lines)")
    with_config(p)
    p.add_argument("--device")
