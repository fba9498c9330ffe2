"""Files made beside an existing ledger keep the ledger file's owner and group.

The service runs as its own user; an operator runs the CLI with sudo. Files that a root CLI
creates next to the ledger (its -wal and -shm, the lock, the link key store) would otherwise
belong to root, and the service could no longer open the ledger or read the keys."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["match_owner", "wal_files"]


def wal_files(ledger: Path) -> tuple[Path, Path]:
    return ledger.with_name(ledger.name + "-wal"), ledger.with_name(ledger.name + "-shm")


def match_owner(ledger: Path, *files: Path) -> None:
    """Give `files` (those that exist) the ledger's owner and group. Only root can, and only
    root needs to: any other user's new files are its own, as the ledger is."""
    if os.geteuid() != 0:
        return
    owner = ledger.stat()
    for file in files:
        try:
            mine = file.stat()
        except FileNotFoundError:
            continue
        if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(file, owner.st_uid, owner.st_gid)
