"""What every `sealink` command shares: the config and ledger it opens, JSON output, the
parser helpers and who the operator is."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pwd
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from sealink.config import Config, load_config
from sealink.crypto.keystore import LinkKeyStore
from sealink.errors import SealinkError
from sealink.ledger.sqlite import Ledger

__all__ = [
    "add_command",
    "default_operator",
    "iso_ms",
    "load",
    "open_ledger",
    "print_json",
    "with_config",
    "with_operator",
]

Handler = Callable[[argparse.Namespace], int]


def load(args: argparse.Namespace, check_key: bool = False) -> Config:
    return load_config(args.config, check_key_file=check_key)


@contextlib.contextmanager
def open_ledger(config: Config) -> Iterator[Ledger]:
    """The ledger, with the key store that registrations write to (and that the migration of
    an older file moves its link keys to)."""
    ledger = Ledger(config.ledger_path, LinkKeyStore(config.link_keys))
    try:
        yield ledger
    finally:
        ledger.close()


def print_json(obj: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(obj, sort_keys=True) + "\n")


def iso_ms(ms: int | None) -> str:
    """Unix milliseconds as UTC ISO-8601 (to the millisecond), '-' for none."""
    if ms is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_operator() -> str:
    """Who is acting: the user behind sudo, else $USER, else the account running this."""
    for name in ("SUDO_USER", "USER"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise SealinkError(
            "cannot tell who you are ($SUDO_USER, $USER unset): give --operator"
        ) from None


def add_command(parent: Any, name: str, fn: Handler, help: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    p.set_defaults(fn=fn)
    return p


def with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        "-c",
        required=required,
        metavar="FILE",
        help="the gateway's TOML configuration file",
    )


def with_operator(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--note", required=True, metavar="TEXT", help="why (kept in the ledger's audit trail)"
    )
    p.add_argument("--operator", metavar="NAME", help="who acts (default: $SUDO_USER, else $USER)")
