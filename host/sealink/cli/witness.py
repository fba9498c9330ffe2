"""`sealink witness init|run`: a witness that cosigns gateways' checkpoints (SPEC §14.6).

init --key FILE --name NAME    a new Ed25519 witness key (0600; --force replaces one); prints
                               its public key and the vkey line a gateway's [[witnesses]] takes
run --config FILE              follow the configured gateways until SIGTERM or SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealink.cli.common import add_command, print_json
from sealink.crypto.signer import save_private_key
from sealink.crypto.vkey import COSIGNATURE_ALG, vkey
from sealink.errors import SealinkError
from sealink.logs import configure_logging
from sealink.topics import witness_name_problem
from sealink.witness import Witness, load_witness_config
from sealink.witness.service import load_witness_key

__all__ = ["register"]

log = logging.getLogger("sealink.cli")


def cmd_init(args: argparse.Namespace) -> int:
    problem = witness_name_problem(args.name)
    if problem is not None:
        raise SealinkError(problem)
    path = Path(args.key)
    key = Ed25519PrivateKey.generate()
    save_private_key(key, path, "witness key", overwrite=args.force)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    print_json(
        {
            "name": args.name,
            "public_key": public.hex(),
            "vkey": vkey(args.name, public, COSIGNATURE_ALG),
            "key_file": str(path),
        }
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = load_witness_config(args.config)
    configure_logging(args.log_level or config.log.level, args.log_json or config.log.json)
    key = load_witness_key(config.key_file)
    witness = Witness(config, key)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        main = asyncio.create_task(witness.run(), name="witness")
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, main}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if main.done():
            main.result()
        log.info("stopping")
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main

    asyncio.run(serve())
    return 0


def register(sub: Any) -> None:
    witness = sub.add_parser("witness", help="cosign gateways' checkpoints (a witness)")
    w_sub = witness.add_subparsers(dest="witness_command", required=True, metavar="ACTION")
    p = add_command(w_sub, "init", cmd_init, "make a witness key; print its vkey")
    p.add_argument("--key", required=True, metavar="FILE", help="the private key file to write")
    p.add_argument("--name", required=True, help="the witness's name, e.g. audit.example/w1")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p = add_command(w_sub, "run", cmd_run, "follow, check and cosign until stopped")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the witness's TOML")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
