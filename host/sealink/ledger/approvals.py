"""Approvers and their requests (SPEC §11.5), in the ledger (schema v10).

approvers: the registered keys, the actions each may ask for, the highest seq accepted from
each (durable: a replay after a gateway restart is still one), revoked ones kept for history.
approval_requests: every request that arrived, accepted or refused, with who, when, what and
the outcome; an accepted one also its command, its state and its latest result body. A refusal
that nobody answers for (SPEC §11.5: unsigned, forged, a copy) beyond the gateway's limits is
no row of its own: one `suppressed` row a minute counts those.
approval_results: the signed results, kept until the broker acknowledged them, so a result is
sent (again) after a broker outage or a gateway restart.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import cbor2
from sealproto import messages

from sealink.commands import CommandFieldError, validate_command
from sealink.errors import CommandError, DeviceError, SealinkError
from sealink.ledger import fleetapprovers, queue
from sealink.ledger.records import now_ms

__all__ = [
    "ApprovalEntry",
    "ApprovalRow",
    "Approver",
    "ApproverError",
    "PendingResult",
    "Refusal",
]


class ApproverError(SealinkError):
    """An approver cannot be added, found or revoked as asked."""


@dataclass(frozen=True)
class Approver:
    name: str
    public_key: bytes
    actions: tuple[str, ...]
    added_ms: int
    revoked_ms: int | None
    highest_seq: int


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str
    field: str | None = None


@dataclass(frozen=True)
class ApprovalEntry:
    """A request as it arrived; `refusal` set when the gateway refused it before the ledger's
    checks (signature, approver, rights, time); `seq` None when nothing was verified."""

    approver: str | None
    request: str | None
    body: dict[str, Any] | None
    seq: int | None
    response_topic: str
    correlation: bytes | None
    refusal: Refusal | None


@dataclass(frozen=True)
class ApprovalRow:
    id: int
    approver: str | None
    request: str | None
    action: str | None
    device: str | None
    outcome: str  # accepted, refused, duplicate
    state: str | None
    command: int | None
    permit: int | None
    body: dict[str, Any]
    last: dict[str, Any] | None  # the latest result body of an accepted request
    response_topic: str
    correlation: bytes | None
    refusal: Refusal | None = None
    first: int | None = None  # a duplicate: the accepted row it repeats


@dataclass(frozen=True)
class PendingResult:
    id: int
    topic: str
    correlation: bytes | None
    payload: bytes


_COLUMNS = (
    "id, approver, request, action, device, outcome, state, command, permit, body, last, "
    "response_topic, correlation, reason, detail, field, first"
)


def _row(r: sqlite3.Row | tuple[Any, ...]) -> ApprovalRow:
    refusal = Refusal(r[13], r[14] or "", r[15]) if r[13] is not None else None
    return ApprovalRow(
        id=r[0],
        approver=r[1],
        request=r[2],
        action=r[3],
        device=r[4],
        outcome=r[5],
        state=r[6],
        command=r[7],
        permit=r[8],
        body=json.loads(r[9]) if r[9] else {},
        last=json.loads(r[10]) if r[10] else None,
        response_topic=r[11],
        correlation=bytes(r[12]) if r[12] is not None else None,
        refusal=refusal,
        first=r[16],
    )


def add_approver(db: sqlite3.Connection, name: str, key: bytes, actions: tuple[str, ...]) -> None:
    known = db.execute("SELECT revoked_ms FROM approvers WHERE name = ?", (name,)).fetchone()
    said = fleetapprovers.fleet_said(db, name)
    if said is not None and said[0] == "revoked":
        raise ApproverError(
            f"approver {name} was revoked by the fleet (seq {said[1]}, SPEC §11.7): "
            "an operator cannot make it active again; pick another name"
        )
    if known is not None:
        state = "revoked; its history is kept, pick another name" if known[0] else "registered"
        raise ApproverError(f"approver {name} is already {state}")
    db.execute(
        "INSERT INTO approvers (name, public_key, actions, added_ms) VALUES (?, ?, ?, ?)",
        (name, key, ",".join(actions), now_ms()),
    )


def revoke_approver(db: sqlite3.Connection, name: str) -> None:
    cur = db.execute(
        "UPDATE approvers SET revoked_ms = ? WHERE name = ? AND revoked_ms IS NULL",
        (now_ms(), name),
    )
    if cur.rowcount == 0:
        raise ApproverError(f"no registered approver {name} (sealink approvers list)")


def approvers(db: sqlite3.Connection, name: str | None = None) -> list[Approver]:
    rows = db.execute(
        "SELECT name, public_key, actions, added_ms, revoked_ms, highest_seq FROM approvers "
        "WHERE ? IS NULL OR name = ? ORDER BY name",
        (name, name),
    ).fetchall()
    return [
        Approver(r[0], bytes(r[1]), tuple(a for a in r[2].split(",") if a), r[3], r[4], r[5])
        for r in rows
    ]


def _insert(
    db: sqlite3.Connection, entry: ApprovalEntry, outcome: str, **columns: Any
) -> ApprovalRow:
    body = entry.body or {}
    values: dict[str, Any] = {
        "approver": entry.approver,
        "request": entry.request,
        "action": body.get("action"),
        "device": body.get("device"),
        "requested_by": body.get("requested_by"),
        "seq": entry.seq,
        "received_ms": now_ms(),
        "outcome": outcome,
        "body": json.dumps(body, sort_keys=True) if entry.body is not None else None,
        "response_topic": entry.response_topic,
        "correlation": entry.correlation,
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cur = db.execute(
        f"INSERT INTO approval_requests ({names}) VALUES ({marks})", list(values.values())
    )
    return request_row(db, int(cur.lastrowid or 0))


def _refused(db: sqlite3.Connection, entry: ApprovalEntry, refusal: Refusal) -> ApprovalRow:
    return _insert(
        db,
        entry,
        "refused",
        state="refused",
        reason=refusal.reason,
        detail=refusal.detail,
        field=refusal.field,
    )


def replay_refusal(seq: int, highest: int) -> Refusal | None:
    """`replay` if `seq` is not above the approver's highest accepted one."""
    if seq <= highest:
        return Refusal("replay", f"seq {seq} is not above {highest}, the highest accepted")
    return None


