"""`sealink approvers keygen|add|list|revoke`: the approval system's keys (SPEC §11.5).

keygen --out FILE              a new approver key (Ed25519, PEM, 0600) for the approval system's
                               host; prints its public key (hex) and kid, for `approvers add`
add NAME --public-key HEX      register an approver with the gateway's ledger, and the actions
                               it may ask for (default: all)
list [--json]                  registered approvers, revoked ones too
revoke NAME                    its requests are refused from now on; its history is kept
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealink.approvals import ACTIONS, ApproverKey
from sealink.cli.common import add_command, iso_ms, load, open_ledger, print_json, with_config
from sealink.crypto.signer import key_id
from sealink.errors import KeyFileError, SealinkError
from sealink.topics import approver_name_problem

__all__ = ["parse_actions", "parse_public_key", "register"]

_RAW_LEN = 32


def parse_public_key(text: str, what: str) -> bytes:
    """A raw Ed25519 public key from 64 hex digits or a PEM SubjectPublicKeyInfo."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyFileError(f"{what}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{what}: not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != _RAW_LEN:
        raise KeyFileError(f"{what}: expected an Ed25519 public key, 64 hex digits or PEM")
    return raw


def parse_actions(text: str) -> tuple[str, ...]:
    actions = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions:
        raise SealinkError(f"--actions: {', '.join(unknown) or 'none'}: known: {','.join(ACTIONS)}")
    return actions


def cmd_keygen(args: argparse.Namespace) -> int:
    key = ApproverKey.generate()
    key.save(Path(args.out), overwrite=args.force)
    print(f"wrote {args.out} (mode 0600): keep it on the approval system's host", file=sys.stderr)
    print_json({"public_key": key.public_raw().hex(), "kid": key.kid.hex(), "key_file": args.out})
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    problem = approver_name_problem(args.name)
    if problem is not None:
        raise SealinkError(problem)
    if args.public_key is not None:
        raw = parse_public_key(args.public_key, "--public-key")
    else:
        path = Path(args.public_key_file)
        raw = parse_public_key(path.read_text(encoding="ascii", errors="replace"), str(path))
    actions = parse_actions(args.actions)
    with open_ledger(load(args)) as ledger:
        ledger.add_approver(args.name, raw, actions)
    kid = key_id(Ed25519PublicKey.from_public_bytes(raw)).hex()
    print_json({"approver": args.name, "kid": kid, "actions": list(actions)})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger:
        approvers = ledger.approvers()
    for a in approvers:
        kid = key_id(Ed25519PublicKey.from_public_bytes(a.public_key)).hex()
        row: dict[str, Any] = {
            "approver": a.name,
            "kid": kid,
            "public_key": a.public_key.hex(),
            "actions": list(a.actions),
            "added_ms": a.added_ms,
            "revoked_ms": a.revoked_ms,
            "highest_seq": a.highest_seq,
        }
        if args.json:
            print_json(row)
        else:
            state = f"revoked {iso_ms(a.revoked_ms)}" if a.revoked_ms else "active"
            print(f"{a.name:<20} kid {kid}  {','.join(a.actions):<28} {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with open_ledger(load(args)) as ledger:
        ledger.revoke_approver(args.name)
    print(f"{args.name}: revoked; its requests are refused from now on", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    approvers = sub.add_parser("approvers", help="the approval system's keys (SPEC §11.5)")
    ap_sub = approvers.add_subparsers(dest="approvers_command", required=True, metavar="ACTION")
    p = add_command(ap_sub, "keygen", cmd_keygen, "make an approver key (for the approver host)")
    p.add_argument("--out", required=True, metavar="FILE", help="the private key file (0600)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p = add_command(ap_sub, "add", cmd_add, "register an approver's public key")
    with_config(p)
    p.add_argument("name")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--public-key", metavar="HEX", help="64 hex digits, or PEM")
    given.add_argument("--public-key-file", metavar="FILE", help="hex or PEM in a file")
    p.add_argument(
        "--actions",
        default=",".join(ACTIONS),
        help=f"what it may ask for, comma-separated (default: {','.join(ACTIONS)})",
    )
    p = add_command(ap_sub, "list", cmd_list, "registered approvers")
    with_config(p)
    p.add_argument("--json", action="store_true", help="JSON Lines")
    p = add_command(ap_sub, "revoke", cmd_revoke, "refuse an approver's requests from now on")
    with_config(p)
    p.add_argument("name")
