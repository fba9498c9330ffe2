"""`sealink ledger init|backup|restore`: the ledger file itself.

`init` is the only command that creates a ledger (with its folder, 0700, and the file, 0600):
every other command, and the service, refuse a path where there is none, so a typo in
[gateway] ledger is an error rather than a new, empty ledger. `backup` copies the ledger while
the service runs; `restore` puts a backup in its place while no gateway runs, and keeps the
file it replaces. README "Backup and recovery" says what to do when the restored ledger is
behind the seals.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.crypto.keystore import LinkKeyStore
from sealink.errors import LedgerError
from sealink.ledger import Ledger
from sealink.ledger.backup import restore
from sealink.ledger.keyhistory import gateway_lock, service_lock

__all__ = ["register"]


def cmd_ledger_init(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.ledger_path
    if path.exists():
        raise LedgerError(f"ledger {path} exists already: not touching it")
    Ledger(path, LinkKeyStore(config.link_keys), create=True).close()
    print_json({"ledger": str(path), "created": True})
    print(f"created ledger {path} (0600)", file=sys.stderr)
    return 0


def cmd_ledger_backup(args: argparse.Namespace) -> int:
    to = Path(args.to)
    with open_ledger(load(args)) as ledger:
        schema = ledger.backup(to)
    print_json({"backup": str(to), "schema": int(schema), "integrity": "ok"})
    return 0


def cmd_ledger_restore(args: argparse.Namespace) -> int:
    config = load(args)
    path = config.ledger_path
    with contextlib.ExitStack() as held:
        if path.exists():
            # No gateway, `devices adopt` or `keys rotate` on the file while it is replaced.
            held.enter_context(gateway_lock(path))
            held.enter_context(service_lock(path, exclusive=True))
        aside = restore(path, Path(args.source))
        # Opened once as the service would: an older backup's schema is migrated now.
        Ledger(path, LinkKeyStore(config.link_keys)).close()
    print_json({"ledger": str(path), "restored_from": args.source, "replaced": str(aside or "")})
    print(
        f"restored {path} from {args.source}"
        + (f"; the file it replaced is kept as {aside}" if aside else "")
        + ": start the gateway, then see `sealink devices quarantine` for seals ahead of it",
        file=sys.stderr,
    )
    return 0


def register(sub: Any) -> None:
    ledger = sub.add_parser("ledger", help="the ledger file: create, back up, restore")
    led_sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    p = add_command(
        led_sub, "init", cmd_ledger_init, "create the ledger named in the config (0600)"
    )
    with_config(p)
    p = add_command(
        led_sub,
        "backup",
        cmd_ledger_backup,
        "copy the ledger, also while the gateway runs (checked, 0600, holds no keys)",
    )
    with_config(p)
    p.add_argument("--to", required=True, metavar="FILE", help="the copy (must not exist)")
    p = add_command(
        led_sub,
        "restore",
        cmd_ledger_restore,
        "put a backup in place of the ledger (no gateway may run; the old file is kept)",
    )
    with_config(p)
    p.add_argument(
        "--from", dest="source", required=True, metavar="FILE", help="a `ledger backup` copy"
    )
