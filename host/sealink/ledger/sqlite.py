"""The gateway's durable ledger: SQLite in WAL mode, synchronous=FULL.

Tables (ledger/schema.py): devices (B, the sticky quarantine, the chip's public key; the link
keys are in the key store, crypto/keystore.py, never here), events (the exact device
bytes, their hash and the COSE countersignature), gaps (counters an operator declared lost,
countersigned), quarantine (rejected inputs with their bytes, rate-limited) and rejections
(every rejected input counted), commands (permits, revocations waiting to be sent and their
results), operator_actions (the audit trail), outbox (what must reach MQTT, in order; alarms
live there too; a published event's or gap's payload is dropped, as its table holds the same
bytes), and the transparency log (log_leaves, log_nodes, checkpoints: ledger/log.py,
SPEC §14), appended in the same transaction as the records it holds.

The service writes through ONE connection owned by one worker thread; `commit()` writes a whole
group (events of many devices, quarantine rows, outbox rows, publish marks, device updates) in
one transaction, so one fsync serves them all. The CLI opens its own short-lived connection:
WAL lets it read, queue commands and act on quarantines while the service runs.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sealink.commands import validate_command
from sealink.crypto.enrolment import Certificate
from sealink.crypto.keystore import LINK_KEY_LEN, LinkKeyStore
from sealink.crypto.sealkey import SEAL_KEY_LEN
from sealink.errors import DeviceError, KeyFileError, LedgerError
from sealink.ledger import approvals, backup, fleetapprovers, fleetreg, log, queue
from sealink.ledger import operator as ops
from sealink.ledger.db import LedgerMissing, describe, transaction
from sealink.ledger.keyhistory import KeyHistoryStore
from sealink.ledger.owner import match_owner, wal_files
from sealink.ledger.records import (
    Batch,
    Command,
    DeviceRecord,
    EventRow,
    Gap,
    OperatorAction,
    OutboxRow,
    Quarantine,
    QuarantineRow,
    Rejection,
    id_runs,
    now_ms,
)
from sealink.ledger.schema import (
    MigrationError,
    NotALedger,
    SchemaTooNew,
    create_or_migrate,
    prune_published,
    stored_version,
)

__all__ = ["Batch", "Command", "EventRow", "Ledger", "OutboxRow", "QuarantineRow", "now_ms"]


_logger = logging.getLogger("sealink.ledger")


def _enforce_private(path: Path) -> None:
    """The ledger and its WAL files are 0600 even when they exist already (copied, restored,
    made by another tool): SQLite gives the WAL files the database file's mode."""
    for file in (path, *wal_files(path)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(file, 0o600)
            _logger.warning(
                "ledger file was readable by others; now 0600",
                extra={"fields": {"file": str(file), "was": f"{mode:o}"}},
            )


def _enrolment_serial(db: sqlite3.Connection, device: str) -> int | None:
    """The serial of the certificate held for `device`; None: none. DeviceError if the
    seal is not registered."""
    row = db.execute("SELECT enrolment FROM devices WHERE id = ?", (device,)).fetchone()
    if row is None:
        raise DeviceError(f"device {device} is not registered")
    return None if row[0] is None else int(json.loads(row[0])["serial"])


def _keep_enrolment(db: sqlite3.Connection, device: str, certificate: str) -> None:
    # A change of the registration, so that the running service takes it up at its next poll.
    db.execute(
        "UPDATE devices SET enrolment = ?, registered_ms = ? WHERE id = ?",
        (certificate, now_ms(), device),
    )


class Ledger:
    """A connection to the ledger file. Not thread-safe: use it from one thread.

    `link_keys` is where `add_device` writes a seal's link key, and where migrating a file
    older than schema 5 moves the keys it holds (SPEC §15 T6)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        link_keys: LinkKeyStore | None = None,
        *,
        create: bool = False,
    ) -> None:
        """Open the ledger at `path`; LedgerError if there is none there, unless `create`
        (`sealink ledger init`, tests, benchmarks): a typo in a path must not start an empty
        ledger that a seal ahead of it is then quarantined against."""
        self.path = Path(path)
        self.link_keys = link_keys
        if not create and not self.path.exists():
            raise LedgerMissing(self.path)
        db: sqlite3.Connection | None = None
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Every record and operator action: never readable by others, not for a moment.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            if not create and stored_version(db) is None:
                raise NotALedger  # before anything below changes the file
            _enforce_private(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns; the device is acked right after.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            create_or_migrate(db, link_keys, create=create)
            match_owner(self.path, *wal_files(self.path))
        except MigrationError as exc:
            if db is not None:
                db.close()
            raise LedgerError(
                f"ledger {self.path}: cannot migrate to schema 5, left as it was: {exc}"
            ) from None
        except NotALedger:
            if db is not None:
                db.close()
            raise LedgerError(
                f"ledger {self.path}: not a sealink ledger (no schema in it): check [gateway] "
                "ledger, or create one with `sealink ledger init`"
            ) from None
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise LedgerError(
                f"ledger {self.path}: cannot open: {describe(exc, self.path)}"
            ) from None
        except (OSError, SchemaTooNew) as exc:
            if db is not None:
                db.close()
            raise LedgerError(f"ledger {self.path}: cannot open: {exc}") from None
        # The transparency log (SPEC §14), read on this connection.
        self.log = log.LogStore(self._db)
        self.key_history = KeyHistoryStore(self._db, self.path)  # SPEC §14.7

    def close(self) -> None:
        self._db.close()

    def backup(self, to: Path) -> str:
        """An online, checked, 0600 copy of this ledger at `to` (ledger/backup.py); its schema."""
        return backup.backup(self._db, self.path, to)

    def _write(self, what: str) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self.path, what)

    # devices ---------------------------------------------------------------------------------

    def add_device(
        self, device: str, key: bytes, seal_key: bytes | None, *, replace: bool = False
    ) -> None:
        """Register a seal: its link key, into the key store, and its chip's public key (None:
        its EVENTs are refused until it is registered with one, SPEC §4.1).

        The key store is written first, so a crash between the two leaves at worst a key no
        device uses, never a device without its key; the ledger's write lock is held over both,
        so of two registrations of one seal at once the second sees the first."""
        if len(key) != LINK_KEY_LEN:
            raise DeviceError(f"device {device}: key must be {LINK_KEY_LEN} bytes, got {len(key)}")
        if seal_key is not None and len(seal_key) != SEAL_KEY_LEN:
            raise DeviceError(f"device {device}: seal key must be {SEAL_KEY_LEN} bytes")
        if self.link_keys is None:
            raise DeviceError(f"device {device}: no key store to hold its link key")
        with self._write("register a device") as db:
            known = db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone()
            if known and not replace:
                raise DeviceError(f"device {device} is already registered")
            try:
                self.link_keys.put(device, key)
                store = self.link_keys.path
                match_owner(self.path, store, store.with_name(store.name + ".lock"))
            except KeyFileError as exc:
                raise DeviceError(f"device {device}: not registered: {exc}") from None
            # New keys for a known seal keep what the ledger knows of it (B, quarantine).
            db.execute(
                "INSERT INTO devices (id, seal_key, registered_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET "
                "seal_key = excluded.seal_key, registered_ms = excluded.registered_ms",
                (device, seal_key, now_ms()),
            )
            fleetreg.registered(db, device)

    def device_record(self, device: str) -> DeviceRecord | None:
        """Everything the host keeps per device (SPEC §5.1), read in one snapshot."""
        db = self._db
        db.execute("BEGIN")
        try:
            row = db.execute(
                "SELECT boot_id, quarantine_reason, quarantine_detail, quarantine_ms, "
                "ahead_acked, seal_key, enrolment FROM devices WHERE id = ?",
                (device,),
            ).fetchone()
            stored, stored_hash = ops.stored_head(db, device)
        finally:
            db.execute("COMMIT")
        if row is None:
            return None
        quarantine = None if row[1] is None else Quarantine(row[1], row[2] or "", row[3] or 0)
        seal_key = None if row[5] is None else bytes(row[5])
        return DeviceRecord(
            device, stored, stored_hash, int(row[0]), quarantine, row[4], seal_key, row[6]
        )

    def enrol(self, device: str, certificate: str, serial: int) -> None:
        """Keep the enrolment certificate (JSON) the gateway hands the seal (SPEC §5.11),
        replacing one of a lower serial. It counts as a change of the registration, so that
        the running service takes it up at its next poll."""
        with self._write("enrol a device") as db:
            held = _enrolment_serial(db, device)
            if held is not None and held > serial:
                raise DeviceError(
                    f"device {device}: holds a certificate of a later serial; not replacing it"
                )
            _keep_enrolment(db, device, certificate)

    def registrations(self) -> tuple[int, int]:
        """(devices registered, newest registration ms): changes with every `devices add`,
        cheap enough for the running service to ask every poll."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(MAX(registered_ms), 0) FROM devices"
        ).fetchone()
        return int(row[0]), int(row[1])

    def device_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM devices ORDER BY id")]

    def devices(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT d.id, d.registered_ms, d.boot_id, d.quarantine_reason, d.quarantine_detail, "
            "d.quarantine_ms, d.ahead_acked, "
            "(SELECT MAX(counter) FROM events e WHERE e.device = d.id), "
            "(SELECT MAX(last) FROM gaps g WHERE g.device = d.id), "
            "(SELECT COUNT(*) FROM quarantine q WHERE q.device = d.id), d.seal_key, "
            "d.enrolment FROM devices d ORDER BY d.id"
        ).fetchall()
        return [
            {
                "device": r[0],
                "registered_ms": r[1],
                "boot_id": r[2],
                "quarantined": r[3] is not None,
                "quarantine": None
                if r[3] is None
                else {"reason": r[3], "detail": r[4], "since_ms": r[5]},
                "ahead_acked": r[6],
                "last_counter": r[7] or 0,
                "stored": max(r[7] or 0, r[8] or 0),
                "quarantine_rows": r[9],
                "seal_key": None if r[10] is None else bytes(r[10]).hex(),
                "enrolment": None if r[11] is None else json.loads(r[11])["serial"],
            }
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

    def event_count(self, device: str | None = None, since: int = 0) -> int:
        """How many events `events(device, since)` yields."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM events WHERE (? IS NULL OR device = ?) AND counter >= ?",
            (device, device, since),
        ).fetchone()
        return int(row[0])

    def events_logged_from(
        self, index: int, device: str | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """(leaf index, event as `events` gives it) of the events whose transparency-log leaf
        is at `index` or above, in commit order: the events table has no order of arrival, the
        log does (`sealink events list --follow`)."""
        rows = self._db.execute(
            "SELECT l.idx, e.device, e.counter, e.event, e.hash, e.cose, e.received_ms "
            "FROM log_leaves l JOIN events e ON e.device = l.device AND e.counter = l.first "
            "WHERE l.idx >= ? AND l.kind = 'event' AND (? IS NULL OR l.device = ?) "
            "ORDER BY l.idx",
            (index, device, device),
        ).fetchall()
        return [
            (
                r[0],
                {
                    "device": r[1],
                    "counter": r[2],
                    "event": bytes(r[3]),
                    "hash": bytes(r[4]),
                    "cose": bytes(r[5]),
                    "received_ms": r[6],
                },
            )
            for r in rows
        ]

    def alarms(self, device: str | None = None, after_id: int = 0) -> list[OutboxRow]:
        """The alarms the gateway raised through the outbox (their only copy: SPEC §11.2,
        schema v9), oldest first, from outbox id `after_id` up; device None: every device's
        and the gateway's own."""
        rows = self._db.execute(
            "SELECT id, topic, payload, device, counter FROM outbox "
            "WHERE id > ? AND topic LIKE '%/alarms' AND payload IS NOT NULL "
            "AND (? IS NULL OR device = ?) ORDER BY id",
            (after_id, device, device),
        ).fetchall()
        return [OutboxRow(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def gaps(self, device: str | None = None) -> list[Gap]:
        """Adopted gaps, by device then first counter."""
        return ops.gaps(self._db, device)

    def quarantined(
        self, device: str | None = None, limit: int | None = None
    ) -> list[QuarantineRow]:
        """Quarantine rows, oldest first; with `limit`, only the newest `limit` of them."""
        sql = (
            "SELECT device, port, reason, detail, data, received_ms FROM quarantine "
            "WHERE (? IS NULL OR device = ?) ORDER BY id"
        )
        if limit is None:
            rows = self._db.execute(sql, (device, device)).fetchall()
        else:
            rows = self._db.execute(f"{sql} DESC LIMIT ?", (device, device, limit)).fetchall()
            rows.reverse()
        return [QuarantineRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def rejections(self, device: str | None = None) -> list[Rejection]:
        """Rejected-input counts (device None: inputs no authenticated device is blamed for)."""
        rows = self._db.execute(
            "SELECT port, device, reason, count, first_ms, last_ms FROM rejections "
            "WHERE (? IS NULL OR device = ?) ORDER BY device, port, reason",
            (device, device),
        ).fetchall()
        return [Rejection(r[0], r[1] or None, r[2], r[3], r[4], r[5]) for r in rows]

    # the group commit ------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Write the whole batch in one transaction, or nothing (LedgerError)."""
        with self._write("commit") as db:
            if batch.events:
                db.executemany(
                    "INSERT INTO events (device, counter, event, hash, cose, received_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (e.device, e.counter, e.event, e.hash, e.cose, e.received_ms)
                        for e in batch.events
                    ],
                )
                # In the same transaction: a record is in the log exactly when it is stored.
                log.append_events(db, batch.events)
            if batch.quarantine:
                db.executemany(
                    "INSERT INTO quarantine (device, port, reason, detail, data, received_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (q.device, q.port, q.reason, q.detail, q.data, q.received_ms)
                        for q in batch.quarantine
                    ],
                )
            ms = now_ms()
            if batch.outbox:
                db.executemany(
                    "INSERT INTO outbox (topic, payload, device, counter, created_ms) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(t, p, d, c, ms) for t, p, d, c in batch.outbox],
                )
            if batch.published:
                # PUBACKs come back in id order: one statement per run, not per row
                runs = id_runs(batch.published)
                db.executemany(
                    "UPDATE outbox SET published_ms = ? WHERE id BETWEEN ? AND ?",
                    [(ms, first, last) for first, last in runs],
                )
                # The broker has them: keep each record once, in events or gaps (schema v9).
                for first, last in runs:
                    prune_published(db, first, last)
            if batch.command_states:
                db.executemany(
                    "UPDATE commands SET state = ?, result = ?, updated_ms = ? WHERE id = ?",
                    [(s, r, ms, i) for i, s, r in batch.command_states],
                )
            for update in batch.devices:
                ops.apply_device_update(db, update, ms)
            if batch.rejections:
                db.executemany(
                    "INSERT INTO rejections (port, device, reason, count, first_ms, last_ms) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (port, device, reason) DO UPDATE "
                    "SET count = count + excluded.count, last_ms = excluded.last_ms",
                    [(p, d or "", r, n, ms, ms) for p, d, r, n in batch.rejections],
                )

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
        """Queue a command after checking its fields (CommandError names the bad one); a permit
        id must be above every permit id queued for the device before (SPEC §5.7)."""
        validate_command(kind, body)
        with self._write("queue a command") as db:
            return queue.queue_command(db, device, kind, body)

    def next_permit_id(self, device: str) -> int:
        """One above the highest permit id queued for the device; CommandError when the wire
        has no larger id."""
        return queue.next_permit_id(self._db, device)

    def pending_commands(self, device: str) -> list[Command]:
        return self._commands("WHERE device = ? AND state = 'pending' ORDER BY id", (device,))

    def commands(self, device: str | None = None) -> list[Command]:
        return self._commands("WHERE (? IS NULL OR device = ?) ORDER BY id", (device, device))

    def _commands(self, where: str, args: Sequence[Any]) -> list[Command]:
        rows = self._db.execute(
            f"SELECT id, device, kind, body, state, result FROM commands {where}", args
        ).fetchall()
        return [Command(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    # operator actions (ledger/operator.py) ---------------------------------------------------

    def quarantine_device(self, device: str, operator: str, note: str) -> None:
        with self._write("quarantine") as db:
            ops.quarantine_device(db, device, operator, note)

    def release(self, device: str, operator: str, note: str) -> Quarantine:
        with self._write("release") as db:
            return ops.release(db, device, operator, note)

    def adopt(
        self,
        device: str,
        operator: str,
        note: str,
        sign: Callable[[bytes], bytes],
        topic: str,
    ) -> tuple[int, int]:
        with self._write("adopt") as db:
            return ops.adopt(db, device, operator, note, sign, topic)

    def operator_actions(self, after_id: int = 0) -> list[OperatorAction]:
        return ops.operator_actions(self._db, after_id)

    def max_operator_action_id(self) -> int:
        row = self._db.execute("SELECT MAX(id) FROM operator_actions").fetchone()
        return int(row[0] or 0)

    # approvers and their requests (ledger/approvals.py, SPEC §11.5) --------------------------

    def add_approver(self, name: str, public_key: bytes, actions: tuple[str, ...]) -> None:
        with self._write("add an approver") as db:
            approvals.add_approver(db, name, public_key, actions)

    def revoke_approver(self, name: str) -> None:
        with self._write("revoke an approver") as db:
            approvals.revoke_approver(db, name)

    def fleet_floor(self, device: str) -> tuple[int, bytes] | None:
        """(seq, payload) of the fleet registry's last message applied for `device`."""
        return fleetreg.floor(self._db, device)

    def apply_fleet_state(
        self,
        device: str,
        seq: int,
        state: str,
        reason: str,
        payload: bytes,
        placed: tuple[fleetreg.Standing, str, Callable[[bytes], bytes], str] | None = None,
        enrolment: Certificate | None = None,
    ) -> tuple[str, str]:
        """Take a verified registry message (SPEC §11.6) in one transaction: its placement
        first, `placed` = (standing, this gateway's id, the gap's signer, the gaps topic), with
        its `enrolment` for this gateway kept unless a certificate of this serial or a later
        one is (`sealink devices enrol` may have given one), then its state, so that a seal
        both moved here and revoked ends revoked. Returns what each did (`fleetreg.place`,
        `fleetreg.apply_state`; "unchanged" without a placement)."""
        with self._write("apply the fleet registry") as db:
            moved = "unchanged" if placed is None else fleetreg.place(db, device, *placed)
            if enrolment is not None and moved != "unregistered":
                held = _enrolment_serial(db, device)
                if held is None or held < enrolment.serial:
                    _keep_enrolment(db, device, enrolment.to_json())
            return moved, fleetreg.apply_state(db, device, seq, state, reason, payload)

    def fleet_approver_floor(self, name: str) -> tuple[int, bytes] | None:
        """(seq, payload) of the last fleet approver message applied for `name` (§11.7)."""
        return fleetapprovers.floor(self._db, name)

    def apply_fleet_approver(self, update: fleetapprovers.FleetApproverUpdate) -> str:
        """Take a verified fleet approver message in one transaction (`fleetapprovers.apply`);
        FleetApproverRefused: nothing written."""
        with self._write("apply a fleet approver") as db:
            return fleetapprovers.apply(db, update)

    def approvers(self, name: str | None = None) -> list[approvals.Approver]:
        return approvals.approvers(self._db, name)

    def record_request(self, entry: approvals.ApprovalEntry) -> approvals.ApprovalRow:
        """Decide and record one approval request in one transaction (its command too)."""
        with self._write("record an approval request") as db:
            return approvals.record_request(db, entry)

    def record_suppressed_refusals(
        self, summary: dict[str, Any], alarm_topic: str
    ) -> approvals.ApprovalRow:
        """One summary of refusals not recorded one by one (`approvals.record_suppressed`)."""
        with self._write("record a summary of approval refusals") as db:
            return approvals.record_suppressed(db, summary, alarm_topic)

    def approval_request(self, row_id: int) -> approvals.ApprovalRow:
        return approvals.request_row(self._db, row_id)

    def approval_requests(
        self, where: str = "", args: tuple[Any, ...] = ()
    ) -> list[approvals.ApprovalRow]:
        return approvals.requests(self._db, where, args)

    def approval_result(
        self,
        row_id: int | None,
        state: str | None,
        body: dict[str, Any],
        topic: str,
        correlation: bytes | None,
        payload: bytes,
    ) -> int:
        """Keep a signed result until the broker acknowledges it; with `state`, the row's
        state and latest body too, in the same transaction."""
        with self._write("store an approval result") as db:
            if row_id is not None and state is not None:
                approvals.set_state(db, row_id, state, body)
            return approvals.add_result(db, topic, correlation, payload)

    def pending_approval_results(self) -> list[approvals.PendingResult]:
        return approvals.pending_results(self._db)

    def approval_result_published(self, result_id: int) -> None:
        with self._write("mark an approval result sent") as db:
            db.execute(
                "UPDATE approval_results SET published_ms = ? WHERE id = ?", (now_ms(), result_id)
            )

    def approval_used(self, row_id: int, device: str, permit: int) -> int:
        with self._write("count a permit's impressions") as db:
            return approvals.used(db, row_id, device, permit)
