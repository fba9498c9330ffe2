"""`sealink`: the gateway's command line.

sealink run --config FILE                 the service (see tools/sealink.service)
sealink keys init|show --config FILE      the gateway's Ed25519 countersigning key
sealink ledger init|backup|restore --config FILE   the ledger file (only `init` creates one)
sealink config check --config FILE [--json]   the config, its files and the broker, checked
sealink devices add|list|quarantine|release|adopt   seals, and what an operator decides
sealink permits issue|revoke|list         queued in the ledger; the running service sends them
sealink operators set DEVICE --id N ...   who may identify at a seal (PIN, card; SPEC §5.7)
sealink approvers keygen|add|list|revoke  the approval system's keys (SPEC §11.5)
sealink approve permit|revoke|release|bundle   an approver's signed request over MQTT
sealink events list [--follow]|export     stored events: columns or JSON Lines; evidence
sealink alarms list [--follow]            the alarms the gateway raised
sealink watch --config FILE               live seals, impressions and alarms in the terminal
sealink evidence checkpoint|prove|consistency   the transparency log's checkpoints and proofs
sealink witness init|run                  cosign gateways' checkpoints (SPEC §14.6)
sealink fleet migrate|run|records|gaps|forks   the fleet ledger in PostgreSQL (issue 14)
sealink console [init|user|audit] --config FILE   the operators' web console
sealink verify EXPORT --public-key PEM    an auditor's offline check (package sealink_verify)
sealink demo --stamps N [--json]          everything on one machine (package sealink_sim)

Errors reach the user as one line, `sealink: error: ...`, exit status 2; a fault in sealink
itself as `sealink: internal error: ...`, status 70 (SEALINK_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

from sealink.cli import (
    alarms,
    approve,
    approvers,
    authority,
    configcheck,
    console,
    devices,
    events,
    evidence,
    fleet,
    keys,
    ledger,
    operators,
    permits,
    run,
    watch,
    witness,
)
from sealink.errors import SealinkError

__all__ = ["build_parser", "main"]

log = logging.getLogger("sealink.cli")

_EXIT_ERROR = 2
_EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
_EXIT_INTERRUPTED = 130


def _add_plugin_commands(sub: Any) -> None:
    """Subcommands registered by other installed packages (entry point group
    `sealink.commands`): `verify` from sealink_verify, `demo` from sealink_sim."""
    for entry in sorted(entry_points(group="sealink.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as exc:
            log.debug("command plugin unavailable", extra={"fields": {"name": entry.name}})
            p = sub.add_parser(entry.name, help=f"(unavailable: {exc})")
            p.set_defaults(fn=_unavailable(entry.name, exc))
            continue
        register(sub)


def _unavailable(name: str, exc: ImportError) -> Callable[[argparse.Namespace], int]:
    def fn(args: argparse.Namespace) -> int:
        raise SealinkError(f"`sealink {name}` cannot load: {exc}")

    return fn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealink",
        description="sealink gateway: verify, countersign, store and publish seal impressions",
        epilog="exit status: 0 done, 2 error (one line on stderr), 70 internal error",
    )
    parser.add_argument("--version", action="version", version=f"sealink {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    nouns = (
        run,
        keys,
        authority,
        ledger,
        configcheck,
        devices,
        permits,
        operators,
        approvers,
        approve,
        events,
        alarms,
        evidence,
        witness,
        watch,
        console,
        fleet,
    )
    for noun in nouns:
        noun.register(sub)
    _add_plugin_commands(sub)
    return parser


def _version() -> str:
    try:
        return version("sealink")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except SealinkError as exc:
        print(f"sealink: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except sqlite3.Error as exc:  # a read that the ledger's own methods do not wrap
        print(f"sealink: error: ledger: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except OSError as exc:  # a file named on the command line: unreadable, unwritable, missing
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sealink: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        return _EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("SEALINK_TRACEBACK"):
            raise
        print(
            f"sealink: internal error: {type(exc).__name__}: {exc} "
            "(a bug; SEALINK_TRACEBACK=1 shows where)",
            file=sys.stderr,
        )
        return _EXIT_INTERNAL