def record_suppressed(
    db: sqlite3.Connection, summary: dict[str, Any], alarm_topic: str
) -> ApprovalRow:
    """A summary of refusals the limits kept from being recorded one by one (SPEC §11.5): a
    `suppressed` row, no approver nor request, the summary as its body, `alarm_topic` (where
    its alarm went) as the topic it was answered on."""
    detail = (
        f"{summary['count']} refusals beyond the limits, {summary['recorded']} of them "
        "recorded one by one all the same"
    )
    cur = db.execute(
        "INSERT INTO approval_requests (received_ms, outcome, body, response_topic, reason, "
        "detail) VALUES (?, 'suppressed', ?, ?, 'suppressed', ?)",
        (now_ms(), json.dumps(summary, sort_keys=True), alarm_topic, detail),
    )
    return request_row(db, int(cur.lastrowid or 0))


def record_request(db: sqlite3.Connection, entry: ApprovalEntry) -> ApprovalRow:
    """Decide and record one request (inside the caller's write transaction): a replayed seq,
    an earlier refusal, the same request id again (a `duplicate` row naming the first), a
    command the wire or the ledger refuses; else the accepted row, its command queued."""
    if entry.seq is not None and entry.approver is not None:
        highest = db.execute(
            "SELECT highest_seq FROM approvers WHERE name = ?", (entry.approver,)
        ).fetchone()[0]
        replay = replay_refusal(entry.seq, highest)
        if replay is not None:
            return _refused(db, entry, replay)
        db.execute(
            "UPDATE approvers SET highest_seq = ? WHERE name = ?", (entry.seq, entry.approver)
        )
    if entry.refusal is not None or entry.body is None:
        return _refused(db, entry, entry.refusal or Refusal("invalid", "no body", "body"))
    first = db.execute(
        "SELECT id FROM approval_requests WHERE approver = ? AND request = ? "
        "AND outcome = 'accepted'",
        (entry.approver, entry.request),
    ).fetchone()
    if first is not None:
        return _insert(db, entry, "duplicate", first=first[0])
    try:
        command, permit = _queue(db, entry.body)
    except CommandFieldError as exc:
        return _refused(db, entry, Refusal("invalid", f"{exc.field} {exc.problem}", exc.field))
    except DeviceError as exc:
        return _refused(db, entry, Refusal("invalid", str(exc), "device"))
    except CommandError as exc:
        return _refused(db, entry, Refusal("invalid", str(exc), "permit"))
    # Impressions under the permit can only follow it: counting starts after the last record.
    last = db.execute(
        "SELECT COALESCE(MAX(counter), 0) FROM events WHERE device = ?", (entry.body["device"],)
    ).fetchone()[0]
    return _insert(
        db, entry, "accepted", state="queued", command=command, permit=permit, scanned=last
    )


