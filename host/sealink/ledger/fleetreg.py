"""The fleet registry as this gateway applied it (SPEC §11.6): per seal, the seq of the last
registry message taken (a floor: an older one put back on the broker is a rollback, after a
restart too) and the state it said.

`revoked` quarantines the seal with reason REVOKED_BY_FLEET unless it is quarantined already
(a quarantine is sticky: the gateway's own cause stays first); `active` clears only a
REVOKED_BY_FLEET quarantine. A seal registered after the fleet revoked it (`registered`)
starts quarantined. A placement (`place`, the seal moved to a gateway) holds the seal with
MOVED_BY_FLEET on every other gateway, and on the one named records the counters the fleet
holds beyond this ledger as a gap countersigned here, whose head the seal's next event must
chain to. Each is an operator action on the audit trail (operator "fleet"), so the running
service's watch and `sealink devices audit` see them like any other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from sealink.ledger.operator import (
    AHEAD_OF_LEDGER,
    MOVED_BY_FLEET,
    REVOKED_BY_FLEET,
    hold,
    lift,
    record_action,
    record_gap,
    stored_head,
)
from sealink.ledger.records import now_ms

__all__ = [
    "FLEET",
    "MOVED_BY_FLEET",
    "REVOKED_BY_FLEET",
    "PlacementSteps",
    "Standing",
    "apply_state",
    "fleet_state",
    "floor",
    "place",
    "placement_steps",
    "registered",
]

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


@dataclass(frozen=True)
class Standing:
    """Where the fleet placed a seal: on `gateway`, its records 1..counter held by the fleet,
    record `counter`'s hash `head` (the §11.6 placement, as the ledger takes it)."""

    gateway: str
    counter: int
    head: bytes
    seq: int


@dataclass(frozen=True)
class PlacementSteps:
    """What taking a placement does to a seal on this gateway (SPEC §11.6)."""

    hold: bool  # placed on another gateway, the seal not quarantined yet: held MOVED_BY_FLEET
    anchor: bool  # placed here beyond the ledger's L: the fleet's counters recorded as a gap
    lift: bool  # placed here: the move's hold, or an ahead-of-ledger one it covers, lifted

    @property
    def left(self) -> bool:
        """Whether anything is left to do: none, taking the placement changes nothing."""
        return self.hold or self.anchor or self.lift


def placement_steps(
    standing: Standing, here: str, reason: str | None, ahead: int | None, stored: int
) -> PlacementSteps:
    """What `place` does to a seal quarantined for `reason` (None: not) that claims acks up to
    `ahead` (None: no claim), its ledger at L = `stored`."""
    if standing.gateway != here:
        # A quarantine is sticky: its first cause stays.
        return PlacementSteps(hold=reason is None, anchor=False, lift=False)
    covered = reason == AHEAD_OF_LEDGER and (ahead is None or ahead <= standing.counter)
    return PlacementSteps(
        hold=False, anchor=standing.counter > stored, lift=reason == MOVED_BY_FLEET or covered
    )


def place(
    db: sqlite3.Connection,
    device: str,
    standing: Standing,
    here: str,
    sign: Callable[[bytes], bytes],
    topic: str,
) -> str:
    """Take a verified placement (SPEC §11.6) in the caller's transaction; returns what it did:
    "unregistered" (kept for when the seal is), "moved_away" (placed on another gateway: held
    here), "anchored" (counters L+1..counter recorded as the fleet's gap, chained to `head`),
    "released" (a move back, or a stand the fleet now covers, lifted the hold), "unchanged".
    Idempotent: taken again, it does nothing more."""
    row = db.execute(
        "SELECT quarantine_reason, ahead_acked FROM devices WHERE id = ?", (device,)
    ).fetchone()
    if row is None:
        return "unregistered"
    ms = now_ms()
    reason, ahead = row[0], None if row[1] is None else int(row[1])
    seq, to, counter = standing.seq, standing.gateway, standing.counter
    stored, _ = stored_head(db, device)
    steps = placement_steps(standing, here, reason, ahead, stored)
    if steps.hold:
        note = f"moved to {to} by the fleet (seq {seq})"
        hold(db, device, MOVED_BY_FLEET, note, ms)
        detail = {"reason": MOVED_BY_FLEET, "seq": seq, "to": to}
        record_action(db, device, "quarantine", FLEET, note, ms, detail)
        return "moved_away"
    done = "unchanged"
    if steps.anchor:
        note = f"moved here by the fleet (seq {seq}): records 1..{counter} held by the fleet"
        record_gap(db, device, (stored + 1, counter), FLEET, note, sign, topic, standing.head, ms)
        detail = {"first": stored + 1, "last": counter, "seq": seq}
        record_action(db, device, "adopt", FLEET, note, ms, detail)
        done = "anchored"
    if steps.lift:
        lift(db, device, clear_ahead=True)
        note = f"placed here by the fleet (seq {seq})"
        record_action(db, device, "release", FLEET, note, ms, {"reason": reason, "seq": seq})
        done = "anchored" if done == "anchored" else "released"
    return done


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
        hold(db, device, REVOKED_BY_FLEET, reason, ms)
        record_action(db, device, "quarantine", FLEET, reason, ms, detail)
        return "quarantined"
    if state == "active" and row[0] == REVOKED_BY_FLEET:
        lift(db, device, clear_ahead=False)
        record_action(db, device, "release", FLEET, reason, ms, detail)
        return "released"
    return "unchanged"
