"""One write transaction on a ledger connection, with SQLite's errors turned into LedgerError."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sealink.errors import LedgerError

__all__ = ["transaction"]


@contextmanager
def transaction(db: sqlite3.Connection, path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE (the write lock first, so what is read inside stays true until COMMIT)
    ... COMMIT, or ROLLBACK and re-raise. A sealink error raised inside passes unchanged."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {what} failed: {exc}") from None
