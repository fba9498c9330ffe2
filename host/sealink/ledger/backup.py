"""Online backup and restore of the ledger file (`sealink ledger backup|restore`).

A backup is SQLite's online backup of one connection's snapshot: the running service keeps
committing meanwhile (WAL: readers never block the writer). The copy is a single file (journal
mode DELETE, no -wal beside it), 0600, checked with `PRAGMA integrity_check` before it gets its
name. It holds no secret: the link keys live in the key store (schema 5 moved them out and
VACUUMed their bytes away) and the gateway's keys in their files; what it holds of a seal is
its public key and enrolment certificate.

A restore puts a checked copy in place of the ledger; the file it replaces is kept beside it
(`<ledger>.replaced-<UTC time>`), its WAL checkpointed into it first, so nothing it held is
lost by the restore.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import sqlite3
from pathlib import Path

from sealink.errors import LedgerError
from sealink.ledger.db import describe
from sealink.ledger.owner import match_owner, wal_files

__all__ = ["backup", "check_copy", "restore"]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_copy(path: Path) -> str:
    """integrity_check and the schema of a ledger copy, opened read-only; its schema."""
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            verdict = [str(r[0]) for r in db.execute("PRAGMA integrity_check")]
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: not a readable sealink ledger: {describe(exc, path)}") from None
    if verdict != ["ok"]:
        raise LedgerError(f"{path}: integrity_check failed: {'; '.join(verdict[:5])}")
    if row is None:
        raise LedgerError(f"{path}: not a sealink ledger (no schema)")
    return str(row[0])


def backup(source: sqlite3.Connection, ledger: Path, to: Path) -> str:
    """Copy the ledger that `source` is open on to `to` (which must not exist); its schema."""
    tmp = to.with_name(f".{to.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as copy:
                source.backup(copy)
                # One self-contained file: no -wal to carry along or lose.
                copy.execute("PRAGMA journal_mode=DELETE")
            schema = check_copy(tmp)
            _fsync(tmp)
            os.link(tmp, to)  # never over an existing file
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            for leftover in (tmp.with_name(tmp.name + "-journal"), *wal_files(tmp)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        _fsync(to.parent)
    except sqlite3.Error as exc:
        raise LedgerError(f"backup of {ledger} to {to} failed: {describe(exc, to)}") from None
    except FileExistsError:
        raise LedgerError(f"{to} exists already: not overwriting it") from None
    except OSError as exc:
        raise LedgerError(f"backup of {ledger} to {to} failed: {exc.strerror or exc}") from None
    return schema


def restore(ledger: Path, source: Path) -> Path | None:
    """Put a checked copy of `source` in place of `ledger`; the caller holds the locks that keep
    every gateway off it. Returns where the replaced file was kept (None: there was none)."""
    check_copy(source)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = ledger.with_name(f"{ledger.name}.replaced-{stamp}")
    incoming = ledger.with_name(f".{ledger.name}.restoring")
    try:
        ledger.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            incoming.unlink()
        fd = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        replaced = ledger.exists()
        if replaced:
            match_owner(ledger, incoming)
            _checkpoint(ledger)
            os.link(ledger, aside)
        os.replace(incoming, ledger)
        _fsync(ledger.parent)
    except sqlite3.Error as exc:
        raise LedgerError(f"restore of {ledger} failed: {describe(exc, ledger)}") from None
    except OSError as exc:
        raise LedgerError(f"restore of {ledger} failed: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            incoming.unlink()
    return aside if replaced else None


def _checkpoint(ledger: Path) -> None:
    """Everything the WAL holds into the file itself, and the WAL emptied: the file set aside
    is whole, and no old -wal is left for the restored file to be read with."""
    with contextlib.closing(sqlite3.connect(ledger, isolation_level=None)) as db:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise LedgerError(
                f"ledger {ledger} is being read or written (a CLI command?): try again"
            )
    for leftover in wal_files(ledger):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
