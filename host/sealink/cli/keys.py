"""`sealink keys init|show|rotate|history`: the gateway's keys, 0600 files on the gateway host.

The Ed25519 countersigning key signs every stored record (SPEC §11.1); the P-256
acknowledgement key signs that records are stored, so that the seals may free them (SPEC
§5.11), and is made inside the gateway's TPM when `[gateway] ack_key_tpm` names one (its file
then holds only the TPM-wrapped blob). `init` makes whichever is missing; `show` prints what
others need of them: the key id and public key for verifiers, and the acknowledgement key for
the enrolment authority. `rotate` and `history` (cli/keyrotation.py) replace the countersigning
key without orphaning the evidence made under it (SPEC §14.7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, print_json, with_config
from sealink.cli.keyrotation import refuse_orphaning, register_rotation
from sealink.config import ack_key_beside, load_config
from sealink.crypto.ackkey import create_ack_key, held_where, open_ack_key
from sealink.crypto.signer import GatewayKey
from sealink.errors import SealinkError

__all__ = ["register"]


def _key_paths(args: argparse.Namespace) -> tuple[Path, Path, str | None]:
    """(the countersigning key, the acknowledgement key, the TPM holding the latter or None):
    from the flags, else the config; an acknowledgement key not named sits beside the
    countersigning key."""
    if args.key_file:
        key_path = Path(args.key_file)
        ack_path = ack_key_beside(key_path)
        tpm = None
    elif args.config:
        config = load_config(args.config, check_key_file=False)
        key_path = config.key_file
        ack_path = config.ack_key_file or ack_key_beside(key_path)
        tpm = config.ack_key_tpm
    else:
        raise SealinkError("give --config FILE or --key-file PATH")
    return (
        key_path,
        Path(args.ack_key_file) if args.ack_key_file else ack_path,
        args.ack_key_tpm or tpm,
    )


def cmd_keys_init(args: argparse.Namespace) -> int:
    path, ack_path, tpm = _key_paths(args)
    if args.force and args.config and path.exists():
        refuse_orphaning(load_config(args.config, check_key_file=False))
    if path.exists() and ack_path.exists() and not args.force:
        raise SealinkError(f"{path} and {ack_path} already exist; not overwriting (--force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    ack_path.parent.mkdir(parents=True, exist_ok=True)
    if args.force or not ack_path.exists():
        ack = create_ack_key(ack_path, tpm, overwrite=args.force)
        print(
            f"wrote {ack_path} (mode 0600); ack_key {ack.hex()}, its private half "
            f"{held_where(ack_path, tpm)}",
            file=sys.stderr,
        )
    if args.force or not path.exists():
        key = GatewayKey.generate()
        key.save(path, overwrite=args.force)
        print(f"wrote {path} (mode 0600); kid {key.kid.hex()}", file=sys.stderr)
    else:
        key = GatewayKey.load(path)
    sys.stdout.write(key.public_pem().decode())
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    path, ack_path, tpm = _key_paths(args)
    key = GatewayKey.load(path)
    if args.format == "pem":
        sys.stdout.write(key.public_pem().decode())
    elif args.format == "cose":
        sys.stdout.buffer.write(key.cose_key())
    else:
        ack, held = None, None
        if ack_path.exists():
            with open_ack_key(ack_path, tpm) as ack_key:
                ack, held = ack_key.public.hex(), held_where(ack_path, tpm)
        print_json(
            {
                "kid": key.kid.hex(),
                "alg": "EdDSA",
                "public_pem": key.public_pem().decode(),
                "cose_key_hex": key.cose_key().hex(),
                "ack_key": ack,
                "ack_key_held": held,
            }
        )
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the gateway's countersigning and acknowledgement keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = add_command(
        keys_sub, "init", cmd_keys_init, "create the Ed25519 and P-256 keys (file mode 0600)"
    )
    with_config(p, required=False)
    p.add_argument("--key-file", help="where to write it (default: gateway.key_file)")
    p.add_argument("--ack-key-file", help="the acknowledgement key (default: gateway.ack_key_file)")
    _tpm_flag(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing keys (refused once the ledger holds records: keys rotate)",
    )
    p = add_command(keys_sub, "show", cmd_keys_show, "print the key id and public key for export")
    with_config(p, required=False)
    p.add_argument("--key-file", help="the key file (default: gateway.key_file)")
    p.add_argument("--ack-key-file", help="the acknowledgement key (default: gateway.ack_key_file)")
    _tpm_flag(p)
    p.add_argument(
        "--format",
        choices=["json", "pem", "cose"],
        default="json",
        help="json (kid + PEM + COSE_Key hex), pem, or raw COSE_Key bytes",
    )
    register_rotation(keys_sub)


def _tpm_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ack-key-tpm",
        metavar="TCTI",
        help="the TPM that holds the acknowledgement key, e.g. device:/dev/tpmrm0 "
        "(default: gateway.ack_key_tpm; none: a PEM file)",
    )
