"""`sealink keys rotate|history`: a new countersigning key without orphaning the evidence made
under the old one (SPEC §14.7).

`rotate` runs only while the service is stopped: the service signs every record with the key it
loaded at start, so a rotation under it would leave records signed by a retired key after the
switch (what a stolen key looks like). It holds the ledger's lock exclusively, which the service
holds shared while it runs, and works in an order a crash cannot break: the new key is written
beside the old (`<key_file>.new`, 0600, fsynced), the transition signed by both is committed to
the ledger, then the new key is renamed over the old. A rotation interrupted after the commit is
finished by running `rotate` again; the service refuses to start until it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sealink.cli.common import add_command, iso_ms, load, open_ledger, print_json, with_config
from sealink.config import Config
from sealink.crypto.signer import GatewayKey
from sealink.errors import SealinkError
from sealink.evidence.keys import keys_origin, kid_of
from sealink.ledger import now_ms
from sealink.ledger.keyhistory import service_lock

__all__ = ["refuse_orphaning", "register_rotation"]


def _pending(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + ".new")


def _install(pending: Path, key_file: Path) -> None:
    os.replace(pending, key_file)
    fd = os.open(key_file.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_synced(key: GatewayKey, path: Path) -> None:
    key.save(path, overwrite=True)  # a leftover of a rotation that never committed: unused
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    config = load(args)
    key_file, pending = config.key_file, _pending(config.key_file)
    with service_lock(config.ledger_path, exclusive=True), open_ledger(config) as ledger:
        old = GatewayKey.load(key_file)
        current = ledger.key_history.current()
        if current is not None and current != old.public_raw():
            if pending.exists() and GatewayKey.load(pending).public_raw() == current:
                _install(pending, key_file)
                print(
                    f"finished an interrupted rotation: {key_file} is kid {kid_of(current).hex()}",
                    file=sys.stderr,
                )
                sys.stdout.write(GatewayKey.load(key_file).public_pem().decode())
                return 0
            raise SealinkError(
                f"{key_file} is kid {old.kid.hex()}, but the ledger's key history ends with kid "
                f"{kid_of(current).hex()}: restore that key file before rotating"
            )
        new = GatewayKey.generate()
        _save_synced(new, pending)
        transition = ledger.key_history.rotate(old, new, keys_origin(config.gateway_id), now_ms())
        _install(pending, key_file)
        first = ledger.key_history.transitions()[0].old
    print(
        f"rotated {key_file}: kid {old.kid.hex()} -> {new.kid.hex()} from log size "
        f"{transition.size} (transition {transition.seq}); the old private key is gone.\n"
        f"Auditors keep pinning the FIRST key, kid {kid_of(first).hex()}, and take the key "
        f"history from `sealink keys history --json` (exports carry it); the service publishes "
        f"it retained on its keys topic when it starts.",
        file=sys.stderr,
    )
    sys.stdout.write(new.public_pem().decode())
    return 0


def cmd_keys_history(args: argparse.Namespace) -> int:
    config = load(args)
    current = GatewayKey.load(config.key_file).public_raw()
    with open_ledger(config) as ledger:
        doc = ledger.key_history.document(config.gateway_id, current)
        chain = ledger.key_history.transitions()
    if args.json:
        print_json(doc)
        return 0
    first, *later = doc["keys"]
    print(f"key 1: kid {first['kid']} (the first key: pin this one)")
    for number, (entry, t) in enumerate(zip(later, chain, strict=True), 2):
        print(
            f"key {number}: kid {entry['kid']}, from log size {t.size} "
            f"({iso_ms(t.time_ms)}), signed by key {number - 1} and itself"
        )
    return 0


def refuse_orphaning(config: Config) -> None:
    """`keys init --force` must not replace a key the ledger's evidence depends on."""
    if not config.ledger_path.exists():
        return
    with open_ledger(config) as ledger:
        size, rotations = ledger.log.size(), len(ledger.key_history.transitions())
    if size or rotations:
        raise SealinkError(
            f"the ledger {config.ledger_path} holds {size} records and {rotations} key "
            "transitions made under the current key: replacing it would leave them "
            "unverifiable. Use `sealink keys rotate` (the old public key stays in the key "
            "history)"
        )


def register_rotation(keys_sub: Any) -> None:
    p = add_command(
        keys_sub,
        "rotate",
        cmd_keys_rotate,
        "replace the countersigning key, the transition signed by both (service stopped)",
    )
    with_config(p)
    p = add_command(keys_sub, "history", cmd_keys_history, "the chain of countersigning keys")
    with_config(p)
    p.add_argument("--json", action="store_true", help="what `sealink verify --key-history` reads")
