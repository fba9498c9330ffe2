"""The ledger's tables, and the in-place migration of an older file (meta 'schema').

v1: meta, devices, events, quarantine, commands, outbox.
v2: devices gains boot_id (B, SPEC §5.1), the sticky quarantine (reason, detail, since) and
    ahead_acked; new tables rejections (a count per port, device and reason, so every rejected
    input is counted even when its quarantine row was rate-limited away), operator_actions (the
    audit trail, polled by the running service) and gaps (counters an operator declared lost,
    countersigned).
v3: the transparency log (SPEC §14): log_leaves (one row per stored event or adopted gap, in
    commit order), log_nodes (the hash of every perfect subtree, leaves included, so appends
    read only the frontier and proofs are look-ups) and checkpoints (the signed notes). A v2
    file's events and gaps enter the log at migration, in the order they were received.
v4: devices gains seal_key, the seal chip's P-256 public key (SPEC §4.1); a device of an older
    file has none until it is registered again, and its EVENTs are refused meanwhile.
v5: devices loses key: the link keys live in the key store (crypto/keystore.py), since the
    ledger's copies travel. Migrating writes every device's key to the key store first (no
    key store, or one that cannot be written: the file stays as it was), then drops the column
    with secure_delete on and VACUUMs, so no old key bytes stay in free pages or the WAL.
v6: devices gains enrolment, the enrolment certificate (JSON, crypto/enrolment.py) this
    gateway hands the seal (SPEC §5.11); none for a device of an older file until `sealink
    devices enrol`.
v7: cosignatures, the witnesses' cosignatures of the gateway's checkpoints (SPEC §14.6), one
    per checkpoint size and witness; an older file has none.
v8: key_transitions, the gateway's key history (SPEC §14.7): one signed transition per key
    rotation; an older file has none (its one key is the key file's).
v9: outbox.payload may be NULL: once the broker acknowledged an event's or a gap's publication,
    its payload is dropped, since the events or gaps table holds the same bytes (the record's
    countersignature, from which the publication is rebuilt). Alarms keep theirs: the outbox is
    their only copy. Migrating rebuilds the table and drops the payloads already published.
    A record's JSON companion (SPEC §11.2, no schema change) is dropped the same way: it is
    rebuilt from the record's events row.
v10: approvers, approval_requests and approval_results (SPEC §11.5, ledger/approvals.py): the
    approval system's registered keys, every request it sent with its outcome, and the signed
    results not yet acknowledged by the broker; an older file has none.
v11: fleet_registry (SPEC §11.6, ledger/fleetreg.py): each seal's state as the fleet last
    signed it, with its seq (the floor below which a registry message is a rollback); an older
    file has none.
v12: gaps.head (SPEC §11.6): the record hash a gap the fleet placed ends on (a seal moved
    here), which the seal's next event must chain to; NULL for an operator's gap and in an
    older file.
v13: fleet_approvers and approver_actions (SPEC §11.7, ledger/fleetapprovers.py): each approver
    name's last fleet message applied, with its seq (the floor below which one is a rollback),
    and the audit trail of what the fleet did to the approvers; an older file has none.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3

from sealink.crypto.keystore import LinkKeyStore
from sealink.errors import KeyFileError
from sealink.ledger import log

__all__ = [
    "SCHEMA_VERSION",
    "MigrationError",
    "NotALedger",
    "SchemaTooNew",
    "create_or_migrate",
    "prune_published",
    "stored_version",
]

SCHEMA_VERSION = 13

_logger = logging.getLogger("sealink.ledger")

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY,
        registered_ms INTEGER NOT NULL,
        boot_id INTEGER NOT NULL DEFAULT 0,
        quarantine_reason TEXT,
        quarantine_detail TEXT,
        quarantine_ms INTEGER,
        ahead_acked INTEGER,
        seal_key BLOB,
        enrolment TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        device TEXT NOT NULL,
        counter INTEGER NOT NULL,
        event BLOB NOT NULL,
        hash BLOB NOT NULL,
        cose BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (device, counter)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY,
        device TEXT,
        port TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        data BLOB,
        received_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS commands (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        result INTEGER,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS commands_pending ON commands (device, id) WHERE state = 'pending'",
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BLOB,
        device TEXT,
        counter INTEGER,
        created_ms INTEGER NOT NULL,
        published_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_ms IS NULL",
)

# New in v2. The tables' own CREATEs are idempotent; the devices columns are added by
# _V2_COLUMNS when a v1 file is opened.
_TABLES_V2 = (
    """CREATE TABLE IF NOT EXISTS rejections (
        port TEXT NOT NULL,
        device TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        PRIMARY KEY (port, device, reason)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS operator_actions (
        id INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        action TEXT NOT NULL,
        operator TEXT NOT NULL,
        note TEXT NOT NULL,
        ms INTEGER NOT NULL,
        detail TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS gaps (
        device TEXT NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL,
        adopted_ms INTEGER NOT NULL,
        operator TEXT NOT NULL,
        note TEXT NOT NULL,
        cose BLOB NOT NULL,
        -- a gap the fleet placed (a seal moved here, SPEC §11.6): the hash of record `last`,
        -- which the next event must chain to; NULL for an operator's gap
        head BLOB,
        PRIMARY KEY (device, first)
    ) WITHOUT ROWID""",
    # `devices quarantine DEVICE` shows a device's newest rows: without this, a scan of every
    # row ever rejected.
    "CREATE INDEX IF NOT EXISTS quarantine_device ON quarantine (device, id)",
)

_V2_COLUMNS = (
    "ALTER TABLE devices ADD COLUMN boot_id INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE devices ADD COLUMN quarantine_reason TEXT",
    "ALTER TABLE devices ADD COLUMN quarantine_detail TEXT",
    "ALTER TABLE devices ADD COLUMN quarantine_ms INTEGER",
    "ALTER TABLE devices ADD COLUMN ahead_acked INTEGER",
)


# New in v3: the transparency log. `first`/`last` are the counters a leaf covers (an event:
# first = last = its counter).
_TABLES_V3 = (
    """CREATE TABLE IF NOT EXISTS log_leaves (
        idx INTEGER PRIMARY KEY,
        device TEXT NOT NULL,
        kind TEXT NOT NULL,
        first INTEGER NOT NULL,
        last INTEGER NOT NULL
    )""",
    # `evidence prove DEVICE COUNTER`, and each device's head at a tree size (a device's leaves
    # rise in counter and index together, so one index serves both)
    "CREATE INDEX IF NOT EXISTS log_leaves_device ON log_leaves (device, first)",
    """CREATE TABLE IF NOT EXISTS log_nodes (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        size INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        heads_hash BLOB NOT NULL,
        time_ms INTEGER NOT NULL,
        note TEXT NOT NULL
    )""",
)

# New in v7: a witness's signature line of the checkpoint of `size`, verified on arrival.
_TABLES_V7 = (
    """CREATE TABLE IF NOT EXISTS cosignatures (
        size INTEGER NOT NULL,
        witness TEXT NOT NULL,
        time_s INTEGER NOT NULL,
        line TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        PRIMARY KEY (size, witness)
    ) WITHOUT ROWID""",
)

# New in v8: each rotation of the countersigning key, its statement signed by both keys.
_TABLES_V8 = (
    """CREATE TABLE IF NOT EXISTS key_transitions (
        seq INTEGER PRIMARY KEY,
        old_key BLOB NOT NULL,
        new_key BLOB NOT NULL,
        size INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        note TEXT NOT NULL
    )""",
)

# New in v10: approvers and their requests (SPEC §11.5). A request id is accepted once per
# approver; a duplicate or refused row repeats it freely.
_TABLES_V10 = (
    """CREATE TABLE IF NOT EXISTS approvers (
        name TEXT PRIMARY KEY,
        public_key BLOB NOT NULL,
        actions TEXT NOT NULL,
        added_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        highest_seq INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS approval_requests (
        id INTEGER PRIMARY KEY,
        approver TEXT,
        request TEXT,
        action TEXT,
        device TEXT,
        requested_by TEXT,
        seq INTEGER,
        received_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        state TEXT,
        command INTEGER,
        permit INTEGER,
        body TEXT,
        last TEXT,
        response_topic TEXT NOT NULL,
        correlation BLOB,
        reason TEXT,
        detail TEXT,
        field TEXT,
        first INTEGER,
        used INTEGER NOT NULL DEFAULT 0,
        scanned INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS approval_requests_once ON approval_requests "
    "(approver, request) WHERE outcome = 'accepted'",
    "CREATE INDEX IF NOT EXISTS approval_requests_command ON approval_requests (command) "
    "WHERE command IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS approval_results (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        correlation BLOB,
        payload BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        published_ms INTEGER
    )""",
    "CREATE INDEX IF NOT EXISTS approval_results_pending ON approval_results (id) "
    "WHERE published_ms IS NULL",
)

# New in v11: the fleet registry's last applied message per seal (SPEC §11.6).
_TABLES_V11 = (
    """CREATE TABLE IF NOT EXISTS fleet_registry (
        device TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
)

# New in v13: fleet approver keys (SPEC §11.7), the floor per approver name and the audit.
_TABLES_V13 = (
    """CREATE TABLE IF NOT EXISTS fleet_approvers (
        name TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS approver_actions (
        id INTEGER PRIMARY KEY,
        approver TEXT NOT NULL,
        action TEXT NOT NULL,
        operator TEXT NOT NULL,
        note TEXT NOT NULL,
        ms INTEGER NOT NULL,
        detail TEXT
    )""",
)

_V4_COLUMNS = ("ALTER TABLE devices ADD COLUMN seal_key BLOB",)
_V6_COLUMNS = ("ALTER TABLE devices ADD COLUMN enrolment TEXT",)
_V12_COLUMNS = ("ALTER TABLE gaps ADD COLUMN head BLOB",)

# Every version before 5 keeps the link keys in devices.key.
_WITH_LINK_KEYS = ("1", "2", "3", "4")
_BEFORE_V9 = (*_WITH_LINK_KEYS, "5", "6", "7", "8")
_BEFORE_V12 = (*_BEFORE_V9, "9", "10", "11")
_KNOWN = (*_BEFORE_V12, "12", str(SCHEMA_VERSION))

# The published rows whose payload another table holds byte for byte: an event's
# countersignature (events.cose) or an adopted gap's (gaps.cose); and a record's JSON
# companion (SPEC §11.2), a pure function of its events row (sealink.gateway.companion).
_REBUILDABLE = (
    "published_ms IS NOT NULL AND payload IS NOT NULL AND ("
    "EXISTS (SELECT 1 FROM events e WHERE e.device = outbox.device "
    "AND e.counter = outbox.counter AND e.cose = outbox.payload) OR "
    "(outbox.counter IS NULL AND EXISTS (SELECT 1 FROM gaps g WHERE g.device = outbox.device "
    "AND g.cose = outbox.payload)) OR "
    "(substr(outbox.topic, -12) = '/events/json' AND EXISTS (SELECT 1 FROM events e "
    "WHERE e.device = outbox.device AND e.counter = outbox.counter)))"
)

# v9: the outbox's payload becomes nullable. SQLite cannot drop a NOT NULL: copy the table.
_V9_OUTBOX = (
    """CREATE TABLE outbox_v9 (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        payload BLOB,
        device TEXT,
        counter INTEGER,
        created_ms INTEGER NOT NULL,
        published_ms INTEGER
    )""",
    "INSERT INTO outbox_v9 SELECT id, topic, payload, device, counter, created_ms, "
    "published_ms FROM outbox",
    "DROP TABLE outbox",
    "ALTER TABLE outbox_v9 RENAME TO outbox",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_ms IS NULL",
)


class SchemaTooNew(Exception):
    def __init__(self, version: str) -> None:
        super().__init__(
            f"schema {version} was written by a newer sealink (this one knows {SCHEMA_VERSION})"
        )


class MigrationError(Exception):
    """An older file cannot be brought up to date; it is left as it was."""


class NotALedger(Exception):
    """The file has no schema and was not to be created."""


def create_or_migrate(
    db: sqlite3.Connection, link_keys: LinkKeyStore | None = None, *, create: bool = False
) -> None:
    """Create a new ledger (only with `create`), or bring an older one to SCHEMA_VERSION, in
    one transaction (a crash midway leaves the file as it was). SchemaTooNew: refuse what a
    newer sealink wrote. MigrationError: an older file's link keys could not be moved to
    `link_keys`. NotALedger: no schema in the file and not `create`."""
    found = stored_version(db)
    if found == str(SCHEMA_VERSION):
        return  # the common case: no write, so opening never waits for the service's lock
    if found is None and not create:
        raise NotALedger
    # Zeroes what the migration frees (the key column's bytes) in the pages it writes; many
    # builds have it on already, the connection keeps what it had.
    scrub = found in _WITH_LINK_KEYS
    secure_delete = db.execute("PRAGMA secure_delete").fetchone()[0]
    if scrub:
        db.execute("PRAGMA secure_delete=ON")
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_TABLES[0])
        version = stored_version(db)
        if version is not None and version not in _KNOWN:
            raise SchemaTooNew(version)
        for statement in _TABLES[1:]:
            db.execute(statement)
        if version == "1":
            for statement in _V2_COLUMNS:
                db.execute(statement)
        if version in ("1", "2", "3"):
            for statement in _V4_COLUMNS:
                db.execute(statement)
        if version in _WITH_LINK_KEYS:
            _move_link_keys(db, version, link_keys)
        if version in (*_WITH_LINK_KEYS, "5"):
            for statement in _V6_COLUMNS:
                db.execute(statement)
        for statement in _TABLES_V2:
            db.execute(statement)
        # Every version before 12 made gaps without head (v1 files may have had none: made above).
        if version in _BEFORE_V12 and "head" not in _columns(db, "gaps"):
            for statement in _V12_COLUMNS:
                db.execute(statement)
        for statement in (*_TABLES_V3, *_TABLES_V7, *_TABLES_V8, *_TABLES_V10, *_TABLES_V11,
                          *_TABLES_V13):  # fmt: skip
            db.execute(statement)
        if version in ("1", "2"):
            log.backfill(db)
        if version in _BEFORE_V9:
            for statement in _V9_OUTBOX:
                db.execute(statement)
            prune_published(db)
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a full disk may have rolled it back already
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    finally:
        db.execute(f"PRAGMA secure_delete={int(secure_delete)}")
    if scrub:
        _scrub(db)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def prune_published(db: sqlite3.Connection, first: int = 0, last: int | None = None) -> None:
    """Drop the payloads of published rows (ids first..last) that the ledger can rebuild."""
    db.execute(
        f"UPDATE outbox SET payload = NULL WHERE id BETWEEN ? AND ? AND {_REBUILDABLE}",
        (first, last if last is not None else 2**63 - 1),
    )


def _move_link_keys(db: sqlite3.Connection, version: str, link_keys: LinkKeyStore | None) -> None:
    """Key store first, then the column goes: a failure between leaves the keys in both."""
    rows = db.execute("SELECT id, key FROM devices ORDER BY id").fetchall()
    if rows:
        if link_keys is None:
            raise MigrationError(
                f"schema {version} holds {len(rows)} link keys and no key store was given to "
                "move them to (gateway.link_keys)"
            )
        try:
            link_keys.update({device: bytes(key) for device, key in rows})
        except KeyFileError as exc:
            raise MigrationError(f"its {len(rows)} link keys cannot be moved: {exc}") from None
    db.execute("ALTER TABLE devices DROP COLUMN key")


def _scrub(db: sqlite3.Connection) -> None:
    """Rewrite the file without free pages, then empty the WAL, so bytes an older schema
    freed (link keys, replaced ones too) are in neither."""
    db.execute("VACUUM")
    busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        # Another connection reads the file: its WAL is emptied at a later checkpoint.
        _logger.warning("ledger migrated; its WAL is truncated only at the next checkpoint")


def stored_version(db: sqlite3.Connection) -> str | None:
    """The file's schema version; None: no sealink schema in it (a new or foreign file)."""
    tables = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'")
    if tables.fetchone() is None:  # a new file; not "cannot read it" (a full disk, say)
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return str(row[0]) if row else None
