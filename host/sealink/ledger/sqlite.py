"""The gateway's durable ledger: SQLite in WAL mode, synchronous=FULL.

Tables: devices, events (the exact device bytes, their hash and the COSE countersignature),
quarantine (everything rejected, with the bytes), commands (permits, revocations waiting to be
sent and their results), outbox (what must reach MQTT, in order), alarms live in the outbox.

The service writes through ONE connection owned by one worker thread; `commit()` writes a whole
group (events of many devices, quarantine rows, outbox rows, publish marks) in one transaction,
so one fsync serves them all. The CLI opens its own short-lived connection: WAL lets it read and
queue commands while the service runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealink.errors import DeviceError, LedgerError

__all__ = ["Batch", "Command", "EventRow", "Ledger", "OutboxRow", "QuarantineRow", "now_ms"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    registered_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    device TEXT NOT NULL,
    counter INTEGER NOT NULL,
    event BLOB NOT NULL,
    hash BLOB NOT NULL,
    cose BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device, counter)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    device TEXT,
    port TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    data BLOB,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    result INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_pending ON commands (device, id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    device TEXT,
    counter INTEGER,
    created_ms INTEGER NOT NULL,
    published_ms INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_ms IS NULL;
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def id_runs(ids: list[int]) -> list[tuple[int, int]]:
    """The ids as (first, last) runs of consecutive integers: each run holds exactly ids."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


@dataclass(frozen=True, slots=True)
class EventRow:
    device: str
    counter: int
    event: bytes
    hash: bytes
    cose: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    device: str | None
    port: str
    reason: str
    detail: str
    data: bytes | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    device: str | None
    counter: int | None


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    device: str
    kind: str
    body: dict[str, Any]
    state: str
    result: int | None


