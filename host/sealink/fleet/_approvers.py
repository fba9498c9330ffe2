"""Fleet approver keys (SPEC §11.7): an approver issued or revoked in PostgreSQL, and the
signed message that carries it to every gateway, retained on `<prefix>/fleet/approvers/<name>`.

As the registry (_registry.py): a change is one transaction, the approver's row (state, seq,
the signed message, not yet published) and its `approver_states` row (who, when, why); the
message is then published retained, marked published on the broker's PUBACK, and published
again by `sealink fleet run` if the broker never acknowledged it. seq is max(last + 1, now in
µs) taken under the row's lock. A revocation is final: a name revoked is not issued again,
so a name means one key on every gateway, as it does for an operator's approvers (§11.5).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from sealink.approvals import ApproverEntry, approver_topic, build_approver
from sealink.crypto import GatewayKey
from sealink.errors import FleetError
from sealink.fleet._registry import require_reason
from sealink.fleet._store import Store

__all__ = [
    "ApproverChange",
    "FleetApprover",
    "add_approver",
    "approvers",
    "mark_approver_published",
    "revoke_approver",
    "unpublished_approvers",
]

Connection = psycopg.Connection[tuple[Any, ...]]

_ALARM = {"active": "approver_issued", "revoked": "approver_revoked"}


@dataclass(frozen=True)
class ApproverChange:
    name: str
    state: str
    seq: int
    topic: str
    message: bytes


@dataclass(frozen=True)
class FleetApprover:
    name: str
    public_key: bytes
    actions: tuple[str, ...]
    state: str
    reason: str
    since_ms: int
    seq: int
    published: bool


def add_approver(
    store: Store,
    key: GatewayKey,
    fleet: str,
    prefix: str,
    name: str,
    public_key: bytes,
    actions: tuple[str, ...],
    reason: str,
    by: str,
) -> ApproverChange:
    """Issue approver `name` with its key and actions; FleetError if the name was ever issued
    (revoked ones included: their history is kept, pick another name)."""
    require_reason(reason)
    try:
        with store.pool.connection() as conn, conn.transaction():
            known = conn.execute(
                "SELECT state FROM approvers WHERE name = %s FOR UPDATE", (name,)
            ).fetchone()
            if known is not None:
                revoked = known[0] == "revoked"
                said = "revoked; its history is kept, pick another name" if revoked else "issued"
                raise FleetError(f"approver {name} is already {said}")
            now_us = time.time_ns() // 1000
            entry = ApproverEntry(
                fleet,
                name,
                "active",
                public_key,
                actions,
                reason,
                now_us // 1000,
                now_us,
                now_us // 1000,
            )
            message = build_approver(key, prefix, entry)
            conn.execute(
                "INSERT INTO approvers (name, public_key, actions, state, reason, since_ms, seq, "
                "message) VALUES (%s, %s, %s, 'active', %s, %s, %s, %s)",
                (name, public_key, list(actions), reason, entry.since_ms, entry.seq, message),
            )
            return _record(conn, prefix, entry, message, by)
    except psycopg.errors.UniqueViolation:
        raise FleetError(f"approver {name} is already issued") from None
    except psycopg.Error as exc:
        raise FleetError(f"approvers: {exc} (was `sealink fleet migrate` run?)") from None


def revoke_approver(
    store: Store, key: GatewayKey, fleet: str, prefix: str, name: str, reason: str, by: str
) -> ApproverChange:
    """Revoke approver `name` on every gateway, for good; FleetError if the fleet never
    issued it or revoked it already."""
    require_reason(reason)
    try:
        with store.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT public_key, actions, state, seq FROM approvers WHERE name = %s FOR UPDATE",
                (name,),
            ).fetchone()
            if row is None:
                raise FleetError(
                    f"no approver {name} issued by the fleet (sealink fleet approvers list)"
                )
            if row[2] == "revoked":
                raise FleetError(f"approver {name} is revoked already")
            now_us = time.time_ns() // 1000
            entry = ApproverEntry(
                fleet,
                name,
                "revoked",
                bytes(row[0]),
                tuple(row[1]),
                reason,
                now_us // 1000,
                max(int(row[3]) + 1, now_us),
                now_us // 1000,
            )
            message = build_approver(key, prefix, entry)
            conn.execute(
                "UPDATE approvers SET state = 'revoked', reason = %s, since_ms = %s, seq = %s, "
                "message = %s, published = false WHERE name = %s",
                (reason, entry.since_ms, entry.seq, message, name),
            )
            return _record(conn, prefix, entry, message, by)
    except psycopg.Error as exc:
        raise FleetError(f"approvers: {exc} (was `sealink fleet migrate` run?)") from None


def _record(
    conn: Connection, prefix: str, entry: ApproverEntry, message: bytes, by: str
) -> ApproverChange:
    conn.execute(
        "INSERT INTO approver_states (name, state, reason, by_whom, time_ms, seq) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (entry.name, entry.state, entry.reason, by, entry.time_ms, entry.seq),
    )
    # Also where every other fleet event is read (`sealink fleet alarms`).
    detail = {"approver": entry.name, "reason": entry.reason, "by": by, "seq": entry.seq}
    conn.execute(
        "INSERT INTO alarms (time_ms, source, reason, detail, dedupe) "
        "VALUES (%s, 'fleet', %s, %s, %s)",
        (entry.time_ms, _ALARM[entry.state], json.dumps(detail),
         f"approver:{entry.name}:{entry.seq}"),
    )  # fmt: skip
    topic = approver_topic(prefix, entry.name)
    return ApproverChange(entry.name, entry.state, entry.seq, topic, message)


def approvers(store: Store) -> list[FleetApprover]:
    try:
        with store.pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, public_key, actions, state, reason, since_ms, seq, published "
                "FROM approvers ORDER BY name"
            ).fetchall()
    except psycopg.Error as exc:
        raise FleetError(f"approvers: {exc} (was `sealink fleet migrate` run?)") from None
    return [
        FleetApprover(
            str(r[0]),
            bytes(r[1]),
            tuple(r[2]),
            str(r[3]),
            str(r[4]),
            int(r[5]),
            int(r[6]),
            bool(r[7]),
        )
        for r in rows
    ]


def unpublished_approvers(store: Store, prefix: str) -> list[ApproverChange]:
    """The approver messages the broker has not acknowledged yet."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT name, state, seq, message FROM approvers WHERE NOT published ORDER BY name"
        ).fetchall()
    return [
        ApproverChange(str(n), str(s), int(q), approver_topic(prefix, str(n)), bytes(m))
        for n, s, q, m in rows
    ]


def mark_approver_published(store: Store, change: ApproverChange) -> None:
    """Published as of this seq (a later change is left to be published)."""
    with store.pool.connection() as conn:
        conn.execute(
            "UPDATE approvers SET published = true WHERE name = %s AND seq = %s",
            (change.name, change.seq),
        )
