"""`sealink approve permit|revoke|release|bundle`: the approver's side of SPEC §11.5, for an
approval system that calls a command, and for trying the path by hand.

It needs only an [mqtt] section in --config (the gateway's config file does too), the approver
key (`sealink approvers keygen`) and the gateway's public key (`sealink keys show`), to check
the signed results. It prints each result as a JSON line; without --wait it stops at the first
(`queued`, or a refusal), with --wait at the outcome: `delivered` for a permit, `done` for the
others, or `refused`. Exit 0 on those, 1 on a refusal or no result in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

from sealink.approvals import ApprovalClient, ApprovalTimeout, ApproverKey
from sealink.cli.approvers import parse_public_key
from sealink.cli.common import add_command, print_json
from sealink.config import parse_mqtt, read_toml
from sealink.errors import ConfigError, SealinkError
from sealink.files import write_durably

__all__ = ["register"]

_FINAL = {"permit": "delivered", "revoke": "done", "release": "done", "bundle": "done"}
_EXIT_REFUSED = 1


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The action's own body fields (SPEC §11.5) from the command line."""
    if args.action == "permit":
        now = int(time.time())
        not_before = args.not_before if args.not_before is not None else now
        fields: dict[str, Any] = {
            "count": args.count,
            "not_before_s": not_before,
            "not_after_s": args.not_after
            if args.not_after is not None
            else not_before + args.valid_for,
        }
        if args.operator is not None:
            fields["operator"] = args.operator
        if args.document is not None:
            fields["document_sha256"] = hashlib.sha256(Path(args.document).read_bytes()).hexdigest()
        elif args.document_sha256 is not None:
            fields["document_sha256"] = args.document_sha256
        return fields
    if args.action == "revoke":
        return {"permit": args.permit}
    if args.action == "release":
        return {"note": args.note}
    return {"counter": args.counter}


def _gateway_key(given: str) -> bytes:
    path = Path(given)
    text = path.read_text(encoding="ascii", errors="replace") if path.is_file() else given
    return parse_public_key(text, "--gateway-key")


async def _run(args: argparse.Namespace) -> int:
    data = read_toml(Path(args.config))
    if "mqtt" not in data:
        raise ConfigError("mqtt", f"{args.config} has no [mqtt] section")
    mqtt = parse_mqtt(data["mqtt"], base=Path(args.config).resolve().parent)
    key = ApproverKey.load(args.key)
    gateway_key = _gateway_key(args.gateway_key)
    final = {_FINAL[args.action], "refused"} if args.wait else {"queued", "done", "refused"}
    async with ApprovalClient(
        mqtt, key, args.approver, mqtt.prefix, args.gateway, gateway_key
    ) as client:
        await client.wait_connected(args.timeout)
        request = await client.request(
            args.action,
            args.device,
            request_id=args.request,
            requested_by=args.requested_by,
            **_fields(args),
        )
        async with asyncio.timeout(args.timeout):
            async for result in client.results(request):
                _show(args, result)
                if result.get("state") in final:
                    return _EXIT_REFUSED if result["state"] == "refused" else 0
    return _EXIT_REFUSED  # not reached: the iterator ends only by the timeout


def _show(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if "bundle" in result and args.out:
        write_durably(Path(args.out), base64.b64decode(result["bundle"]), mode=0o644)
        print(
            f"wrote {args.out}; check it with `sealink-verify bundle {args.out}`", file=sys.stderr
        )
        result = {k: v for k, v in result.items() if k != "bundle"}
    print_json(result)
    sys.stdout.flush()
    if result.get("state") == "refused":
        why = result.get("detail") or result.get("reason")
        print(f"sealink: refused: {result.get('reason')}: {why}", file=sys.stderr)


def cmd_approve(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (TimeoutError, ApprovalTimeout):
        print(
            f"sealink: no {'outcome' if args.wait else 'answer'} from gateway {args.gateway} "
            f"within {args.timeout:g} s (is it running, and the broker reachable?)",
            file=sys.stderr,
        )
        return _EXIT_REFUSED
    except UnicodeDecodeError as exc:
        raise SealinkError(f"not a text file: {exc}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="its [mqtt] section")
    p.add_argument("--key", required=True, metavar="FILE", help="the approver's private key")
    p.add_argument("--approver", required=True, metavar="NAME", help="as registered")
    p.add_argument("--gateway", required=True, metavar="ID", help="the gateway's id")
    p.add_argument(
        "--gateway-key", required=True, metavar="HEX|FILE", help="its public key (hex or PEM)"
    )
    p.add_argument("--request", metavar="ID", help="the idempotency key (default: a new one)")
    p.add_argument("--requested-by", metavar="TEXT", help="the person asking (default: NAME)")
    p.add_argument("--wait", action="store_true", help="wait for the outcome, not for `queued`")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="default 30")
    p.add_argument("device")


def register(sub: Any) -> None:
    approve = sub.add_parser("approve", help="send an approver's signed request (SPEC §11.5)")
    ap_sub = approve.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_command(ap_sub, "permit", cmd_approve, "ask for a permit")
    _common(p)
    p.add_argument("--count", type=int, required=True, help="impressions allowed")
    p.add_argument("--valid-for", type=int, default=3600, metavar="S", help="default 3600")
    p.add_argument("--not-before", type=int, metavar="UNIX_S")
    p.add_argument("--not-after", type=int, metavar="UNIX_S")
    p.add_argument("--operator", type=int, help="operator id (uint32)")
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--document", metavar="FILE", help="the document to stamp (its SHA-256)")
    doc.add_argument("--document-sha256", metavar="HEX")
    p = add_command(ap_sub, "revoke", cmd_approve, "ask for a permit's revocation")
    _common(p)
    p.add_argument("permit", type=int)
    p = add_command(ap_sub, "release", cmd_approve, "ask for a quarantined seal's release")
    _common(p)
    p.add_argument("--note", required=True, help="why (kept in the audit trail)")
    p = add_command(ap_sub, "bundle", cmd_approve, "fetch one impression's evidence bundle")
    _common(p)
    p.add_argument("counter", type=int)
    p.add_argument("--out", "-o", metavar="FILE", help="write the bundle here")
