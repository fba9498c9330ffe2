"""The fleet ledger in PostgreSQL: one transaction per batch of verified messages.

A batch is COPYed into a temporary staging table, then moved into `records` with ON CONFLICT
DO NOTHING: (device, counter) is the key, so a redelivery, or the same record from two
gateways, is stored once. A staged row whose key is held with another record hash is a fork:
kept in `forks` and alarmed. The chain is judged in the same transaction, both ways (the new
record against counter - 1, counter + 1 against the new record), under a per-device advisory
lock taken in device order: two instances storing neighbouring counters of one seal take turns,
so each sees the other's committed row and no link of the chain is left unjudged.

A gateway's gap statement (SPEC §11.6 "Gap statements at the fleet") is judged the same way,
under the same lock: a new statement against the records held, and each record newly stored
against the statements held, so whichever arrives second finds the mismatch, once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
import psycopg
from psycopg_pool import ConnectionPool
from sealink_verify.audit import seal_public_key, seal_signature_ok
from sealink_verify.mqtt import GapMessage
from sealink_verify.record import CountersignedRecord

from sealink.errors import FleetError

__all__ = [
    "Batch",
    "GatewayAlarm",
    "PermitResult",
    "Rejection",
    "SignedCheckpoint",
    "Store",
    "StoreOutcome",
]

_GENESIS = bytes(32)
_STAGE_COLUMNS = (
    "device, counter, gateway, received_ms, stored_ms, stored_by, cose, record_hash, prev, kind, "
    "permit, "
    "operator, time_s, seal_verified"
)


@dataclass(frozen=True)
class Rejection:
    topic: str
    reason: str
    detail: str
    payload: bytes
    device: str | None = None


@dataclass(frozen=True)
class GatewayAlarm:
    gateway: str
    device: str | None
    seq: int
    time_ms: int
    body: dict[str, Any]


@dataclass(frozen=True)
class SignedCheckpoint:
    gateway: str
    size: int
    root: bytes
    note: str
    time_ms: int


@dataclass(frozen=True)
class PermitResult:
    gateway: str
    approver: str
    device: str
    permit: int
    document_sha256: str
    state: str
    requested_by: str | None
    count: int | None
    time_ms: int


@dataclass
class Batch:
    records: list[tuple[CountersignedRecord, bytes]] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    alarms: list[GatewayAlarm] = field(default_factory=list)
    checkpoints: list[SignedCheckpoint] = field(default_factory=list)
    permits: list[PermitResult] = field(default_factory=list)
    # gateway -> every key of its history, walked from the pinned key (SPEC §14.7)
    key_histories: dict[str, list[bytes]] = field(default_factory=dict)
    # rejections (by id) whose record verified once its gateway's new key was learned
    resolved: list[int] = field(default_factory=list)
    # verified gap statements (SPEC §11.2 `gaps`) and their COSE bytes
    gap_statements: list[tuple[GapMessage, bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        parts = (self.records, self.rejections, self.alarms, self.checkpoints, self.permits,
                 self.gap_statements)  # fmt: skip
        return sum(len(p) for p in parts) + len(self.key_histories)


@dataclass
class StoreOutcome:
    stored: int = 0
    duplicates: int = 0
    forks: int = 0
    chain_breaks: int = 0
    rejected: int = 0
    gap_statements: int = 0  # new ones; a redelivered statement is not counted again
    gap_mismatches: int = 0  # gap_head_mismatch and gap_declared_over_held_records raised


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """A connection pool to the fleet database and the batch writer."""

    def __init__(self, dsn: str, *, instance: str = "", max_size: int = 4) -> None:
        self.dsn = dsn
        self.instance = instance
        try:  # one plain connection first: an unreachable database is one clear error
            psycopg.connect(dsn, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise FleetError(f"database unreachable: {str(exc).strip()}") from None
        self.pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            dsn, min_size=1, max_size=max_size, open=True, timeout=30, configure=_configure
        )

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, batch: Batch) -> StoreOutcome:
        """Store a batch in one transaction; returns what it did once committed."""
        outcome = StoreOutcome()
        with self.pool.connection() as conn, conn.transaction():
            devices = sorted(
                {r.device for r, _ in batch.records} | {g.device for g, _ in batch.gap_statements}
            )
            for device in devices:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (device,))
            if batch.records:
                _stage(conn, batch.records, self.instance)
                # Before this batch's statements are stored: each of those is judged against
                # every record once stored, these records included.
                _judge_new_records(conn, _records(conn, outcome), outcome)
            for message, cose in batch.gap_statements:
                _gap_statement(conn, message, cose, self.instance, outcome)
            for rejection in batch.rejections:
                _reject(conn, rejection, outcome)
            for alarm in batch.alarms:
                _gateway_alarm(conn, alarm)
            for checkpoint in batch.checkpoints:
                _checkpoint(conn, checkpoint)
            for permit in batch.permits:
                _permit(conn, permit)
            for gateway, keys in batch.key_histories.items():
                conn.execute("UPDATE gateways SET history_keys = %s WHERE id = %s", (keys, gateway))
            if batch.resolved:
                conn.execute("DELETE FROM rejections WHERE id = ANY(%s)", (batch.resolved,))
        return outcome

    def unknown_key_rejections(self) -> list[tuple[int, str, bytes]]:
        """(id, topic, payload) of records and gap statements refused for a key no gateway
        had, oldest first."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, topic, payload FROM rejections WHERE reason = 'unknown_key' "
                "OR (reason = 'UnknownKey' AND topic LIKE '%/gaps') ORDER BY id LIMIT 100000"
            ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def pin_gateway(self, gateway: str, keys: Sequence[bytes]) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO gateways (id, pinned_keys, added_ms) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET pinned_keys = EXCLUDED.pinned_keys, "
                # A history walked from another pinned key is not this one's.
                "history_keys = CASE WHEN gateways.pinned_keys = EXCLUDED.pinned_keys "
                "THEN gateways.history_keys END",
                (gateway, list(keys), _now_ms()),
            )

    def import_seal_keys(self, keys: Iterable[tuple[str, bytes]], source: str) -> int:
        """Register seals' public keys; a seal already registered with another key is refused
        (a key is replaced by a revocation, not by an import: issue 14's registry)."""
        count = 0
        with self.pool.connection() as conn, conn.transaction():
            for device, key in keys:
                row = conn.execute(
                    "INSERT INTO devices (id, seal_key, key_source, first_seen_ms) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "seal_key = EXCLUDED.seal_key, key_source = EXCLUDED.key_source "
                    "WHERE devices.seal_key IS NULL OR devices.seal_key = EXCLUDED.seal_key "
                    "RETURNING id",
                    (device, key, source, _now_ms()),
                ).fetchone()
                if row is None:
                    raise FleetError(f"{device}: the registry holds another seal key for it")
                _check_held(conn, device, key)
                count += 1
        return count

    def seal_keys(self, timeout_s: float = 30.0) -> dict[str, bytes]:
        with self.pool.connection(timeout=timeout_s) as conn:
            rows = conn.execute("SELECT id, seal_key FROM devices WHERE seal_key IS NOT NULL")
            return {str(r[0]): bytes(r[1]) for r in rows}

    def pinned_keys(self) -> dict[str, list[bytes]]:
        """gateway -> its pinned keys, and the keys of its history learned since."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, pinned_keys || coalesce(history_keys, '{}') FROM gateways"
            )
            return {str(r[0]): list(dict.fromkeys(bytes(k) for k in r[1])) for r in rows}


def _configure(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    conn.autocommit = True  # transactions are explicit (conn.transaction())


def _stage(
    conn: psycopg.Connection[tuple[Any, ...]],
    records: list[tuple[CountersignedRecord, bytes]],
    instance: str,
) -> None:
    # Per connection, made at first use (the pool may open connections before `migrate`).
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS staging ON COMMIT DELETE ROWS AS "
        f"SELECT {_STAGE_COLUMNS} FROM records WITH NO DATA"
    )
    now = _now_ms()
    with conn.cursor() as cur, cur.copy(f"COPY staging ({_STAGE_COLUMNS}) FROM STDIN") as copy:
        for record, cose in records:
            copy.write_row(
                (
                    record.device, record.counter, record.gateway, record.received_ms, now,
                    instance, cose, record.record_hash, record.prev, record.field_int("kind"),
                    record.field_int("permit"), record.field_int("operator"),
                    record.field_int("time_s"), record.seal_verified,
                )
            )  # fmt: skip


def _records(
    conn: psycopg.Connection[tuple[Any, ...]], outcome: StoreOutcome
) -> list[tuple[str, int]]:
    """Move the staged records into `records`; returns the (device, counter) stored now."""
    staged = conn.execute("SELECT count(*) FROM staging").fetchone()
    keys = conn.execute(
        f"INSERT INTO records ({_STAGE_COLUMNS}) "
        f"SELECT DISTINCT ON (device, counter) {_STAGE_COLUMNS} FROM staging "
        "ORDER BY device, counter, received_ms ON CONFLICT (device, counter) DO NOTHING "
        "RETURNING device, counter"
    ).fetchall()
    inserted = len(keys)
    outcome.stored += inserted
    conn.execute(
        "INSERT INTO devices (id, first_seen_ms) SELECT device, min(stored_ms) FROM staging "
        "GROUP BY device ON CONFLICT (id) DO NOTHING"
    )
    forks = conn.execute(
        "INSERT INTO forks (device, counter, gateway, received_ms, stored_ms, cose, record_hash) "
        "SELECT s.device, s.counter, s.gateway, s.received_ms, s.stored_ms, s.cose, "
        "s.record_hash FROM staging s JOIN records r USING (device, counter) "
        "WHERE r.record_hash <> s.record_hash ON CONFLICT DO NOTHING "
        "RETURNING device, counter, gateway, encode(record_hash, 'hex')"
    ).fetchall()
    outcome.forks += len(forks)
    outcome.duplicates += int(staged[0] if staged else 0) - inserted - len(forks)
    for device, counter, gateway, digest in forks:
        _alarm(conn, "fork", device, gateway, {"counter": counter, "record_sha256": digest},
               f"fork:{device}:{counter}:{digest}")  # fmt: skip
    _judge_chain(conn, outcome)
    return [(str(device), int(counter)) for device, counter in keys]


# What _gap_findings reads of a statement, then the record it is judged with.
_FINDING_COLUMNS = (
    "g.device, g.gateway, g.first, g.last, g.operator, g.note, g.head, g.cose_sha256, "
    "r.counter, r.record_hash"
)
# A move's statement covers records the fleet holds (it placed the seal on them): only record
# `last`, the head, is compared. Any held record under an operator's statement is a finding.
_JUDGED = "(g.head IS NULL OR r.counter = g.last)"


def _gap_statement(
    conn: psycopg.Connection[tuple[Any, ...]],
    message: GapMessage,
    cose: bytes,
    instance: str,
    outcome: StoreOutcome,
) -> None:
    """Keep a verified statement once; a new one is judged against the records held."""
    s = message.statement
    row = conn.execute(
        "INSERT INTO gap_statements (device, gateway, first, last, adopted_ms, operator, note, "
        "head, cose, cose_sha256, stored_ms, stored_by) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (cose_sha256) DO NOTHING RETURNING id",
        (message.device, message.gateway, s.first, s.last, s.adopted_ms, s.operator, s.note,
         s.head, cose, hashlib.sha256(cose).digest(), _now_ms(), instance),
    ).fetchone()  # fmt: skip
    if row is None:
        return  # delivered again: judged when it was first stored
    outcome.gap_statements += 1
    found = conn.execute(
        f"SELECT {_FINDING_COLUMNS} FROM gap_statements g JOIN records r "
        f"ON r.device = g.device AND r.counter BETWEEN g.first AND g.last AND {_JUDGED} "
        "WHERE g.id = %s ORDER BY r.counter",
        (row[0],),
    ).fetchall()
    _gap_findings(conn, found, outcome)


def _judge_new_records(
    conn: psycopg.Connection[tuple[Any, ...]], keys: list[tuple[str, int]], outcome: StoreOutcome
) -> None:
    """Each record stored now against the statements held that cover its counter."""
    devices = list({device for device, _ in keys})
    # Most seals have no statement: asked first, the join runs only for those that have one
    # (run for every batch, it cost a fifth of the batch's write).
    stated = {
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT device FROM gap_statements WHERE device = ANY(%s)", (devices,)
        )
    }
    keys = [(device, counter) for device, counter in keys if device in stated]
    if not keys:
        return
    found = conn.execute(
        f"SELECT {_FINDING_COLUMNS} FROM unnest(%s::text[], %s::bigint[]) AS k(device, counter) "
        "JOIN records r USING (device, counter) JOIN gap_statements g "
        f"ON g.device = r.device AND r.counter BETWEEN g.first AND g.last AND {_JUDGED} "
        "ORDER BY g.id, r.counter",
        ([d for d, _ in keys], [c for _, c in keys]),
    ).fetchall()
    _gap_findings(conn, found, outcome)


def _gap_findings(
    conn: psycopg.Connection[tuple[Any, ...]],
    found: list[tuple[Any, ...]],
    outcome: StoreOutcome,
) -> None:
    """Alarms for (statement, held record) pairs, ordered by statement then counter: a head
    that is not the held record's hash, and records held under a statement that says lost."""
    over: dict[bytes, tuple[tuple[Any, ...], list[int]]] = {}
    for *statement, counter, record_hash in found:
        device, gateway, first, last, operator, note, head, digest = statement
        if head is None:
            over.setdefault(bytes(digest), (tuple(statement), []))[1].append(int(counter))
        elif bytes(head) != bytes(record_hash):
            outcome.gap_mismatches += 1
            sha = bytes(digest).hex()
            detail = {"counter": counter, "held_sha256": bytes(record_hash).hex(),
                      "stated_sha256": bytes(head).hex(), "first": first, "operator": operator,
                      "statement_sha256": sha}  # fmt: skip
            # One per statement: its record `last` is held once.
            _alarm(conn, "gap_head_mismatch", device, gateway, detail,
                   f"gap_head_mismatch:{device}:{sha}")  # fmt: skip
    for (device, gateway, first, last, operator, note, _, digest), counters in over.values():
        # Each record is stored once, so each is found once: by its statement's arrival or its
        # own. The first counter found tells one finding from another of the same statement.
        outcome.gap_mismatches += 1
        sha = bytes(digest).hex()
        detail = {"first": first, "last": last, "operator": operator, "note": note,
                  "counters": _spans(counters), "statement_sha256": sha}  # fmt: skip
        reason = "gap_declared_over_held_records"
        _alarm(conn, reason, device, gateway, detail, f"{reason}:{device}:{sha}:{counters[0]}")


