"""`sealink operators set DEVICE --id N [--pin-file F] [--card-uid HEX] | --remove`: the
seal's table of operators who identify at it (SPEC §5.7), one operator per command, queued in
the ledger and sent by the running service as an OPERATOR.

Only salted hashes leave this process: a fresh random salt per command, SHA-256(salt || PIN
digits) and SHA-256(salt || card UID). The PIN is read from a file nobody else may read, never
from the command line (which `ps` shows to every user); neither it nor its hash is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from sealproto import messages

from sealink.cli.common import add_command, load, open_ledger, print_json, with_config
from sealink.commands import CommandFieldError, validate_command
from sealink.errors import CommandError

__all__ = ["credential", "register"]

# SPEC §5.7: 4..8 ASCII digits, typed on the seal's keypad and ended with '#'.
_PIN = re.compile(rb"[0-9]{4,8}")
# ISO/IEC 14443-3 type A UIDs are 4, 7 or 10 bytes; other readers give up to 10.
_UID_BYTES = (4, 7, 10)
_OPTIONS = {"operator": "--id", "pin": "--pin-file", "card": "--card-uid"}


def credential(salt: bytes, secret: bytes) -> str:
    """The hash the seal compares (SPEC §5.7), as the hex the queued command holds."""
    return hashlib.sha256(salt + secret).hexdigest()


def _read_pin(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise CommandError(f"--pin-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CommandError(
                f"--pin-file {path}: others may read it (mode {stat.S_IMODE(mode):04o}); "
                f"chmod 600 {path}"
            )
        pin = f.read(64).strip()
    if not _PIN.fullmatch(pin):
        raise CommandError(f"--pin-file {path}: the PIN must be 4 to 8 digits (SPEC §5.7)")
    return pin


def _card_uid(text: str) -> bytes:
    try:
        uid = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        raise CommandError(f"--card-uid {text!r} is not hex") from None
    if len(uid) not in _UID_BYTES:
        raise CommandError(f"--card-uid is {len(uid)} bytes; a card UID is 4, 7 or 10")
    return uid


def cmd_operators_set(args: argparse.Namespace) -> int:
    if args.remove == bool(args.pin_file or args.card_uid):
        raise CommandError("give --pin-file and/or --card-uid, or --remove")
    salt = secrets.token_bytes(messages.SALT_LEN)
    body: dict[str, Any] = {"operator": args.id, "salt": salt.hex(), "pin": "", "card": ""}
    if args.pin_file:
        body["pin"] = credential(salt, _read_pin(Path(args.pin_file)))
    if args.card_uid:
        body["card"] = credential(salt, _card_uid(args.card_uid))
    try:
        validate_command("operator", body)
    except CommandFieldError as exc:
        option = _OPTIONS.get(exc.field)
        raise CommandError(f"{option} {exc.problem}" if option else str(exc)) from None
    with open_ledger(load(args)) as ledger:
        command = ledger.queue_command(args.device, "operator", body)
    print_json(
        {
            "command": command,
            "device": args.device,
            "operator": args.id,
            "pin": bool(body["pin"]),
            "card": bool(body["card"]),
        }
    )
    return 0


def register(sub: Any) -> None:
    operators = sub.add_parser("operators", help="who may identify at a seal (PIN, NFC card)")
    op_sub = operators.add_subparsers(dest="operators_command", required=True, metavar="ACTION")
    p = add_command(
        op_sub,
        "set",
        cmd_operators_set,
        "queue one operator's PIN and/or card for a seal; the running service sends it",
    )
    with_config(p)
    p.add_argument("device")
    p.add_argument("--id", type=int, required=True, help="operator id (1..4294967295)")
    p.add_argument("--pin-file", metavar="FILE", help="a file (mode 0600) holding the PIN")
    p.add_argument("--card-uid", metavar="HEX", help="the NFC card's UID, e.g. 04:a2:2b:91")
    p.add_argument("--remove", action="store_true", help="remove the operator from the seal")
