"""The gateway's key history in the ledger (table key_transitions, SPEC §14.7), the lock that
keeps a rotation and a running service apart, and the one that keeps two gateways apart.

The transition is signed inside the write transaction that stores it, so the log size it names
is the size at the switch: no leaf can be appended between the two.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sealink.crypto.signer import GatewayKey
from sealink.errors import LedgerError
from sealink.evidence.keys import (
    KeyTransition,
    history_document,
    keys_origin,
    open_transition,
    sign_transition,
    walk,
)
from sealink.ledger import log
from sealink.ledger.db import LedgerMissing, transaction
from sealink.ledger.owner import match_owner

__all__ = ["KeyHistoryStore", "ServiceLockError", "gateway_lock", "service_lock"]


class ServiceLockError(LedgerError):
    """The ledger is held by the running service, or by a key rotation."""


def _lock_file(ledger_path: Path, suffix: str) -> int:
    """Open (or make, 0600) the lock file `<ledger><suffix>`, owned as the ledger is. Only
    beside a ledger that exists: a mistyped path makes no folders and no files."""
    if not ledger_path.exists():
        raise LedgerMissing(ledger_path)
    path = ledger_path.with_name(ledger_path.name + suffix)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    match_owner(ledger_path, path)
    return fd


@contextlib.contextmanager
def gateway_lock(ledger_path: Path) -> Iterator[None]:
    """flock, exclusive, on `<ledger>.gateway`: one gateway service per ledger. Two would
    each take the other's commits for their own and acknowledge on the other's behalf. The
    holder writes its pid there, so the second can name it."""
    fd = _lock_file(ledger_path, ".gateway")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise ServiceLockError(
                f"ledger {ledger_path} is in use by another gateway{who}: one gateway per "
                "ledger; stop it first, or give this one a ledger of its own"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def service_lock(ledger_path: Path, *, exclusive: bool) -> Iterator[None]:
    """flock on `<ledger>.lock`: the service holds it shared while it runs, `keys rotate`
    exclusive. The kernel drops it when the holder dies, so a crash leaves no stale lock."""
    fd = _lock_file(ledger_path, ".lock")
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceLockError(
                "a gateway service is running on this ledger: stop it first"
                if exclusive
                else "a key rotation (`sealink keys rotate`) holds this ledger: start again "
                "when it is done"
            ) from None
        yield
    finally:
        os.close(fd)


class KeyHistoryStore:
    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._path = path

    def transitions(self) -> list[KeyTransition]:
        rows = self._db.execute("SELECT note FROM key_transitions ORDER BY seq")
        return [open_transition(str(r[0])) for r in rows]

    def document(self, gateway_id: str, current: bytes) -> dict[str, Any]:
        """The key history, checked (`sealink keys history --json`); `current`: the key file's
        key, the first one when the gateway never rotated."""
        chain = self.transitions()
        first = chain[0].old if chain else current
        walk(first, [t.note for t in chain], keys_origin(gateway_id))
        return history_document(gateway_id, first, chain)

    def current(self) -> bytes | None:
        """The raw key the latest transition brought in (None: never rotated)."""
        row = self._db.execute(
            "SELECT new_key FROM key_transitions ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else bytes(row[0])

    def rotate(self, old: GatewayKey, new: GatewayKey, origin: str, time_ms: int) -> KeyTransition:
        """Sign and store the transition from `old` to `new` at the current log size."""
        with transaction(self._db, self._path, "record a key transition") as db:
            row = db.execute(
                "SELECT seq, new_key FROM key_transitions ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if row is not None and bytes(row[1]) != old.public_raw():
                raise LedgerError("the key being retired is not the ledger's current key")
            seq = 1 if row is None else int(row[0]) + 1
            transition = sign_transition(old, new, origin, seq, log.size(db), time_ms)
            db.execute(
                "INSERT INTO key_transitions (seq, old_key, new_key, size, time_ms, note) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (seq, transition.old, transition.new, transition.size, time_ms, transition.note),
            )
        return transition
