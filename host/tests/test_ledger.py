"""Ledger details that the end-to-end tests do not pin down on their own: schema v2 and its
migration, the sticky quarantine, operator actions, adopted gaps, the command queue's rules."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import random
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from cwt import COSE, COSEKey
from hypothesis import given
from hypothesis import strategies as st
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey
from sealink.errors import CommandError, DeviceError, LedgerError
from sealink.ledger import (
    AHEAD_OF_LEDGER,
    GENESIS,
    Batch,
    DeviceUpdate,
    EventRow,
    Ledger,
    QuarantineRow,
)
from sealink.ledger.records import id_runs
from sealink.ledger.schema import SCHEMA_VERSION
from sealink_sim.simdevice import SimChip

DEVICE = "seal-1"
KEY = bytes(range(32))


def stored_seal_key(db: sqlite3.Connection) -> bytes | None:
    return db.execute("SELECT seal_key FROM devices WHERE id = ?", (DEVICE,)).fetchone()[0]


# The v1 DDL exactly as the v1 gateway created it (host/sealink/_ledger.py before schema 2).
V1_DDL = """
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
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '1');
"""


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.sqlite", LinkKeyStore(tmp_path / "link-keys"), create=True)
    led.add_device(DEVICE, KEY, SimChip.of(KEY).public)
    yield led
    led.close()


def _event(counter: int, data: bytes | None = None) -> EventRow:
    data = data or f"event-{counter}".encode()
    return EventRow(DEVICE, counter, data, hashlib.sha256(data).digest(), b"cose", 1000 + counter)


def _ahead(ledger: Ledger, acked: int) -> None:
    """What the gateway commits when a seal's STATUS claims acks beyond the ledger."""
    update = DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, f"acked {acked}"), ahead_acked=acked)
    ledger.commit(Batch(devices=[update]))


@given(st.lists(st.integers(1, 200), max_size=60))
def test_id_runs_cover_exactly_the_ids(ids: list[int]) -> None:
    runs = id_runs(ids)
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(set(ids))
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))


def test_marking_published_touches_only_the_marked_rows(tmp_path: Path, seed: int) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    try:
        ledger.commit(Batch(outbox=[("t", bytes([i]), "d", i) for i in range(1, 101)]))
        rng = random.Random(seed)
        marked = rng.sample(range(1, 101), 57)  # unordered, with gaps: several runs
        ledger.commit(Batch(published=marked))
        pending = [row.id for row in ledger.pending_outbox(0, 1000)]
        assert pending == sorted(set(range(1, 101)) - set(marked))
    finally:
        ledger.close()


# schema ----------------------------------------------------------------------------------------


def test_a_v1_ledger_migrates_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_DDL)
    db.execute("INSERT INTO devices VALUES (?, ?, ?)", (DEVICE, KEY, 5))
    data = b"first event"
    db.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
        (DEVICE, 1, data, hashlib.sha256(data).digest(), b"c", 7),
    )
    db.execute(
        "INSERT INTO commands (device, kind, body, created_ms, updated_ms) VALUES (?, ?, ?, 1, 1)",
        (DEVICE, "permit", json.dumps({"permit": 7})),
    )
    db.commit()
    db.close()

    link_keys = LinkKeyStore(tmp_path / "link-keys")
    ledger = Ledger(path, link_keys)
    record = ledger.device_record(DEVICE)
    assert record is not None
    assert (record.stored, record.boot_id) == (1, 0)
    assert link_keys.get(DEVICE) == KEY
    assert record.stored_hash == hashlib.sha256(data).digest()
    assert record.quarantine is None and record.ahead_acked is None
    assert ledger.next_permit_id(DEVICE) == 8
    ledger.commit(
        Batch(devices=[DeviceUpdate(DEVICE, boot_id=3)], rejections=[("p", None, "x", 1)])
    )
    ledger.close()

    db = sqlite3.connect(path)
    schema = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    assert schema == (str(SCHEMA_VERSION),)
    columns = {row[1] for row in db.execute("PRAGMA table_info(devices)")}
    assert {"boot_id", "quarantine_reason", "quarantine_detail", "quarantine_ms"} <= columns
    assert {"ahead_acked", "seal_key"} <= columns
    assert "key" not in columns
    # a seal registered before seal signatures has no chip key: its EVENTs are refused until
    # it is registered again with one (SPEC §4.1)
    assert stored_seal_key(db) is None
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"rejections", "operator_actions", "gaps"} <= tables
    db.close()
    again = Ledger(path)  # opening a v2 file again changes nothing
    record = again.device_record(DEVICE)
    assert record is not None and record.boot_id == 3
    again.close()


