"""One write transaction on a ledger connection, with SQLite's errors turned into LedgerError
that name their real cause (a full disk, an I/O error), not what failed after it."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sealink.errors import LedgerError

__all__ = ["LedgerMissing", "describe", "transaction"]

# SQLite's primary result codes (sqlite3.h); the extended codes keep them in the low byte.
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
# Less free than a few pages and a WAL frame header: no write of SQLite's can succeed.
_NEARLY_FULL = 64 * 1024


class LedgerMissing(LedgerError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"ledger {path} does not exist: check [gateway] ledger in the config, or create "
            "it with `sealink ledger init --config FILE`"
        )


def describe(exc: sqlite3.Error, path: Path) -> str:
    """SQLite's error, with the disk's state when the disk is what failed. A full disk does not
    always come back as SQLITE_FULL: growing the -shm file reports SQLITE_IOERR_SHMSIZE."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code not in (_SQLITE_FULL, _SQLITE_IOERR) and "disk is full" not in str(exc):
        return str(exc)
    name = getattr(exc, "sqlite_errorname", "SQLITE_IOERR")
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if code == _SQLITE_FULL or (free is not None and free < _NEARLY_FULL):
        left = "" if free is None else f", {free} bytes free"
        return f"the disk holding {path.parent} is full{left} ({name}: {exc})"
    return f"I/O error on {path} or its -wal/-shm files ({name}: {exc})"


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock first, so what is read inside stays true until COMMIT)
    ... COMMIT, or ROLLBACK and re-raise. A sealink error raised inside passes unchanged.

    On a full disk or an I/O error SQLite may have rolled the transaction back itself: the
    ROLLBACK then fails ("no transaction is active"), and that must not hide the cause."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {what} failed: {describe(exc, path)}") from None
