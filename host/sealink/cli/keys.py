"""`sealink keys init|show`: the gateway's Ed25519 countersigning key."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, print_json, with_config
from sealink.config import load_config
from sealink.crypto.signer import GatewayKey
from sealink.errors import SealinkError

__all__ = ["register"]


def _key_path(args: argparse.Namespace) -> Path:
    if args.key_file:
        return Path(args.key_file)
    if not args.config:
        raise SealinkError("give --config FILE or --key-file PATH")
    return load_config(args.config, check_key_file=False).key_file


def cmd_keys_init(args: argparse.Namespace) -> int:
    path = _key_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = GatewayKey.generate()
    key.save(path, overwrite=args.force)
    print(f"wrote {path} (mode 0600); kid {key.kid.hex()}", file=sys.stderr)
    sys.stdout.write(key.public_pem().decode())
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    key = GatewayKey.load(_key_path(args))
    if args.format == "pem":
        sys.stdout.write(key.public_pem().decode())
    elif args.format == "cose":
        sys.stdout.buffer.write(key.cose_key())
    else:
        print_json(
            {
                "kid": key.kid.hex(),
                "alg": "EdDSA",
                "public_pem": key.public_pem().decode(),
                "cose_key_hex": key.cose_key().hex(),
            }
        )
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the gateway countersigning key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = add_command(keys_sub, "init", cmd_keys_init, "create the Ed25519 key (file mode 0600)")
    with_config(p, required=False)
    p.add_argument("--key-file", help="where to write it (default: gateway.key_file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p = add_command(keys_sub, "show", cmd_keys_show, "print the key id and public key for export")
    with_config(p, required=False)
    p.add_argument("--key-file", help="the key file (default: gateway.key_file)")
    p.add_argument(
        "--format",
        choices=["json", "pem", "cose"],
        default="json",
        help="json (kid + PEM + COSE_Key hex), pem, or raw COSE_Key bytes",
    )