def test_a_ledger_from_a_newer_sealink_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    Ledger(path, create=True).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="newer sealink"):
        Ledger(path)


# device state ----------------------------------------------------------------------------------


def test_device_record_of_an_empty_device_anchors_at_genesis(ledger: Ledger) -> None:
    record = ledger.device_record(DEVICE)
    assert record is not None
    assert (record.stored, record.stored_hash, record.boot_id) == (0, GENESIS, 0)
    assert ledger.device_record("nobody") is None


def test_boot_id_only_rises(ledger: Ledger) -> None:
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, boot_id=9)]))
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, boot_id=4)]))
    record = ledger.device_record(DEVICE)
    assert record is not None and record.boot_id == 9


def test_quarantine_is_sticky_keeps_its_first_cause_and_survives_reopen(
    ledger: Ledger, tmp_path: Path
) -> None:
    batch = Batch(
        events=[_event(1)],
        devices=[DeviceUpdate(DEVICE, quarantine=("chain_break", "prev does not chain"))],
    )
    assert len(batch) == 2
    ledger.commit(batch)
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, quarantine=("bad_mac", "later"))]))
    ledger.close()
    link_keys = LinkKeyStore(tmp_path / "link-keys")
    reopened = Ledger(tmp_path / "ledger.sqlite", link_keys)
    record = reopened.device_record(DEVICE)
    assert record is not None and record.quarantine is not None
    assert (record.quarantine.reason, record.quarantine.detail) == (
        "chain_break",
        "prev does not chain",
    )
    # One gateway action for the cause that took effect, none for the one that did not.
    actions = reopened.operator_actions(0)
    assert [(a.action, a.operator) for a in actions] == [("quarantine", "gateway")]
    assert actions[0].detail == {"reason": "chain_break", "detail": "prev does not chain"}
    listed = reopened.devices()[0]
    assert listed["quarantined"] is True and listed["quarantine"]["reason"] == "chain_break"
    # Re-registering the seal (a new key) does not clear what the ledger knows about it.
    reopened.add_device(DEVICE, bytes(32), None, replace=True)
    record = reopened.device_record(DEVICE)
    assert record is not None and record.quarantine is not None
    assert link_keys.get(DEVICE) == bytes(32)
    reopened.close()


def test_release_writes_the_audit_trail_and_the_service_can_poll_it(ledger: Ledger) -> None:
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, quarantine=("bad_mac", "EVENT #3"))]))
    seen = ledger.max_operator_action_id()
    with pytest.raises(DeviceError, match="note"):
        ledger.release(DEVICE, "alice", "  ")
    was = ledger.release(DEVICE, "alice", "key re-provisioned")
    assert was.reason == "bad_mac"
    record = ledger.device_record(DEVICE)
    assert record is not None and record.quarantine is None
    [action] = ledger.operator_actions(seen)
    assert (action.device, action.action, action.operator, action.note) == (
        DEVICE,
        "release",
        "alice",
        "key re-provisioned",
    )
    assert action.detail is not None and action.detail["reason"] == "bad_mac"
    assert ledger.max_operator_action_id() == action.id
    with pytest.raises(DeviceError, match="not quarantined"):
        ledger.release(DEVICE, "alice", "again")


def test_operator_hold_then_release(ledger: Ledger) -> None:
    ledger.quarantine_device(DEVICE, "bob", "seal sent for inspection")
    record = ledger.device_record(DEVICE)
    assert record is not None and record.quarantine is not None
    assert (record.quarantine.reason, record.quarantine.detail) == (
        "operator",
        "seal sent for inspection",
    )
    with pytest.raises(DeviceError, match="already quarantined"):
        ledger.quarantine_device(DEVICE, "bob", "twice")
    # The gateway's later cause does not replace the operator's hold.
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, quarantine=("bad_mac", "x"))]))
    ledger.release(DEVICE, "bob", "back")
    assert [a.action for a in ledger.operator_actions(0)] == ["quarantine", "release"]
    with pytest.raises(DeviceError, match="not registered"):
        ledger.quarantine_device("nobody", "bob", "x")


