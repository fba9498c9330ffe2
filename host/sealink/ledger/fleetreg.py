"""The fleet registry as this gateway applied it (SPEC §11.6): per seal, the seq of the last
registry message taken (a floor: an older one put back on the broker is a rollback, after a
restart too) and the state it said.

`revoked` quarantines the seal with reason REVOKED_BY_FLEET unless it is quarantined already
(a quarantine is sticky: the gateway's own cause stays first); `active` clears only a
REVOKED_BY_FLEET quarantine. A seal registered after the fleet revoked it (`registered`)
starts quarantined. Each is an operator action on the audit trail (operator "fleet"),
so the running service's watch and `sealink devices audit` see them like any other.
"""

from __future__ import annotations

import sqlite3

from sealink.ledger.operator import REVOKED_BY_FLEET, record_action
from sealink.ledger.records import now_ms

__all__ = ["FLEET", "REVOKED_BY_FLEET", "apply_state", "fleet_state", "floor", "registered"]

FLEET = "fleet"  # the operator name of what the registry did


def floor(db: sqlite3.Connection, device: str) -> tuple[int, bytes] | None:
    """(seq, payload) of the last registry message applied for `device`; None: none yet."""
    row = db.execute(
        "SELECT seq, payload FROM fleet_registry WHERE device = ?", (device,)
    ).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def fleet_state(db: sqlite3.Connection, device: str) -> tuple[str, str] | None:
    """(state, reason) the fleet last said of `device`; None: it said nothing."""
    row = db.execute(
        "SELECT state, reason FROM fleet_registry WHERE device = ?", (device,)
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def apply_state(
    db: sqlite3.Connection, device: str, seq: int, state: str, reason: str, payload: bytes
) -> str:
    """Take a verified registry message above the floor (the caller checked it); returns what
    it did to the seal: "quarantined", "released", or "unchanged"."""
    ms = now_ms()
    db.execute(
        "INSERT INTO fleet_registry (device, seq, state, reason, time_ms, payload) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET seq = excluded.seq, "
        "state = excluded.state, reason = excluded.reason, time_ms = excluded.time_ms, "
        "payload = excluded.payload",
        (device, seq, state, reason, ms, payload),
    )
    return _apply(db, device, seq, state, reason, ms)


def registered(db: sqlite3.Connection, device: str) -> str:
    """A seal registered here after the fleet revoked it (it moved from another gateway)
    starts quarantined, as if the revocation had come after its registration."""
    row = db.execute(
        "SELECT seq, state, reason FROM fleet_registry WHERE device = ?", (device,)
    ).fetchone()
    if row is None or row[1] != "revoked":
        return "unchanged"
    return _apply(db, device, int(row[0]), "revoked", str(row[2]), now_ms())


def _apply(db: sqlite3.Connection, device: str, seq: int, state: str, reason: str, ms: int) -> str:
    row = db.execute("SELECT quarantine_reason FROM devices WHERE id = ?", (device,)).fetchone()
    if row is None:
        return "unchanged"  # not registered here: the floor is kept for when it is
    detail = {"reason": REVOKED_BY_FLEET, "seq": seq}
    if state == "revoked" and row[0] is None:
        db.execute(
            "UPDATE devices SET quarantine_reason = ?, quarantine_detail = ?, quarantine_ms = ? "
            "WHERE id = ?",
            (REVOKED_BY_FLEET, reason, ms, device),
        )
        record_action(db, device, "quarantine", FLEET, reason, ms, detail)
        return "quarantined"
    if state == "active" and row[0] == REVOKED_BY_FLEET:
        db.execute(
            "UPDATE devices SET quarantine_reason = NULL, quarantine_detail = NULL, "
            "quarantine_ms = NULL WHERE id = ?",
            (device,),
        )
        record_action(db, device, "release", FLEET, reason, ms, detail)
        return "released"
    return "unchanged"