def _spans(counters: list[int]) -> list[list[int]]:
    """Sorted counters as [first, last] runs: [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    spans: list[list[int]] = []
    for counter in counters:
        if spans and spans[-1][1] + 1 == counter:
            spans[-1][1] = counter
        else:
            spans.append([counter, counter])
    return spans


def _check_held(conn: psycopg.Connection[tuple[Any, ...]], device: str, key: bytes) -> None:
    """The seal signatures of a seal's records stored before its key was known (their
    countersignature was checked at arrival; the COSE payload is read, not verified again)."""
    public = seal_public_key(key)
    rows = conn.execute(
        "SELECT counter, cose, gateway FROM records WHERE device = %s AND seal_verified IS NULL",
        (device,),
    ).fetchall()
    for counter, cose, gateway in rows:
        event = cbor2.loads(cbor2.loads(cbor2.loads(bytes(cose)).value[2])["event"])
        ok = seal_signature_ok(public, event)
        conn.execute(
            "UPDATE records SET seal_verified = %s WHERE device = %s AND counter = %s",
            (ok, device, counter),
        )
        if not ok:
            _alarm(conn, "bad_seal_signature", device, gateway, {"counter": counter},
                   f"bad_seal_signature:{device}:{counter}")  # fmt: skip


def _judge_chain(conn: psycopg.Connection[tuple[Any, ...]], outcome: StoreOutcome) -> None:
    """chain_ok of each staged record (against counter - 1) and of its successor."""
    judged = conn.execute(
        "WITH held AS (SELECT r.device, r.counter FROM records r JOIN staging s "
        "USING (device, counter) WHERE r.record_hash = s.record_hash), "
        "targets AS (SELECT device, counter FROM held UNION "
        "SELECT device, counter + 1 FROM held) "
        "UPDATE records r SET chain_ok = CASE WHEN r.counter = 1 THEN r.prev = %s "
        "ELSE r.prev = p.record_hash END "
        "FROM targets t LEFT JOIN records p ON p.device = t.device AND p.counter = t.counter - 1 "
        "WHERE r.device = t.device AND r.counter = t.counter "
        "AND (r.counter = 1 OR p.record_hash IS NOT NULL) AND r.chain_ok IS NULL "
        "RETURNING r.device, r.counter, r.gateway, r.chain_ok",
        (_GENESIS,),
    ).fetchall()
    for device, counter, gateway, ok in judged:
        if not ok:
            outcome.chain_breaks += 1
            _alarm(conn, "chain_break", device, gateway, {"counter": counter},
                   f"chain_break:{device}:{counter}")  # fmt: skip


def _alarm(
    conn: psycopg.Connection[tuple[Any, ...]],
    reason: str,
    device: str | None,
    gateway: str | None,
    detail: dict[str, Any],
    dedupe: str,
) -> None:
    conn.execute(
        "INSERT INTO alarms (time_ms, source, gateway, device, reason, detail, dedupe) "
        "VALUES (%s, 'fleet', %s, %s, %s, %s, %s) ON CONFLICT (dedupe) DO NOTHING",
        (_now_ms(), gateway, device, reason, json.dumps(detail), dedupe),
    )


def _reject(
    conn: psycopg.Connection[tuple[Any, ...]], rejection: Rejection, outcome: StoreOutcome
) -> None:
    digest = hashlib.sha256(rejection.topic.encode() + b"\0" + rejection.payload).digest()
    row = conn.execute(
        "INSERT INTO rejections (topic, reason, detail, payload, payload_sha, stored_ms) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (payload_sha) DO NOTHING RETURNING id",
        (rejection.topic, rejection.reason, rejection.detail, rejection.payload, digest,
         _now_ms()),
    ).fetchone()  # fmt: skip
    if row is not None:
        outcome.rejected += 1
        detail = {"topic": rejection.topic, "check": rejection.reason, "detail": rejection.detail}
        _alarm(conn, "rejected", rejection.device, None, detail, f"rejected:{digest.hex()}")


def _gateway_alarm(conn: psycopg.Connection[tuple[Any, ...]], alarm: GatewayAlarm) -> None:
    conn.execute(
        "INSERT INTO alarms (time_ms, source, gateway, device, reason, detail, dedupe) "
        "VALUES (%s, 'gateway', %s, %s, %s, %s, %s) ON CONFLICT (dedupe) DO NOTHING",
        (
            alarm.time_ms,
            alarm.gateway,
            alarm.device,
            str(alarm.body.get("reason") or alarm.body.get("code_name") or "alarm"),
            json.dumps(alarm.body),
            f"gateway:{alarm.gateway}:{alarm.seq}",
        ),
    )


def _checkpoint(conn: psycopg.Connection[tuple[Any, ...]], cp: SignedCheckpoint) -> None:
    row = conn.execute(
        "INSERT INTO checkpoints (gateway, size, root, note, received_ms, time_ms) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (gateway, size) DO UPDATE SET size = "
        "checkpoints.size RETURNING root, note",
        (cp.gateway, cp.size, cp.root, cp.note, _now_ms(), cp.time_ms),
    ).fetchone()
    if row is not None and bytes(row[0]) != cp.root:
        # Both signed notes are the evidence: together they prove the gateway forked its log.
        detail = {"size": cp.size, "roots": [bytes(row[0]).hex(), cp.root.hex()],
                  "notes": [str(row[1]), cp.note]}  # fmt: skip
        _alarm(conn, "split_view", None, cp.gateway, detail,
               f"split_view:{cp.gateway}:{cp.size}:{cp.root.hex()}")  # fmt: skip


def _permit(conn: psycopg.Connection[tuple[Any, ...]], result: PermitResult) -> None:
    """Learn a permit's document; a result naming another one for it is an alarm."""
    held = conn.execute(
        "INSERT INTO permits (device, permit, document_sha256, gateway, approver, requested_by, "
        "count, states, first_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, ARRAY[%s], %s) "
        "ON CONFLICT (device, permit) DO UPDATE SET states = CASE "
        "WHEN %s = ANY(permits.states) THEN permits.states "
        "ELSE permits.states || EXCLUDED.states END "
        "WHERE permits.document_sha256 = EXCLUDED.document_sha256 RETURNING 1",
        (result.device, result.permit, result.document_sha256, result.gateway, result.approver,
         result.requested_by, result.count, result.state, result.time_ms, result.state),
    ).fetchone()  # fmt: skip
    if held is None:
        stored = conn.execute(
            "SELECT document_sha256, gateway FROM permits WHERE device = %s AND permit = %s",
            (result.device, result.permit),
        ).fetchone()
        assert stored is not None  # the conflict was on this very row
        _alarm(
            conn, "permit_document_mismatch", result.device, result.gateway,
            {"permit": result.permit, "held_sha256": stored[0], "held_gateway": stored[1],
             "document_sha256": result.document_sha256, "gateway": result.gateway,
             "approver": result.approver},
            f"permit:{result.device}:{result.permit}:{result.document_sha256}",
        )  # fmt: skip