def test_rejections_are_counted_per_port_device_and_reason(ledger: Ledger) -> None:
    ledger.commit(Batch(rejections=[("pty1", None, "malformed_frame", 500)]))
    ledger.commit(
        Batch(
            rejections=[("pty1", None, "malformed_frame", 20), ("pty1", DEVICE, "bad_mac", 1)],
            quarantine=[QuarantineRow(DEVICE, "pty1", "bad_mac", "EVENT", b"\x01\x02", 5)],
        )
    )
    counts = {(r.port, r.device, r.reason): r.count for r in ledger.rejections()}
    assert counts == {("pty1", None, "malformed_frame"): 520, ("pty1", DEVICE, "bad_mac"): 1}
    assert [r.reason for r in ledger.rejections(DEVICE)] == ["bad_mac"]
    [unattributed] = [r for r in ledger.rejections() if r.device is None]
    assert unattributed.first_ms <= unattributed.last_ms


def test_quarantined_with_a_limit_returns_the_newest_rows_oldest_first(ledger: Ledger) -> None:
    rows = [QuarantineRow(DEVICE, "p", "r", str(i), bytes([i]), i) for i in range(10)]
    ledger.commit(Batch(quarantine=rows))
    assert [q.detail for q in ledger.quarantined(DEVICE, limit=3)] == ["7", "8", "9"]
    assert len(ledger.quarantined(DEVICE)) == 10


# adopting a gap ----------------------------------------------------------------------------------


def test_release_refuses_a_seal_ahead_of_the_ledger(ledger: Ledger) -> None:
    ledger.commit(Batch(events=[_event(1), _event(2)]))
    _ahead(ledger, 6)
    with pytest.raises(DeviceError, match="adopt"):
        ledger.release(DEVICE, "alice", "let it through")
    record = ledger.device_record(DEVICE)
    assert record is not None and record.quarantine is not None  # still held
    assert record.ahead_acked == 6


def test_adopt_records_a_signed_gap_that_cwt_verifies(ledger: Ledger) -> None:
    key = GatewayKey.generate()
    ledger.commit(Batch(events=[_event(1), _event(2)]))
    _ahead(ledger, 6)
    before = ledger.max_outbox_id()
    assert ledger.adopt(DEVICE, "alice", "ledger restored from backup", key.sign1, "t/gaps") == (
        3,
        6,
    )
    record = ledger.device_record(DEVICE)
    assert record is not None
    assert (record.stored, record.stored_hash, record.quarantine, record.ahead_acked) == (
        6,
        None,  # the next event anchors the chain: nothing to check its prev against
        None,
        None,
    )
    [gap] = ledger.gaps(DEVICE)
    assert (gap.first, gap.last, gap.operator, gap.note) == (
        3,
        6,
        "alice",
        "ledger restored from backup",
    )
    cose_key = COSEKey.from_pem(key.public_pem(), kid=key.kid)
    statement = cbor2.loads(COSE.new().decode(gap.cose, cose_key))
    assert statement == {
        "kind": "gap",
        "device": DEVICE,
        "first": 3,
        "last": 6,
        "adopted_ms": gap.adopted_ms,
        "operator": "alice",
        "note": "ledger restored from backup",
    }
    # deterministic CBOR, text keys: what cbor2 canonical gives
    assert COSE.new().decode(gap.cose, cose_key) == cbor2.dumps(statement, canonical=True)
    [row] = ledger.pending_outbox(before, 10)
    assert (row.topic, row.payload, row.device, row.counter) == ("t/gaps", gap.cose, DEVICE, None)
    adopt = ledger.operator_actions(0)[-1]
    assert (adopt.action, adopt.operator) == ("adopt", "alice")
    assert adopt.detail is not None and (adopt.detail["first"], adopt.detail["last"]) == (3, 6)
    # The next event (7) follows the gap: the ledger's head is then an event again.
    ledger.commit(Batch(events=[_event(7)]))
    record = ledger.device_record(DEVICE)
    assert record is not None and record.stored == 7 and record.stored_hash == _event(7).hash
    assert base64.b64encode(gap.cose)  # bytes, exportable


