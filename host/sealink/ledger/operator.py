"""What only an operator may do to a device: hold it, release it, adopt a gap (SPEC §5.8).

A quarantine is sticky: the gateway sets it (first cause kept), only these functions clear it,
and each action is a row in `operator_actions`, the audit trail that the running service polls
to learn what the CLI did from another process.

A seal *ahead of the ledger* (it holds acknowledgements for events this ledger never stored:
the ledger was restored, the gateway replaced, the seal moved) cannot be released: the events
are gone from the seal too, so the operator must *adopt* the hole, which records it as a gap
countersigned by the gateway (`gap_payload`), exported and verified like the events.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from typing import Any

import cbor2

from sealink.errors import DeviceError
from sealink.evidence import gap_leaf
from sealink.ledger import log
from sealink.ledger.records import GENESIS, DeviceUpdate, Gap, OperatorAction, Quarantine, now_ms

__all__ = [
    "AHEAD_OF_LEDGER",
    "MOVED_BY_FLEET",
    "OPERATOR_HOLD",
    "REVOKED_BY_FLEET",
    "adopt",
    "apply_device_update",
    "gap_payload",
    "gaps",
    "hold",
    "lift",
    "operator_actions",
    "quarantine_device",
    "record_action",
    "record_gap",
    "release",
    "stored_head",
]

# The quarantine reason of a seal that claims acks beyond the ledger: only `adopt` clears it.
AHEAD_OF_LEDGER = "ahead_of_ledger"
# The reason of a quarantine an operator asked for.
OPERATOR_HOLD = "operator"
# The reason of a quarantine the fleet's registry set (SPEC §11.6): only the fleet lifts it.
REVOKED_BY_FLEET = "revoked_by_fleet"
# The reason of a seal the fleet moved to another gateway: only a move back lifts it.
MOVED_BY_FLEET = "moved_by_fleet"


def gap_payload(
    device: str,
    first: int,
    last: int,
    adopted_ms: int,
    operator: str,
    note: str,
    head: bytes | None = None,
) -> bytes:
    """The countersigned statement of a gap: deterministic CBOR with text keys, like the event
    countersignature (SPEC §11.1), told apart from it by "kind"; with `head` (a seal the fleet
    moved here, SPEC §11.6) the hash of record `last`, which the next event chains to."""
    statement: dict[str, Any] = {
        "adopted_ms": adopted_ms,
        "device": device,
        "first": first,
        "kind": "gap",
        "last": last,
        "note": note,
        "operator": operator,
    }
    if head is not None:
        statement["head"] = head
    return bytes(cbor2.dumps(statement, canonical=True))


def stored_head(db: sqlite3.Connection, device: str) -> tuple[int, bytes | None]:
    """(L, hash of event L): L is the highest counter held as an event or as the end of an
    adopted gap; the hash is GENESIS for L = 0, and when L ends a gap the head the fleet
    placed with it (SPEC §11.6), or None for an operator's gap (no event to chain to: the
    next one anchors)."""
    event = db.execute(
        "SELECT counter, hash FROM events WHERE device = ? ORDER BY counter DESC LIMIT 1",
        (device,),
    ).fetchone()
    gap = db.execute(
        "SELECT last, head FROM gaps WHERE device = ? ORDER BY last DESC LIMIT 1", (device,)
    ).fetchone()
    counter = int(event[0]) if event else 0
    if gap is not None and int(gap[0]) > counter:
        return int(gap[0]), None if gap[1] is None else bytes(gap[1])
    return (counter, bytes(event[1])) if event else (0, GENESIS)


def record_action(
    db: sqlite3.Connection,
    device: str,
    action: str,
    operator: str,
    note: str,
    ms: int,
    detail: dict[str, Any] | None = None,
) -> None:
    db.execute(
        "INSERT INTO operator_actions (device, action, operator, note, ms, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (device, action, operator, note, ms, None if detail is None else json.dumps(detail)),
    )


def hold(db: sqlite3.Connection, device: str, reason: str, detail: str, ms: int) -> bool:
    """Quarantine `device` for `reason` unless it is already: a quarantine is sticky, its
    first cause stays. Returns whether it was held now."""
    cur = db.execute(
        "UPDATE devices SET quarantine_reason = ?, quarantine_detail = ?, quarantine_ms = ? "
        "WHERE id = ? AND quarantine_reason IS NULL",
        (reason, detail, ms, device),
    )
    return cur.rowcount > 0


def lift(db: sqlite3.Connection, device: str, *, clear_ahead: bool) -> None:
    """Clear `device`'s quarantine; `clear_ahead`: the ledger now covers the counters the seal
    claimed beyond it, so that claim goes too."""
    ahead = ", ahead_acked = NULL" if clear_ahead else ""
    db.execute(
        "UPDATE devices SET quarantine_reason = NULL, quarantine_detail = NULL, "
        f"quarantine_ms = NULL{ahead} WHERE id = ?",
        (device,),
    )


def _quarantine_of(db: sqlite3.Connection, device: str) -> tuple[Quarantine | None, int | None]:
    row = db.execute(
        "SELECT quarantine_reason, quarantine_detail, quarantine_ms, ahead_acked "
        "FROM devices WHERE id = ?",
        (device,),
    ).fetchone()
    if row is None:
        raise DeviceError(f"device {device} is not registered (sealink devices add)")
    quarantine = None if row[0] is None else Quarantine(row[0], row[1] or "", int(row[2] or 0))
    return quarantine, None if row[3] is None else int(row[3])


def _accountable(operator: str, note: str) -> None:
    if not operator.strip():
        raise DeviceError("an operator name is required (--operator NAME)")
    if not note.strip():
        raise DeviceError("a note saying why is required (--note TEXT): it is kept in the audit")


def quarantine_device(db: sqlite3.Connection, device: str, operator: str, note: str) -> None:
    """Hold a device: nothing it sends is acked or published until it is released."""
    _accountable(operator, note)
    quarantine, _ = _quarantine_of(db, device)
    if quarantine is not None:
        raise DeviceError(
            f"device {device} is already quarantined ({quarantine.reason}: {quarantine.detail})"
        )
    ms = now_ms()
    hold(db, device, OPERATOR_HOLD, note, ms)
    record_action(db, device, "quarantine", operator, note, ms, {"reason": OPERATOR_HOLD})


def release(db: sqlite3.Connection, device: str, operator: str, note: str) -> Quarantine:
    """Clear a device's quarantine; returns what was cleared."""
    _accountable(operator, note)
    quarantine, ahead = _quarantine_of(db, device)
    if quarantine is None:
        raise DeviceError(f"device {device} is not quarantined")
    revoked = db.execute(
        "SELECT reason FROM fleet_registry WHERE device = ? AND state = 'revoked'", (device,)
    ).fetchone()
    if revoked is not None:
        raise DeviceError(
            f"device {device} is revoked by the fleet ({revoked[0]}): only `sealink fleet "
            "devices reinstate` lifts that, on every gateway at once"
        )
    if quarantine.reason == MOVED_BY_FLEET:
        raise DeviceError(
            f"device {device} was moved to another gateway by the fleet ({quarantine.detail}): "
            "only `sealink fleet devices move` brings it back"
        )
    stored, _ = stored_head(db, device)
    if quarantine.reason == AHEAD_OF_LEDGER and ahead is not None and ahead > stored:
        raise DeviceError(
            f"device {device} acknowledged counters {stored + 1}..{ahead} that this ledger "
            "never stored; release cannot clear that: `sealink devices adopt` records the "
            "missing counters as a gap, countersigned, then clears it"
        )
    lift(db, device, clear_ahead=False)
    detail = {
        "reason": quarantine.reason,
        "detail": quarantine.detail,
        "since_ms": quarantine.since_ms,
    }
    record_action(db, device, "release", operator, note, now_ms(), detail)
    return quarantine


