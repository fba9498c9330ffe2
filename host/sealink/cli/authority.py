"""`sealink authority init|show|certify|revoke`: the enrolment authority (SPEC §5.11).

Run on the organisation's key platform or an offline machine, never on a gateway host: whoever
holds the authority key decides which gateway's acknowledgements free a seal's journal. Its
public key is built into the seals' firmware (`tools/build.py --authority HEX`); each
certificate it signs goes to a gateway (`sealink devices enrol`), which hands it to the seal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, print_json
from sealink.crypto.enrolment import certify
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import parse_seal_key
from sealink.errors import SealinkError

__all__ = ["register"]

_WHAT = "authority key"


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.key)
    key = P256Key.generate()
    key.save(path, _WHAT, overwrite=args.force)
    print(f"wrote {path} (mode 0600); build it into the seals' firmware:", file=sys.stderr)
    print(f"  python tools/build.py BOARD --authority {key.public.hex()}", file=sys.stderr)
    print(key.public.hex())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print_json({"authority_key": P256Key.load(args.key, _WHAT).public.hex()})
    return 0


def _issue(args: argparse.Namespace, gateway_key: bytes) -> int:
    authority = P256Key.load(args.key, _WHAT)
    try:
        cert = certify(authority, args.device, gateway_key, args.serial)
    except ValueError as exc:
        raise SealinkError(str(exc)) from None
    text = cert.to_json() + "\n"
    if args.out:
        try:
            Path(args.out).write_text(text)
        except OSError as exc:
            raise SealinkError(f"{args.out}: cannot write ({exc.strerror})") from None
        print(f"wrote {args.out}: {args.device}, serial {cert.serial}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_certify(args: argparse.Namespace) -> int:
    return _issue(args, parse_seal_key(args.gateway_key, "--gateway-key"))


def cmd_revoke(args: argparse.Namespace) -> int:
    return _issue(args, b"")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="the authority's private key file (0600)")


def _certificate_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--device", required=True, help="the seal's device id")
    p.add_argument(
        "--serial",
        type=int,
        help="a serial above the seal's current one (default: the time in seconds)",
    )
    p.add_argument("--out", help="write the certificate here (default: stdout)")


def register(sub: Any) -> None:
    authority = sub.add_parser("authority", help="the enrolment authority (not on a gateway)")
    actions = authority.add_subparsers(dest="authority_command", required=True, metavar="ACTION")
    p = add_command(actions, "init", cmd_init, "create the P-256 authority key (0600)")
    _common(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p = add_command(actions, "show", cmd_show, "print the authority's public key")
    _common(p)
    p = add_command(
        actions, "certify", cmd_certify, "enrol a seal with a gateway: a signed certificate"
    )
    _certificate_args(p)
    p.add_argument(
        "--gateway-key",
        required=True,
        help="the gateway's acknowledgement key (`sealink keys show`: ack_key), 128 hex digits",
    )
    p = add_command(actions, "revoke", cmd_revoke, "enrol a seal with no gateway: it frees nothing")
    _certificate_args(p)
