"""The console's own SQLite: accounts, the audit trail, alarm acknowledgements, and the
verified records and alarms it has seen (for search, and so an ack outlives a restart).

It holds nothing of a gateway's ledger: every row here came from a message the feed verified.
One connection, used from the event loop only (each call is a short transaction).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealink.console.feed import Alarm, Impression

__all__ = ["Account", "AuditRow", "RequestRow", "Store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    sid TEXT PRIMARY KEY, user TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alarms (
    key TEXT PRIMARY KEY, gateway TEXT NOT NULL, device TEXT NOT NULL, time_ms INTEGER NOT NULL,
    body TEXT NOT NULL, acked_by TEXT, acked_ms INTEGER);
CREATE TABLE IF NOT EXISTS records (
    device TEXT NOT NULL, counter INTEGER NOT NULL, gateway TEXT NOT NULL, kind INTEGER NOT NULL,
    permit INTEGER NOT NULL, operator INTEGER NOT NULL, time_s INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, record_sha256 TEXT NOT NULL, cose BLOB NOT NULL,
    PRIMARY KEY (device, counter));
CREATE TABLE IF NOT EXISTS requests (
    request TEXT PRIMARY KEY, gateway TEXT NOT NULL, action TEXT NOT NULL, device TEXT NOT NULL,
    user TEXT NOT NULL, time_ms INTEGER NOT NULL, fields TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'sent', last TEXT NOT NULL DEFAULT '{}', updated_ms INTEGER);
CREATE INDEX IF NOT EXISTS records_by_time ON records (device, received_ms);
"""


_SESSION_MS = 8 * 3600 * 1000  # as long as the session cookie lives


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Account:
    name: str
    hash: str
    role: str
    disabled: bool
    created_ms: int


@dataclass(frozen=True)
class AuditRow:
    id: int
    time_ms: int
    user: str
    action: str
    target: str
    outcome: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class RequestRow:
    """A request the console sent on the approval path, with the latest result it got."""

    request: str
    gateway: str
    action: str
    device: str
    user: str
    time_ms: int
    fields: dict[str, Any]
    state: str  # `sent` until the gateway's first result
    last: dict[str, Any]  # that latest result's body (SPEC §11.5)
    updated_ms: int | None

    @property
    def permit(self) -> Any:
        return self.last.get("permit", self.fields.get("permit"))

    @property
    def count(self) -> Any:
        return self.last.get("count", self.fields.get("count"))


_REQUEST_COLUMNS = (
    "request, gateway, action, device, user, time_ms, fields, state, last, updated_ms"
)


