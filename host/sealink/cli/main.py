"""`sealink`: the gateway's command line.

sealink run --config FILE                 the service (see tools/sealink.service)
sealink keys init|show --config FILE      the gateway's Ed25519 countersigning key
sealink devices add|list --config FILE    register a seal (the host half of provisioning)
sealink permits issue|revoke|list         queued in the ledger; the running service sends them
sealink events list|export                JSON Lines
sealink verify EXPORT --public-key PEM    an auditor's offline check (package sealink_verify)
sealink demo --stamps N [--json]          everything on one machine (package sealink_sim)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO

from sealink.config import NAME_RE, Config, load_config
from sealink.crypto.signer import GatewayKey, check_private_file
from sealink.errors import DeviceError, KeyFileError, SealinkError
from sealink.ledger.sqlite import Ledger
from sealink.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("sealink.cli")


def read_device_key(path: str | os.PathLike[str]) -> bytes:
    """A device key file: 64 hex digits, or the provisioning JSON {"device_id", "key"}; 0600."""
    path = Path(path)
    check_private_file(path, "device key file")
    text = path.read_bytes().strip()
    try:
        if text.startswith(b"{"):
            text = json.loads(text)["key"].encode()
        key = bytes.fromhex(text.decode())
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise KeyFileError(
            f"device key file {path}: expected 64 hex digits or "
            '{"device_id": ..., "key": "<64 hex>"}'
        ) from None
    if len(key) != 32:
        raise KeyFileError(f"device key file {path}: key is {len(key)} bytes, expected 32")
    return key


@contextlib.contextmanager
def _ledger(config: Config) -> Iterator[Ledger]:
    ledger = Ledger(config.ledger_path)
    try:
        yield ledger
    finally:
        ledger.close()


def _load(args: argparse.Namespace, check_key: bool = False) -> Config:
    return load_config(args.config, check_key_file=check_key)


def _print_json(obj: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(obj, sort_keys=True) + "\n")


# run -------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args, check_key=True)
    configure_logging(args.log_level or config.log.level, args.log_json or config.log.json)
    from sealink.gateway.service import Gateway

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Gateway(config) as gateway:
            waiter = asyncio.create_task(stop.wait())
            main = asyncio.create_task(gateway.wait_closed())
            await asyncio.wait({waiter, main}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if main.done():
                main.result()
            log.info("stopping")

    asyncio.run(serve())
    return 0


# keys --------------------------------------------------------------------------------------------


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
        _print_json(
            {
                "kid": key.kid.hex(),
                "alg": "EdDSA",
                "public_pem": key.public_pem().decode(),
                "cose_key_hex": key.cose_key().hex(),
            }
        )
    return 0


# devices -----------------------------------------------------------------------------------------


def cmd_devices_add(args: argparse.Namespace) -> int:
    if not NAME_RE.match(args.device) or args.device == "gateway":
        raise DeviceError(
            f"device id {args.device!r}: 1..32 characters of A-Z a-z 0-9 . _ - (not 'gateway')"
        )
    key = read_device_key(args.key_file)
    with _ledger(_load(args)) as ledger:
        ledger.add_device(args.device, key, replace=args.replace)
    print(f"registered {args.device}", file=sys.stderr)
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    with _ledger(_load(args)) as ledger:
        for row in ledger.devices():
            _print_json(row)
    return 0


# permits -----------------------------------------------------------------------------------------


def cmd_permits_issue(args: argparse.Namespace) -> int:
    now = int(time.time())
    not_before = args.not_before if args.not_before is not None else now
    not_after = args.not_after if args.not_after is not None else not_before + args.valid_for
    if args.count < 1:
        raise SealinkError("--count must be at least 1")
    if not_after <= not_before:
        raise SealinkError("the validity window is empty (not_after <= not_before)")
    with _ledger(_load(args)) as ledger:
        permit = args.permit or ledger.next_permit_id(args.device)
        body = {
            "permit": permit,
            "count": args.count,
            "not_before_s": not_before,
            "not_after_s": not_after,
            "operator": args.operator,
        }
        command = ledger.queue_command(args.device, "permit", body)
    _print_json({"command": command, "device": args.device, **body})
    return 0


def cmd_permits_revoke(args: argparse.Namespace) -> int:
    with _ledger(_load(args)) as ledger:
        command = ledger.queue_command(args.device, "revoke", {"permit": args.permit})
    _print_json({"command": command, "device": args.device, "revoke": args.permit})
    return 0


def cmd_permits_list(args: argparse.Namespace) -> int:
    with _ledger(_load(args)) as ledger:
        for c in ledger.commands(args.device):
            _print_json(
                {
                    "command": c.id,
                    "device": c.device,
                    "kind": c.kind,
                    "state": c.state,
                    "result": c.result,
                    **c.body,
                }
            )
    return 0


# events ------------------------------------------------------------------------------------------


def cmd_events_list(args: argparse.Namespace) -> int:
    with _ledger(_load(args)) as ledger:
        for e in ledger.events(args.device, args.since, args.limit):
            _print_json(
                {
                    "device": e["device"],
                    "counter": e["counter"],
                    "received_ms": e["received_ms"],
                    "hash": e["hash"].hex(),
                }
            )
    return 0


def cmd_events_export(args: argparse.Namespace) -> int:
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        with _ledger(_load(args)) as ledger:
            for e in ledger.events(args.device, args.since):
                _print_json(
                    {
                        "device": e["device"],
                        "counter": e["counter"],
                        "received_ms": e["received_ms"],
                        "hash": e["hash"].hex(),
                        "event": e["event"].hex(),
                        "cose": base64.b64encode(e["cose"]).decode(),
                    },
                    out,
                )
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# parser ------------------------------------------------------------------------------------------


def _with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--config",
        "-c",
        required=required,
        metavar="FILE",
        help="the gateway's TOML configuration file",
    )


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
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = command(sub, "run", cmd_run, "run the gateway service")
    _with_config(p)
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    keys = sub.add_parser("keys", help="the gateway countersigning key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = command(keys_sub, "init", cmd_keys_init, "create the Ed25519 key (file mode 0600)")
    _with_config(p, required=False)
    p.add_argument("--key-file", help="where to write it (default: gateway.key_file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key")
    p = command(keys_sub, "show", cmd_keys_show, "print the key id and public key for export")
    _with_config(p, required=False)
    p.add_argument("--key-file", help="the key file (default: gateway.key_file)")
    p.add_argument(
        "--format",
        choices=["json", "pem", "cose"],
        default="json",
        help="json (kid + PEM + COSE_Key hex), pem, or raw COSE_Key bytes",
    )

    devices = sub.add_parser("devices", help="registered seals")
    dev_sub = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = command(dev_sub, "add", cmd_devices_add, "register a seal with its 32-byte key")
    _with_config(p)
    p.add_argument("device", help="device id ([A-Za-z0-9._-], 1..32)")
    p.add_argument(
        "--key-file",
        required=True,
        help="file (mode 0600) with the key as 64 hex digits or provisioning JSON",
    )
    p.add_argument("--replace", action="store_true", help="replace an existing registration")
    p = command(dev_sub, "list", cmd_devices_list, "list registered seals (JSON Lines)")
    _with_config(p)

    permits = sub.add_parser("permits", help="stamping permits sent to seals")
    per_sub = permits.add_subparsers(dest="permits_command", required=True, metavar="ACTION")
    p = command(
        per_sub,
        "issue",
        cmd_permits_issue,
        "queue a permit; the running service sends it when the seal connects",
    )
    _with_config(p)
    p.add_argument("device")
    p.add_argument("--count", type=int, required=True, help="impressions allowed")
    p.add_argument(
        "--valid-for",
        type=int,
        default=3600,
        metavar="S",
        help="validity from not-before, seconds (default 3600)",
    )
    p.add_argument("--not-before", type=int, metavar="UNIX_S")
    p.add_argument("--not-after", type=int, metavar="UNIX_S")
    p.add_argument("--operator", type=int, default=0)
    p.add_argument("--permit", type=int, help="permit id (default: next free)")
    p = command(per_sub, "revoke", cmd_permits_revoke, "queue the revocation of a permit")
    _with_config(p)
    p.add_argument("device")
    p.add_argument("permit", type=int)
    p = command(per_sub, "list", cmd_permits_list, "queued and sent commands (JSON Lines)")
    _with_config(p)
    p.add_argument("--device")

    events = sub.add_parser("events", help="stored, countersigned events")
    ev_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    p = command(ev_sub, "list", cmd_events_list, "list events (JSON Lines, no signatures)")
    _with_config(p)
    p.add_argument("--device")
    p.add_argument("--since", type=int, default=0, metavar="COUNTER")
    p.add_argument("--limit", type=int)
    p = command(
        ev_sub,
        "export",
        cmd_events_export,
        "export events with device bytes and COSE_Sign1 (JSON Lines)",
    )
    _with_config(p)
    p.add_argument("--device")
    p.add_argument("--since", type=int, default=0, metavar="COUNTER")
    p.add_argument("--out", help="file to write (default: stdout)")

    _add_plugin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except SealinkError as exc:
        print(f"sealink: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