def test_adopt_only_for_a_seal_ahead_of_the_ledger(ledger: Ledger) -> None:
    key = GatewayKey.generate()
    with pytest.raises(DeviceError, match="not quarantined"):
        ledger.adopt(DEVICE, "alice", "n", key.sign1, "t")
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, quarantine=("chain_break", "x"))]))
    with pytest.raises(DeviceError, match="chain_break"):
        ledger.adopt(DEVICE, "alice", "n", key.sign1, "t")
    assert ledger.gaps() == []
    # ahead_of_ledger without a claim beyond L: nothing to adopt, and release may clear it.
    ledger.release(DEVICE, "alice", "n")
    ledger.commit(Batch(devices=[DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, "?"))]))
    with pytest.raises(DeviceError, match="no gap"):
        ledger.adopt(DEVICE, "alice", "n", key.sign1, "t")
    ledger.release(DEVICE, "alice", "nothing missing")


def test_a_failed_signature_leaves_the_quarantine_in_place(ledger: Ledger) -> None:
    _ahead(ledger, 4)

    def broken(payload: bytes) -> bytes:
        raise RuntimeError("HSM unplugged")

    with pytest.raises(RuntimeError):
        ledger.adopt(DEVICE, "alice", "n", broken, "t")
    record = ledger.device_record(DEVICE)
    assert record is not None and record.quarantine is not None and ledger.gaps() == []
    assert [a.action for a in ledger.operator_actions(0)] == ["quarantine"]


# the command queue ---------------------------------------------------------------------------


def _permit(permit: int, **fields: int) -> dict[str, int]:
    body = {"permit": permit, "count": 1, "not_before_s": 0, "not_after_s": 0, "operator": 0}
    return {**body, **fields}


def test_queue_command_refuses_what_the_wire_cannot_carry(ledger: Ledger) -> None:
    for body, field in [
        (_permit(2**32), "permit"),
        (_permit(0), "permit"),
        (_permit(1, count=0), "count"),
        (_permit(1, operator=2**32), "operator"),
        (_permit(1, not_before_s=-1), "not_before_s"),
        (_permit(1, not_before_s=10, not_after_s=5), "not_before_s"),
    ]:
        with pytest.raises(CommandError, match=field):
            ledger.queue_command(DEVICE, "permit", body)
    with pytest.raises(CommandError, match="permit"):
        ledger.queue_command(DEVICE, "revoke", {"permit": 2**32})
    assert ledger.commands() == []


def test_permit_ids_only_increase_and_never_pass_the_wire(ledger: Ledger) -> None:
    ledger.queue_command(DEVICE, "permit", _permit(5))
    assert ledger.next_permit_id(DEVICE) == 6
    for stale in (5, 3):
        with pytest.raises(CommandError, match="not above 5"):
            ledger.queue_command(DEVICE, "permit", _permit(stale))
    ledger.queue_command(DEVICE, "permit", _permit(2**32 - 1))
    with pytest.raises(CommandError, match="no permit id left"):
        ledger.next_permit_id(DEVICE)
    assert [c.body["permit"] for c in ledger.commands(DEVICE)] == [5, 2**32 - 1]


def test_an_out_of_range_id_left_by_v1_does_not_poison_later_permits(ledger: Ledger) -> None:
    ledger.queue_command(DEVICE, "permit", _permit(4))
    # What v1 queued unchecked for `--permit 4294967296`: it never reached the device.
    ledger._db.execute(
        "INSERT INTO commands (device, kind, body, created_ms, updated_ms) VALUES (?, ?, ?, 1, 1)",
        (DEVICE, "permit", json.dumps(_permit(2**32))),
    )
    assert ledger.next_permit_id(DEVICE) == 5


def test_an_existing_ledger_readable_by_others_is_made_private(tmp_path: Path) -> None:
    """Every record lives in the ledger: a copied or restored file left 0644 (and the WAL files
    SQLite makes with the same mode) is 0600 once the gateway opens it."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path, LinkKeyStore(tmp_path / "link-keys"), create=True)
    ledger.add_device("seal-1", bytes(32), None)
    ledger.close()
    os.chmod(path, 0o644)
    wal = tmp_path / "ledger.sqlite-wal"
    wal.write_bytes(b"")
    os.chmod(wal, 0o644)
    ledger = Ledger(path)
    try:
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert ledger.device_record("seal-1") is not None
    finally:
        ledger.close()
    assert all(mode == 0o600 for mode in modes.values()), modes