def _request_row(row: tuple[Any, ...]) -> RequestRow:
    values = list(row)
    values[6], values[8] = json.loads(values[6]), json.loads(values[8])
    return RequestRow(*values)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an audit row is on disk when it returns
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)  # password hashes and the audit trail: the console's user only

    def close(self) -> None:
        self._db.close()

    # accounts --------------------------------------------------------------------------------

    def add_account(self, name: str, hash_: str, role: str) -> None:
        try:
            with self._db:
                self._db.execute(
                    "INSERT INTO accounts (name, hash, role, created_ms) VALUES (?, ?, ?, ?)",
                    (name, hash_, role, _now_ms()),
                )
        except sqlite3.IntegrityError:
            raise KeyError(name) from None

    def account(self, name: str) -> Account | None:
        row = self._db.execute(
            "SELECT name, hash, role, disabled, created_ms FROM accounts WHERE name = ?", (name,)
        ).fetchone()
        return Account(row[0], row[1], row[2], bool(row[3]), row[4]) if row else None

    def accounts(self) -> list[Account]:
        rows = self._db.execute(
            "SELECT name, hash, role, disabled, created_ms FROM accounts ORDER BY name"
        ).fetchall()
        return [Account(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def set_hash(self, name: str, hash_: str) -> None:
        with self._db:
            self._db.execute("UPDATE accounts SET hash = ? WHERE name = ?", (hash_, name))

    def disable(self, name: str) -> bool:
        with self._db:
            cur = self._db.execute("UPDATE accounts SET disabled = 1 WHERE name = ?", (name,))
        return cur.rowcount == 1

    # sessions: the cookie holds the id; logout deletes it ------------------------------------

    def add_session(self, sid: str, user: str) -> None:
        with self._db:
            self._db.execute(
                "DELETE FROM sessions WHERE created_ms < ?", (_now_ms() - _SESSION_MS,)
            )
            self._db.execute(
                "INSERT INTO sessions (sid, user, created_ms) VALUES (?, ?, ?)",
                (sid, user, _now_ms()),
            )

    def session_user(self, sid: str) -> str | None:
        row = self._db.execute(
            "SELECT user FROM sessions WHERE sid = ? AND created_ms >= ?",
            (sid, _now_ms() - _SESSION_MS),
        ).fetchone()
        return str(row[0]) if row else None

    def end_session(self, sid: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM sessions WHERE sid = ?", (sid,))

    # audit trail -----------------------------------------------------------------------------

    def audit(self, user: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO audit (time_ms, user, action, target, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (_now_ms(), user, action, target, outcome, detail),
            )

    def audit_rows(self, limit: int | None = None) -> list[AuditRow]:
        sql = "SELECT id, time_ms, user, action, target, outcome, detail FROM audit ORDER BY id"
        rows = self._db.execute(sql).fetchall()
        out = [AuditRow(*row) for row in rows]
        return out[-limit:] if limit else out

    # what the feed verified ------------------------------------------------------------------

    def add_record(self, r: Impression) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r.device,
                    r.counter,
                    r.gateway,
                    r.kind,
                    r.permit,
                    r.operator,
                    r.time_s,
                    r.received_ms,
                    r.record_sha256,
                    r.cose,
                ),
            )

    def records(
        self, device: str | None, since_ms: int | None, until_ms: int | None, limit: int = 500
    ) -> list[Impression]:
        where, args = ["1"], []
        for clause, value in (
            ("device = ?", device),
            ("received_ms >= ?", since_ms),
            ("received_ms < ?", until_ms),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        rows = self._db.execute(
            "SELECT gateway, device, counter, kind, permit, operator, time_s, received_ms, "
            f"record_sha256, cose FROM records WHERE {' AND '.join(where)} "
            "ORDER BY received_ms DESC, device, counter DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [Impression(*row) for row in rows]

    def record(self, device: str, counter: int) -> Impression | None:
        rows = self._db.execute(
            "SELECT gateway, device, counter, kind, permit, operator, time_s, received_ms, "
            "record_sha256, cose FROM records WHERE device = ? AND counter = ?",
            (device, counter),
        ).fetchall()
        return Impression(*rows[0]) if rows else None

    def add_alarm(self, a: Alarm) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO alarms (key, gateway, device, time_ms, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (a.key, a.gateway, a.device, a.time_ms, json.dumps(a.body, sort_keys=True)),
            )

    def alarms(self, limit: int = 200) -> list[tuple[Alarm, str | None, int | None]]:
        """The latest alarms, newest first, each with who acknowledged it and when."""
        rows = self._db.execute(
            "SELECT key, gateway, device, time_ms, body, acked_by, acked_ms FROM alarms "
            "ORDER BY time_ms DESC LIMIT ?",
            (limit,),
        ).fetchall()
        out = []
        for key, gateway, device, time_ms, body, by, at in rows:
            seq = int(key.rpartition(":")[2])
            out.append((Alarm(gateway, device, seq, time_ms, json.loads(body)), by, at))
        return out

    def ack(self, key: str, user: str) -> bool:
        """Acknowledge an alarm not yet acknowledged; False if there is none such."""
        with self._db:
            cur = self._db.execute(
                "UPDATE alarms SET acked_by = ?, acked_ms = ? WHERE key = ? AND acked_by IS NULL",
                (user, _now_ms(), key),
            )
        return cur.rowcount == 1

    # the approval path -----------------------------------------------------------------------

    def add_request(
        self, request: str, gateway: str, action: str, device: str, user: str, fields: Any
    ) -> None:
        with self._db:
            self._db.execute(
                "INSERT INTO requests (request, gateway, action, device, user, time_ms, fields) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request, gateway, action, device, user, _now_ms(), json.dumps(fields)),
            )

    def add_result(self, request: str, body: dict[str, Any]) -> RequestRow | None:
        """A result of a request: the latest state shown; None for a request not ours."""
        state = str(body.get("state", "?"))
        kept = {k: v for k, v in body.items() if k != "bundle"}  # the bundle is a download
        with self._db:
            self._db.execute(
                "UPDATE requests SET state = ?, last = ?, updated_ms = ? WHERE request = ?",
                (state, json.dumps(kept, sort_keys=True), _now_ms(), request),
            )
        return self.request_row(request)

    def request_row(self, request: str) -> RequestRow | None:
        row = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request = ?", (request,)
        ).fetchone()
        return _request_row(row) if row else None

    def requests(self, actions: tuple[str, ...], limit: int = 200) -> list[RequestRow]:
        marks = ", ".join("?" for _ in actions)
        rows = self._db.execute(
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE action IN ({marks}) "
            "ORDER BY time_ms DESC LIMIT ?",
            (*actions, limit),
        ).fetchall()
        return [_request_row(r) for r in rows]