def adopt(
    db: sqlite3.Connection,
    device: str,
    operator: str,
    note: str,
    sign: Callable[[bytes], bytes],
    topic: str,
) -> tuple[int, int]:
    """Record counters L+1 .. ahead_acked as lost (signed by `sign`, queued on `topic`), clear
    the quarantine; the seal's next event anchors the chain again. Returns (first, last)."""
    _accountable(operator, note)
    quarantine, ahead = _quarantine_of(db, device)
    if quarantine is None or quarantine.reason != AHEAD_OF_LEDGER:
        state = "not quarantined" if quarantine is None else f"quarantined for {quarantine.reason}"
        raise DeviceError(
            f"device {device} is {state}: adopt is only for a seal ahead of the ledger "
            f"(reason {AHEAD_OF_LEDGER}); use `sealink devices release` for other causes"
        )
    stored, _ = stored_head(db, device)
    if ahead is None or ahead <= stored:
        raise DeviceError(
            f"device {device}: the seal's acknowledged counter ({ahead}) is not beyond the "
            f"ledger's ({stored}): no gap to adopt; `sealink devices release` clears it"
        )
    first, last, ms = stored + 1, ahead, now_ms()
    record_gap(db, device, (first, last), operator, note, sign, topic, None, ms)
    lift(db, device, clear_ahead=True)
    detail = {
        "first": first,
        "last": last,
        "reason": quarantine.reason,
        "detail": quarantine.detail,
    }
    record_action(db, device, "adopt", operator, note, ms, detail)
    return first, last