@dataclass
class Batch:
    """One group commit. Outbox entries are (topic, payload, device, counter)."""

    events: list[EventRow] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    outbox: list[tuple[str, bytes, str | None, int | None]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    command_states: list[tuple[int, str, int | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.events)
            + len(self.quarantine)
            + len(self.outbox)
            + len(self.published)
            + len(self.command_states)
        )


class Ledger:
    """A connection to the ledger file. Not thread-safe: use it from one thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # Device keys live in here: never readable by others, not even for a moment.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns; the device is acked right after.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(_SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: cannot open: {exc}") from None

    def close(self) -> None:
        self._db.close()

    # devices ---------------------------------------------------------------------------------

    def add_device(self, device: str, key: bytes, *, replace: bool = False) -> None:
        if len(key) != 32:
            raise DeviceError(f"device {device}: key must be 32 bytes, got {len(key)}")
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            self._db.execute(
                f"{verb} INTO devices (id, key, registered_ms) VALUES (?, ?, ?)",
                (device, key, now_ms()),
            )
        except sqlite3.IntegrityError:
            raise DeviceError(f"device {device} is already registered") from None

    def device_key(self, device: str) -> bytes | None:
        row = self._db.execute("SELECT key FROM devices WHERE id = ?", (device,)).fetchone()
        return bytes(row[0]) if row else None

    def devices(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT d.id, d.registered_ms, "
            "(SELECT MAX(counter) FROM events e WHERE e.device = d.id), "
            "(SELECT COUNT(*) FROM quarantine q WHERE q.device = d.id) "
            "FROM devices d ORDER BY d.id"
        ).fetchall()
        return [
            {"device": r[0], "registered_ms": r[1], "last_counter": r[2] or 0, "quarantined": r[3]}
            for r in rows
        ]

    # events ----------------------------------------------------------------------------------

    def last_event(self, device: str) -> tuple[int, bytes] | None:
        """(counter, hash) of the device's newest stored event."""
        row = self._db.execute(
            "SELECT counter, hash FROM events WHERE device = ? ORDER BY counter DESC LIMIT 1",
            (device,),
        ).fetchone()
        return (row[0], bytes(row[1])) if row else None

    def event_bytes(self, device: str, counter: int) -> bytes | None:
        row = self._db.execute(
            "SELECT event FROM events WHERE device = ? AND counter = ?", (device, counter)
        ).fetchone()
        return bytes(row[0]) if row else None

    def events(
        self, device: str | None = None, since: int = 0, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        sql = (
            "SELECT device, counter, event, hash, cose, received_ms FROM events "
            "WHERE (? IS NULL OR device = ?) AND counter >= ? ORDER BY device, counter"
        )
        args: list[Any] = [device, device, since]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        for r in self._db.execute(sql, args):
            yield {
                "device": r[0],
                "counter": r[1],
                "event": bytes(r[2]),
                "hash": bytes(r[3]),
                "cose": bytes(r[4]),
                "received_ms": r[5],
            }

    def quarantined(self, device: str | None = None) -> list[QuarantineRow]:
        rows = self._db.execute(
            "SELECT device, port, reason, detail, data, received_ms FROM quarantine "
            "WHERE (? IS NULL OR device = ?) ORDER BY id",
            (device, device),
        ).fetchall()
        return [QuarantineRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # the group commit ------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Write the whole batch in one transaction, or nothing (LedgerError)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if batch.events:
                    db.executemany(
                        "INSERT INTO events (device, counter, event, hash, cose, received_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (e.device, e.counter, e.event, e.hash, e.cose, e.received_ms)
                            for e in batch.events
                        ],
                    )
                if batch.quarantine:
                    db.executemany(
                        "INSERT INTO quarantine (device, port, reason, detail, data, received_ms)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (q.device, q.port, q.reason, q.detail, q.data, q.received_ms)
                            for q in batch.quarantine
                        ],
                    )
                if batch.outbox:
                    ms = now_ms()
                    db.executemany(
                        "INSERT INTO outbox (topic, payload, device, counter, created_ms) "
                        "VALUES (?, ?, ?, ?, ?)",
                        [(t, p, d, c, ms) for t, p, d, c in batch.outbox],
                    )
                if batch.published:
                    ms = now_ms()
                    # PUBACKs come back in id order: one statement per run, not per row
                    db.executemany(
                        "UPDATE outbox SET published_ms = ? WHERE id BETWEEN ? AND ?",
                        [(ms, first, last) for first, last in id_runs(batch.published)],
                    )
                if batch.command_states:
                    ms = now_ms()
                    db.executemany(
                        "UPDATE commands SET state = ?, result = ?, updated_ms = ? WHERE id = ?",
                        [(s, r, ms, i) for i, s, r in batch.command_states],
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: commit failed: {exc}") from None

    # outbox ----------------------------------------------------------------------------------

    def pending_outbox(self, after_id: int, limit: int) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT id, topic, payload, device, counter FROM outbox "
            "WHERE published_ms IS NULL AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def max_outbox_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()
        return int(row[0] or 0)

    def unpublished_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE published_ms IS NULL")
        return int(row.fetchone()[0])

    # commands --------------------------------------------------------------------------------

    def queue_command(self, device: str, kind: str, body: dict[str, Any]) -> int:
        if self.device_key(device) is None:
            raise DeviceError(f"device {device} is not registered (sealink devices add)")
        ms = now_ms()
        cur = self._db.execute(
            "INSERT INTO commands (device, kind, body, created_ms, updated_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (device, kind, json.dumps(body, sort_keys=True), ms, ms),
        )
        return int(cur.lastrowid or 0)

    def next_permit_id(self, device: str) -> int:
        ids = [
            json.loads(r[0]).get("permit", 0)
            for r in self._db.execute(
                "SELECT body FROM commands WHERE device = ? AND kind = 'permit'", (device,)
            )
        ]
        return max(ids, default=0) + 1

    def pending_commands(self, device: str) -> list[Command]:
        return self._commands("WHERE device = ? AND state = 'pending' ORDER BY id", (device,))

    def commands(self, device: str | None = None) -> list[Command]:
        return self._commands("WHERE (? IS NULL OR device = ?) ORDER BY id", (device, device))

    def _commands(self, where: str, args: Sequence[Any]) -> list[Command]:
        rows = self._db.execute(
            f"SELECT id, device, kind, body, state, result FROM commands {where}", args
        ).fetchall()
        return [Command(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]