def _queue(db: sqlite3.Connection, body: dict[str, Any]) -> tuple[int | None, int | None]:
    """The command a request queues (permit, revoke), checked by sealink.commands; release and
    bundle queue none. (command id, permit id)."""
    device, action = body["device"], body["action"]
    if db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone() is None:
        raise DeviceError(f"device {device} is not registered")
    if action == "permit":
        command = {
            "permit": queue.next_permit_id(db, device),
            "count": body["count"],
            "not_before_s": body["not_before_s"],
            "not_after_s": body["not_after_s"],
            "operator": body.get("operator", 0),
        }
        if "operators" in body:
            command["operators"] = body["operators"]
    elif action == "revoke":
        command = {"permit": body["permit"]}
    else:
        return None, None
    validate_command(action, command)
    return queue.queue_command(db, device, action, command), command["permit"]


def request_row(db: sqlite3.Connection, row_id: int) -> ApprovalRow:
    r = db.execute(f"SELECT {_COLUMNS} FROM approval_requests WHERE id = ?", (row_id,)).fetchone()
    return _row(r)


def requests(
    db: sqlite3.Connection, where: str = "", args: tuple[Any, ...] = ()
) -> list[ApprovalRow]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM approval_requests {where} ORDER BY id", args)
    return [_row(r) for r in rows.fetchall()]


def set_state(db: sqlite3.Connection, row_id: int, state: str, last: dict[str, Any]) -> None:
    db.execute(
        "UPDATE approval_requests SET state = ?, last = ? WHERE id = ?",
        (state, json.dumps(last, sort_keys=True), row_id),
    )


def add_result(
    db: sqlite3.Connection, topic: str, correlation: bytes | None, payload: bytes
) -> int:
    cur = db.execute(
        "INSERT INTO approval_results (topic, correlation, payload, created_ms) "
        "VALUES (?, ?, ?, ?)",
        (topic, correlation, payload, now_ms()),
    )
    return int(cur.lastrowid or 0)


def pending_results(db: sqlite3.Connection) -> list[PendingResult]:
    rows = db.execute(
        "SELECT id, topic, correlation, payload FROM approval_results "
        "WHERE published_ms IS NULL ORDER BY id"
    ).fetchall()
    return [
        PendingResult(r[0], r[1], bytes(r[2]) if r[2] is not None else None, bytes(r[3]))
        for r in rows
    ]


def used(db: sqlite3.Connection, row_id: int, device: str, permit: int) -> int:
    """Impressions stored under `permit` of `device` (each record's permit field, §4.1), the
    events scanned once: the row keeps the count and the highest counter looked at."""
    count, scanned = db.execute(
        "SELECT used, scanned FROM approval_requests WHERE id = ?", (row_id,)
    ).fetchone()
    rows = db.execute(
        "SELECT counter, event FROM events WHERE device = ? AND counter > ? ORDER BY counter",
        (device, scanned),
    ).fetchall()
    for counter, event in rows:
        record = cbor2.loads(event)
        kind = record.get(messages.EV_KIND)
        if record.get(messages.EV_PERMIT) == permit and kind == messages.KIND_IMPRESSION:
            count += 1
        scanned = counter
    db.execute(
        "UPDATE approval_requests SET used = ?, scanned = ? WHERE id = ?", (count, scanned, row_id)
    )
    return int(count)
