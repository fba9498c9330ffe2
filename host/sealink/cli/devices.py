"""`sealink devices add|enrol|list|quarantine|release|adopt`: registered seals and their quarantine.

`add` writes the seal's link key to the key store (gateway.link_keys, 0600), then its row to the
ledger, which holds no keys; its chip's public key, where the fleet's registry has spoken for
the seal, is the registry's (SPEC §11.6). `list` says of each seal whether the key store has
its key, never the key. `enrol` keeps the enrolment authority's certificate for the seal
(SPEC §5.11), which the gateway hands to the seal at its next session: only then do the seal's
records free its journal once this gateway signed them stored.

A quarantine (SPEC §5.8) is sticky: the gateway sets it when a seal's input fails a check, and
only an operator clears it here; the running service learns of it from the ledger's audit trail
(`operator_actions`). A seal ahead of the ledger (it holds acknowledgements for events this
ledger never stored) is cleared only by `adopt`, which records the missing counters as a gap
countersigned with the gateway key: evidence, exported and verified like the events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import (
    add_command,
    default_operator,
    iso_ms,
    load,
    open_ledger,
    print_json,
    with_config,
    with_operator,
)
from sealink.config import NAME_RE, Config
from sealink.crypto.ackkey import open_ack_key
from sealink.crypto.enrolment import Certificate
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.sealkey import parse_seal_key
from sealink.crypto.signer import GatewayKey, check_private_file
from sealink.errors import DeviceError, KeyFileError
from sealink.ledger import AHEAD_OF_LEDGER, Ledger
from sealink.ledger.keyhistory import service_lock
from sealink.mqtt.registry import RegistryEntry, RegistryRefused, open_entry, registry_topic
from sealink.topics import Topics

__all__ = ["read_device_key", "read_seal_key", "register"]

_HEX_SHOWN = 16  # bytes of each rejected frame shown by `devices quarantine DEVICE`


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


def read_seal_key(
    given: str | None, key_file: str | os.PathLike[str], fleet: RegistryEntry | None = None
) -> bytes:
    """The seal chip's public key: --seal-key, else the provisioning JSON's "seal_key", else
    the one the fleet's registry names (`fleet`: its message this gateway holds). One given
    must be the fleet's (SPEC §11.6): the registry is where a seal's key comes from."""
    if given is not None:
        return _fleets(parse_seal_key(given, "--seal-key"), fleet)
    text = Path(key_file).read_bytes().strip()
    try:
        found = json.loads(text).get("seal_key") if text.startswith(b"{") else None
    except (ValueError, AttributeError):
        found = None
    if isinstance(found, str):
        return _fleets(parse_seal_key(found, f"{key_file}: seal_key"), fleet)
    if fleet is not None:
        return fleet.seal_key
    raise KeyFileError(
        f'no seal key: {key_file} has no "seal_key" (the chip\'s public key, printed '
        "by tools/provision.py) and the fleet's registry names none; give it with --seal-key HEX"
    )


def _fleets(seal_key: bytes, fleet: RegistryEntry | None) -> bytes:
    if fleet is not None and seal_key != fleet.seal_key:
        raise DeviceError(
            f"key_substitution: the fleet's registry (seq {fleet.seq}) names seal key "
            f"{fleet.seal_key.hex()[:16]}... for {fleet.device}, not {seal_key.hex()[:16]}...; "
            "register the seal without a seal key to take the fleet's"
        )
    return seal_key


def _fleet_entry(config: Config, ledger: Ledger, device: str) -> RegistryEntry | None:
    """The fleet's registry message for `device` this gateway applied (None: none, or no
    `[fleet] public_key`), verified again under the fleet key: the ledger is not trusted to
    vouch for a seal key on its own."""
    key = config.fleet.public_key
    floor = ledger.fleet_floor(device) if key is not None else None
    if key is None or floor is None:
        return None
    prefix = config.mqtt.prefix
    try:
        return open_entry(floor[1], registry_topic(prefix, device), key, prefix)
    except RegistryRefused as exc:
        raise DeviceError(
            f"the fleet registry message held for {device} does not verify under [fleet] "
            f"public_key ({exc.reason}: {exc.detail})"
        ) from None


def cmd_devices_add(args: argparse.Namespace) -> int:
    if not NAME_RE.match(args.device) or args.device == "gateway":
        raise DeviceError(
            f"device id {args.device!r}: 1..32 characters of A-Z a-z 0-9 . _ - (not 'gateway')"
        )
    key = read_device_key(args.key_file)
    config = load(args)
    with open_ledger(config) as ledger:
        fleet = _fleet_entry(config, ledger, args.device)
        seal_key = read_seal_key(args.seal_key, args.key_file, fleet)
        ledger.add_device(args.device, key, seal_key, replace=args.replace)
    print(
        f"registered {args.device} (seal key {seal_key[:8].hex()}…; link key in "
        f"{config.link_keys})",
        file=sys.stderr,
    )
    return 0


def cmd_devices_enrol(args: argparse.Namespace) -> int:
    cert = Certificate.load(Path(args.certificate))
    if cert.device != args.device:
        raise DeviceError(f"{args.certificate} enrols {cert.device}, not {args.device}")
    config = load(args)
    if cert.gateway_key:
        if config.ack_key_file is None or not config.ack_key_file.exists():
            raise DeviceError(
                f"no acknowledgement key {config.ack_key_file}: run `sealink keys init` first"
            )
        with open_ack_key(config.ack_key_file, config.ack_key_tpm) as ack_key:
            ours = ack_key.public
        if cert.gateway_key != ours:
            raise DeviceError(
                f"{args.certificate} enrols {args.device} with another gateway's key "
                f"({cert.gateway_key[:8].hex()}…, this gateway's is {ours[:8].hex()}…)"
            )
    with open_ledger(config) as ledger:
        ledger.enrol(args.device, cert.to_json(), cert.serial)
    what = "revocation" if not cert.gateway_key else "enrolment"
    print(
        f"{args.device}: {what} serial {cert.serial} kept; the gateway hands it to the seal "
        "at its next session",
        file=sys.stderr,
    )
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    config = load(args)
    with open_ledger(config) as ledger:
        rows = ledger.devices()
    keys = LinkKeyStore(config.link_keys).load()
    for row in rows:
        print_json({**row, "link_key": row["device"] in keys})
    for row in rows:
        if row["device"] not in keys:
            print(
                f"{row['device']}: no link key in {config.link_keys}; the gateway refuses its "
                f"HELLO until `sealink devices add {row['device']} --replace --key-file ...`",
                file=sys.stderr,
            )
    return 0


# quarantine ------------------------------------------------------------------------------------


def cmd_devices_quarantine(args: argparse.Namespace) -> int:
    if args.hold:
        if not args.device or not args.note:
            raise DeviceError("--hold needs a DEVICE and --note TEXT (why, for the audit trail)")
        operator = args.operator or default_operator()
        with open_ledger(load(args)) as ledger:
            ledger.quarantine_device(args.device, operator, args.note)
        print_json({"device": args.device, "action": "quarantine", "operator": operator})
        print(
            f"{args.device}: quarantined; nothing it sends is acked until released", file=sys.stderr
        )
        return 0
    with open_ledger(load(args)) as ledger:
        if args.device:
            return _show_device(ledger, args.device, args.limit, args.json)
        return _show_all(ledger, args.json)


def _show_all(ledger: Ledger, as_json: bool) -> int:
    held = [d for d in ledger.devices() if d["quarantine"] is not None]
    if as_json:
        for d in held:
            print_json(
                {
                    "device": d["device"],
                    "stored": d["stored"],
                    "ahead_acked": d["ahead_acked"],
                    **d["quarantine"],
                }
            )
        return 0
    if not held:
        print("no device is quarantined")
        return 0
    print(f"{'DEVICE':<32}  {'REASON':<18}  {'SINCE':<24}  DETAIL")
    for d in held:
        q = d["quarantine"]
        print(f"{d['device']:<32}  {q['reason']:<18}  {iso_ms(q['since_ms']):<24}  {q['detail']}")
    return 0


def _show_device(ledger: Ledger, device: str, limit: int, as_json: bool) -> int:
    report = _device_report(ledger, device, limit)
    if as_json:
        print_json(report)
    else:
        _print_device_report(report, limit)
    return 0


def _device_report(ledger: Ledger, device: str, limit: int) -> dict[str, Any]:
    record = ledger.device_record(device)
    if record is None:
        raise DeviceError(f"device {device} is not registered (sealink devices add)")
    q = record.quarantine
    rows = [
        {
            "received_ms": row.received_ms,
            "port": row.port,
            "reason": row.reason,
            "detail": row.detail,
            "size": len(row.data or b""),
            "hex": (row.data or b"")[:_HEX_SHOWN].hex(),
        }
        for row in ledger.quarantined(device, limit=limit)
    ]
    counts = [
        {
            "port": r.port,
            "reason": r.reason,
            "count": r.count,
            "first_ms": r.first_ms,
            "last_ms": r.last_ms,
        }
        for r in ledger.rejections(device)
    ]
    return {
        "device": device,
        "quarantine": None
        if q is None
        else {"reason": q.reason, "detail": q.detail, "since_ms": q.since_ms},
        "stored": record.stored,
        "ahead_acked": record.ahead_acked,
        "rows": rows,
        "rejections": counts,
    }


def _print_device_report(report: dict[str, Any], limit: int) -> None:
    device, q, stored, ahead = (
        report["device"],
        report["quarantine"],
        report["stored"],
        report["ahead_acked"],
    )
    if q is None:
        print(f"{device}: not quarantined (stored up to counter {stored})")
    else:
        print(f"{device}: quarantined since {iso_ms(q['since_ms'])}: {q['reason']}: {q['detail']}")
        if q["reason"] == AHEAD_OF_LEDGER and ahead is not None:
            print(
                f"  the seal acknowledged up to {ahead}, this ledger holds {stored}: "
                f"`sealink devices adopt {device} --note ...` records {stored + 1}..{ahead} "
                "as lost"
            )
    rows = report["rows"]
    print(
        f"recent rejected inputs (newest last, at most {limit}):"
        if rows
        else "no rejected input kept"
    )
    for r in rows:
        more = "…" if r["size"] > _HEX_SHOWN else ""
        print(
            f"  {iso_ms(r['received_ms'])}  {r['port']}  {r['reason']}  {r['size']} bytes "
            f"{r['hex']}{more}  {r['detail']}"
        )
    if report["rejections"]:
        print("rejections counted:")
    for c in report["rejections"]:
        print(
            f"  {c['port']}  {c['reason']}: {c['count']} "
            f"({iso_ms(c['first_ms'])} .. {iso_ms(c['last_ms'])})"
        )


def cmd_devices_release(args: argparse.Namespace) -> int:
    operator = args.operator or default_operator()
    with open_ledger(load(args)) as ledger:
        was = ledger.release(args.device, operator, args.note)
    print_json(
        {
            "device": args.device,
            "action": "release",
            "operator": operator,
            "released": {"reason": was.reason, "detail": was.detail},
        }
    )
    print(
        f"{args.device}: released ({was.reason}); the running gateway acks it again",
        file=sys.stderr,
    )
    return 0


def cmd_devices_adopt(args: argparse.Namespace) -> int:
    operator = args.operator or default_operator()
    config = load(args)
    topic = Topics(config.mqtt.prefix, config.gateway_id).gaps(args.device)
    # Held as the service holds it, so that no `keys rotate` retires the key between its load
    # and the gap's leaf (SPEC §14.7).
    with service_lock(config.ledger_path, exclusive=False), open_ledger(config) as ledger:
        key = GatewayKey.load(config.key_file)  # the gap is evidence: countersigned like an event
        first, last = ledger.adopt(args.device, operator, args.note, key.sign1, topic)
    print_json(
        {
            "device": args.device,
            "action": "adopt",
            "operator": operator,
            "gap": [first, last],
            "note": args.note,
        }
    )
    print(
        f"{args.device}: counters {first}..{last} recorded as lost (a gap signed by kid "
        f"{key.kid.hex()}); its next event anchors the chain, the quarantine is cleared",
        file=sys.stderr,
    )
    return 0


def register(sub: Any) -> None:
    devices = sub.add_parser("devices", help="registered seals and their quarantine")
    dev_sub = devices.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = add_command(
        dev_sub,
        "add",
        cmd_devices_add,
        "register a seal: its link key (into the key store) and its chip's public key",
    )
    with_config(p)
    p.add_argument("device", help="device id ([A-Za-z0-9._-], 1..32)")
    p.add_argument(
        "--key-file",
        required=True,
        help="file (mode 0600) with the key as 64 hex digits or provisioning JSON",
    )
    p.add_argument(
        "--seal-key",
        metavar="HEX",
        help="the seal chip's P-256 public key, X || Y as 128 hex digits (default: the "
        'provisioning JSON\'s "seal_key")',
    )
    p.add_argument("--replace", action="store_true", help="replace an existing registration")
    p = add_command(
        dev_sub,
        "enrol",
        cmd_devices_enrol,
        "keep the enrolment certificate (`sealink authority certify`) this gateway hands the seal",
    )
    with_config(p)
    p.add_argument("device", help="device id")
    p.add_argument("certificate", help="the certificate file (JSON)")
    p = add_command(
        dev_sub,
        "list",
        cmd_devices_list,
        "list registered seals (JSON Lines; link_key: whether the key store holds its key)",
    )
    with_config(p)

    p = add_command(
        dev_sub,
        "quarantine",
        cmd_devices_quarantine,
        "show quarantined seals (one DEVICE: its rejected inputs and counts), or hold one",
    )
    with_config(p)
    p.add_argument("device", nargs="?", help="show (or with --hold: quarantine) this device")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--limit", type=int, default=20, help="rejected inputs shown (default 20)")
    p.add_argument("--hold", action="store_true", help="quarantine DEVICE now (needs --note)")
    p.add_argument("--note", metavar="TEXT", help="with --hold: why (kept in the audit trail)")
    p.add_argument("--operator", metavar="NAME", help="who acts (default: $SUDO_USER, else $USER)")

    p = add_command(
        dev_sub,
        "release",
        cmd_devices_release,
        "clear a seal's quarantine (not for a seal ahead of the ledger: see adopt)",
    )
    with_config(p)
    p.add_argument("device")
    with_operator(p)

    p = add_command(
        dev_sub,
        "adopt",
        cmd_devices_adopt,
        "a seal ahead of the ledger: record the missing counters as a signed gap, release it",
    )
    with_config(p)
    p.add_argument("device")
    with_operator(p)
