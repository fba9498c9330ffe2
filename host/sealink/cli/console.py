"""`sealink console`: the operators' web console (issue 12), and its accounts and audit trail.

console --config FILE                      serve it until SIGTERM or SIGINT
console init --config FILE                 make the session secret key (0600) and the data dir
console user add NAME --role R --config FILE [--password-file F]   (else prompted, twice)
console user list|disable NAME --config FILE
console audit --config FILE [--json]       the audit trail, oldest first
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, iso_ms, print_json
from sealink.console import ROLES, ConsoleConfig, load_console_config
from sealink.errors import SealinkError

__all__ = ["register"]

_MISSING = "`sealink console` needs the console extra: pip install 'sealink[console]' ({exc})"


def _module(name: str) -> Any:
    """A console module that needs the console extra's libraries, or an error naming them."""
    try:
        return importlib.import_module(f"sealink.console.{name}")
    except ImportError as exc:
        raise SealinkError(_MISSING.format(exc=exc)) from None


def _config(args: argparse.Namespace, check_files: bool = False) -> ConsoleConfig:
    if not args.config:
        raise SealinkError("give the console's configuration: --config FILE")
    return load_console_config(args.config, check_files=check_files)


def _store(args: argparse.Namespace) -> Any:
    return _module("store").Store(_config(args).database)


def cmd_run(args: argparse.Namespace) -> int:
    serve = _module("service").serve
    config = _config(args, check_files=True)

    def listening(url: str) -> None:
        print(f"sealink console: listening on {url}", flush=True)

    asyncio.run(serve(config, listening))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    make_secret = _module("auth").make_secret
    config = _config(args)
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_secret(config.secret_key_file)
    _store(args).close()
    print(f"sealink console: secret key {config.secret_key_file}, data in {config.data_dir}")
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        text = Path(args.password_file).read_text(encoding="utf-8")
        return text.removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise SealinkError("no terminal to ask for the password on: give --password-file FILE")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SealinkError("the two passwords differ")
    return first


def cmd_user_add(args: argparse.Namespace) -> int:
    hash_password = _module("auth").hash_password
    store = _store(args)
    try:
        hashed = hash_password(_password(args))
        try:
            store.add_account(args.name, hashed, args.role)
        except KeyError:
            raise SealinkError(f"an account {args.name!r} exists already") from None
        store.audit("-", "user add", args.name, "ok", f"role {args.role} (command line)")
    finally:
        store.close()
    print(f"sealink console: account {args.name} ({args.role}) added")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        for a in store.accounts():
            state = "disabled" if a.disabled else "enabled"
            print(f"{a.name}\t{a.role}\t{state}\t{iso_ms(a.created_ms)}")
    finally:
        store.close()
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if not store.disable(args.name):
            raise SealinkError(f"no account {args.name!r}")
        store.audit("-", "user disable", args.name, "ok", "command line")
    finally:
        store.close()
    print(f"sealink console: account {args.name} disabled")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        for row in store.audit_rows():
            if args.json:
                print_json(row.to_json())
            else:
                print(
                    f"{iso_ms(row.time_ms)}\t{row.user}\t{row.action}\t{row.target}\t"
                    f"{row.outcome}\t{row.detail}"
                )
    finally:
        store.close()
    return 0


def _with_config(p: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    # On the noun and on each action alike: `console --config F user list` and
    # `console user list --config F` both work (SUPPRESS keeps the action's from hiding it).
    p.add_argument(
        "--config", "-c", metavar="FILE", default=default, help="the console's TOML file"
    )


def register(sub: Any) -> None:
    console = sub.add_parser("console", help="the operators' web console (MQTT consumer)")
    _with_config(console, default=None)
    console.set_defaults(fn=cmd_run)
    c_sub = console.add_subparsers(dest="console_command", metavar="ACTION")
    _with_config(add_command(c_sub, "init", cmd_init, "make the secret key and the data dir"))
    p = add_command(c_sub, "audit", cmd_audit, "print the audit trail, oldest first")
    _with_config(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    user = c_sub.add_parser("user", help="the console's accounts")
    u_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    # No abbreviations: `--password SECRET` must be an error, not --password-file's value
    # (a password never goes on a command line, where `ps` and the shell history keep it).
    what = "add an account (password prompted)"
    p = u_sub.add_parser("add", help=what, description=what, allow_abbrev=False)
    p.set_defaults(fn=cmd_user_add)
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-file", metavar="FILE", help="the password on one line")
    _with_config(p)
    _with_config(add_command(u_sub, "list", cmd_user_list, "list the accounts"))
    p = add_command(u_sub, "disable", cmd_user_disable, "disable an account (at once)")
    p.add_argument("name")
    _with_config(p)
