"""Fleet approver keys as this gateway applied them (SPEC §11.7): per approver name, the seq
of the last fleet message taken (a floor: an older one put back is a rollback, after a restart
too), and the approvers table of §11.5 changed as the fleet said, each change a row of
`approver_actions` (operator "fleet").

A name means one key here for good, whoever registered it: a fleet message with another key
than the one held for the name is refused (`key_substitution`), and so is one that would make
a revoked approver active again (`revoked_for_good`); a refused message writes nothing.
`active` registers the approver, or adopts the operator's one of the same key (the fleet's
actions from then on); `revoked` revokes it, and registers a revoked row for a name not held,
so that an operator's `sealink approvers add` cannot take the name the fleet revoked.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from sealink.errors import SealinkError
from sealink.ledger.records import now_ms

__all__ = ["FLEET", "FleetApproverRefused", "FleetApproverUpdate", "apply", "fleet_said", "floor"]

FLEET = "fleet"  # the operator name of what the fleet did


@dataclass(frozen=True)
class FleetApproverUpdate:
    """A verified fleet approver message (the caller checked signature, topic and form)."""

    name: str
    seq: int
    state: str
    public_key: bytes
    actions: tuple[str, ...]
    reason: str
    payload: bytes


class FleetApproverRefused(SealinkError):
    """What the ledger refuses of a fleet approver message: `reason` a §11.7 refusal."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def floor(db: sqlite3.Connection, name: str) -> tuple[int, bytes] | None:
    """(seq, payload) of the last fleet message applied for approver `name`; None: none yet."""
    row = db.execute("SELECT seq, payload FROM fleet_approvers WHERE name = ?", (name,)).fetchone()
    return None if row is None else (int(row[0]), bytes(row[1]))


def fleet_said(db: sqlite3.Connection, name: str) -> tuple[str, int] | None:
    """(state, seq) the fleet last said of approver `name`; None: it said nothing."""
    row = db.execute("SELECT state, seq FROM fleet_approvers WHERE name = ?", (name,)).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def apply(db: sqlite3.Connection, update: FleetApproverUpdate) -> str:
    """Take a message above the floor in the caller's transaction; returns what it did:
    "added", "adopted", "revoked" or "unchanged". FleetApproverRefused: nothing written."""
    held = db.execute(
        "SELECT public_key, revoked_ms FROM approvers WHERE name = ?", (update.name,)
    ).fetchone()
    if held is not None and bytes(held[0]) != update.public_key:
        raise FleetApproverRefused(
            "key_substitution",
            f"the fleet's key for approver {update.name} is {update.public_key.hex()[:16]}..., "
            f"this gateway holds {bytes(held[0]).hex()[:16]}...",
        )
    revoked = held is not None and held[1] is not None
    if update.state == "active" and revoked:
        raise FleetApproverRefused(
            "revoked_for_good", f"approver {update.name} is revoked here: a name is not reused"
        )
    ms = now_ms()
    db.execute(
        "INSERT INTO fleet_approvers (name, seq, state, time_ms, payload) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, state = excluded.state, "
        "time_ms = excluded.time_ms, payload = excluded.payload",
        (update.name, update.seq, update.state, ms, update.payload),
    )
    if update.state == "revoked":
        done = "unchanged" if revoked else "revoked"
        if held is None:
            db.execute(
                "INSERT INTO approvers (name, public_key, actions, added_ms, revoked_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (update.name, update.public_key, ",".join(update.actions), ms, ms),
            )
        elif not revoked:
            db.execute("UPDATE approvers SET revoked_ms = ? WHERE name = ?", (ms, update.name))
    elif held is None:
        db.execute(
            "INSERT INTO approvers (name, public_key, actions, added_ms) VALUES (?, ?, ?, ?)",
            (update.name, update.public_key, ",".join(update.actions), ms),
        )
        done = "added"
    else:
        db.execute(
            "UPDATE approvers SET actions = ? WHERE name = ?",
            (",".join(update.actions), update.name),
        )
        done = "adopted"
    if done != "unchanged":
        detail = {"seq": update.seq, "state": update.state, "actions": list(update.actions)}
        db.execute(
            "INSERT INTO approver_actions (approver, action, operator, note, ms, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (update.name, done, FLEET, update.reason, ms, json.dumps(detail)),
        )
    return done
