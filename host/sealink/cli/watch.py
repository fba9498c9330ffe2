"""`sealink watch`: the live view of the seals, impressions and alarms in a terminal.

A consumer of MQTT like the web console (`sealink console`), for the gateway box: it reads the
gateway's configuration for the broker and the gateway's public key, and never the ledger.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, load, with_config
from sealink.crypto import GatewayKey
from sealink.errors import SealinkError

__all__ = ["register"]


def _pinned_keys(
    args: argparse.Namespace, gateway_id: str, key_file: Path
) -> dict[str, list[bytes]]:
    """The keys the view trusts: --gateway-key ID=PEM, else the configured gateway's own."""
    # The verifier needs cwt, of the console extra (checked by the caller): not imported with
    # the CLI, which a gateway installed without that extra must still run.
    from sealink_verify.bundle import ed25519_raw

    if not args.gateway_key:
        return {gateway_id: [GatewayKey.load(key_file).public_raw()]}
    keys: dict[str, list[bytes]] = {}
    for item in args.gateway_key:
        gateway, sep, path = item.partition("=")
        if not gateway or not sep or not path:
            raise SealinkError(f"--gateway-key {item!r}: expected ID=PEM-FILE")
        try:
            raw = ed25519_raw(Path(path).read_bytes())
        except OSError as exc:
            raise SealinkError(f"--gateway-key: cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise SealinkError(f"--gateway-key: {path}: {exc}") from None
        keys.setdefault(gateway, []).append(raw)
    return keys


def cmd_watch(args: argparse.Namespace) -> int:
    config = load(args)
    try:
        from sealink.console.feed import Feed
        from sealink.console.terminal import WatchApp
    except ImportError as exc:
        raise SealinkError(
            f"`sealink watch` needs the console extra: pip install 'sealink[console]' ({exc})"
        ) from None
    keys = _pinned_keys(args, config.gateway_id, config.key_file)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise SealinkError(
            "`sealink watch` draws on a terminal; without one use "
            "`sealink events list --follow` or `sealink alarms list --follow`"
        )
    client_id = f"{config.client_id}-watch-{os.getpid()}"
    WatchApp(Feed(config.mqtt, keys, client_id)).run()
    return 0


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "watch",
        cmd_watch,
        "live view of the seals, impressions and alarms in the terminal (q quits)",
    )
    with_config(p)
    p.add_argument(
        "--gateway-key",
        action="append",
        default=[],
        metavar="ID=PEM",
        help="follow this gateway, trusting this public key (`sealink keys show --format pem`); "
        "repeatable; default: the configured gateway, with the key of its key file",
    )
