"""`sealink fleet approvers add|revoke|list`: approver keys the fleet issues to every gateway
(SPEC §11.7), signed by its registry key, retained on `<prefix>/fleet/approvers/<name>`.

add NAME --public-key HEX --actions a,b --reason TEXT   issue an approver (its key for good)
revoke NAME --reason TEXT                               refused on every gateway, for good
list [--json]                                           issued approvers, revoked ones too
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from sealink.approvals import ACTIONS
from sealink.cli.approvers import parse_actions, parse_public_key
from sealink.cli.common import add_command, iso_ms, print_json
from sealink.cli.fleet import open_fleet, signed_change, who_acts, with_fleet_config
from sealink.errors import SealinkError
from sealink.topics import approver_name_problem

if TYPE_CHECKING:
    from sealink.crypto import GatewayKey
    from sealink.fleet import ApproverChange, FleetConfig, Store

__all__ = ["register"]


def _said(change: ApproverChange, published: bool) -> int:
    print_json(
        {
            "approver": change.name,
            "state": change.state,
            "seq": change.seq,
            "topic": change.topic,
            "published": published,
        }
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from sealink.fleet import add_approver, mark_approver_published

    problem = approver_name_problem(args.name)
    if problem is not None:
        raise SealinkError(problem)
    raw = parse_public_key(args.public_key, "--public-key")
    actions = parse_actions(args.actions)

    def make(store: Store, key: GatewayKey, config: FleetConfig) -> ApproverChange:
        return add_approver(
            store, key, config.name, config.prefix, args.name, raw, actions, args.reason,
            who_acts(args))  # fmt: skip

    return _said(*signed_change(args, make, mark_approver_published))


def cmd_revoke(args: argparse.Namespace) -> int:
    from sealink.fleet import mark_approver_published, revoke_approver

    def make(store: Store, key: GatewayKey, config: FleetConfig) -> ApproverChange:
        return revoke_approver(
            store, key, config.name, config.prefix, args.name, args.reason, who_acts(args)
        )

    return _said(*signed_change(args, make, mark_approver_published))


def cmd_list(args: argparse.Namespace) -> int:
    from sealink.fleet import approvers

    _config, store = open_fleet(args)
    with store:
        issued = approvers(store)
    for a in issued:
        if args.json:
            print_json(
                {
                    "approver": a.name,
                    "public_key": a.public_key.hex(),
                    "actions": list(a.actions),
                    "state": a.state,
                    "reason": a.reason,
                    "since_ms": a.since_ms,
                    "seq": a.seq,
                    "published": a.published,
                }
            )
        else:
            print(
                f"{a.name:<20} {a.public_key.hex()[:16]}...  {','.join(a.actions):<28} "
                f"{a.state} {iso_ms(a.since_ms)}"
            )
    return 0


def register(fl: Any) -> None:
    approvers = fl.add_parser("approvers", help="approver keys issued to every gateway (§11.7)")
    ap = approvers.add_subparsers(dest="approvers_command", required=True, metavar="ACTION")
    p = add_command(ap, "add", cmd_add, "issue an approver's public key to every gateway")
    p.add_argument("name")
    p.add_argument("--public-key", required=True, metavar="HEX", help="64 hex digits, or PEM")
    p.add_argument(
        "--actions",
        default=",".join(ACTIONS),
        help=f"what it may ask for, comma-separated (default: {','.join(ACTIONS)})",
    )
    p.add_argument("--reason", required=True, help="why: kept on the record")
    p.add_argument("--by", help="who (default: $USER)")
    with_fleet_config(p)
    p = add_command(ap, "revoke", cmd_revoke, "refuse an approver on every gateway, for good")
    p.add_argument("name")
    p.add_argument("--reason", required=True, help="why: kept on the record")
    p.add_argument("--by", help="who (default: $USER)")
    with_fleet_config(p)
    p = add_command(ap, "list", cmd_list, "the approvers the fleet issued")
    p.add_argument("--json", action="store_true", help="JSON Lines")
    with_fleet_config(p)