def record_gap(
    db: sqlite3.Connection,
    device: str,
    counters: tuple[int, int],
    operator: str,
    note: str,
    sign: Callable[[bytes], bytes],
    topic: str,
    head: bytes | None,
    ms: int,
) -> None:
    """Counters first..last as a gap: its statement countersigned by `sign`, a leaf of the
    log, queued on `topic`; `head` the hash the next event must chain to (None: it anchors)."""
    first, last = counters
    cose = sign(gap_payload(device, first, last, ms, operator, note, head))
    db.execute(
        "INSERT INTO gaps (device, first, last, adopted_ms, operator, note, cose, head) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (device, first, last, ms, operator, note, cose, head),
    )
    log.append(db, [(device, "gap", first, last, gap_leaf(device, first, last, cose))])
    db.execute(
        "INSERT INTO outbox (topic, payload, device, counter, created_ms) VALUES (?, ?, ?, ?, ?)",
        (topic, cose, device, None, ms),
    )


def operator_actions(db: sqlite3.Connection, after_id: int) -> list[OperatorAction]:
    rows = db.execute(
        "SELECT id, device, action, operator, note, ms, detail FROM operator_actions "
        "WHERE id > ? ORDER BY id",
        (after_id,),
    ).fetchall()
    return [
        OperatorAction(
            r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else json.loads(r[6])
        )
        for r in rows
    ]


def gaps(db: sqlite3.Connection, device: str | None = None) -> list[Gap]:
    rows = db.execute(
        "SELECT device, first, last, adopted_ms, operator, note, cose, head FROM gaps "
        "WHERE (? IS NULL OR device = ?) ORDER BY device, first",
        (device, device),
    ).fetchall()
    return [
        Gap(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), None if r[7] is None else bytes(r[7]))
        for r in rows
    ]


def apply_device_update(db: sqlite3.Connection, update: DeviceUpdate, ms: int) -> None:
    """What the gateway learnt about a device, in its group commit (see DeviceUpdate)."""
    if (
        update.quarantine is not None
        and update.quarantine[0] == AHEAD_OF_LEDGER
        and update.ahead_acked is not None
        and update.ahead_acked <= stored_head(db, update.device)[0]
    ):
        # Judged against the link's view of L; the ledger has covered the seal's claim since
        # (a fleet placement committed meanwhile, SPEC §11.6): there is nothing to hold.
        update = dataclasses.replace(update, quarantine=None, ahead_acked=None)
    if update.boot_id is not None:
        db.execute(
            "UPDATE devices SET boot_id = MAX(boot_id, ?) WHERE id = ?",
            (update.boot_id, update.device),
        )
    if update.ahead_acked is not None:
        db.execute(
            "UPDATE devices SET ahead_acked = ? WHERE id = ?", (update.ahead_acked, update.device)
        )
    if update.quarantine is not None:
        reason, detail = update.quarantine
        # The first cause stays: a quarantined device keeps its reason until an operator acts.
        if hold(db, update.device, reason, detail, ms):
            note = f"{reason}: {detail}"
            detail_ = {"reason": reason, "detail": detail}
            record_action(db, update.device, "quarantine", "gateway", note, ms, detail_)
