"""The command queue's rules (SPEC §5.7): permit ids increase per device and fit the wire."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from sealink.commands import permit_id_fits
from sealink.errors import CommandError, DeviceError
from sealink.ledger.records import now_ms

__all__ = ["highest_permit", "next_permit_id", "queue_command"]


def queue_command(db: sqlite3.Connection, device: str, kind: str, body: dict[str, Any]) -> int:
    """Insert an already validated command (inside the caller's write transaction, so two
    operators cannot both pass the permit check with one id)."""
    if db.execute("SELECT 1 FROM devices WHERE id = ?", (device,)).fetchone() is None:
        raise DeviceError(f"device {device} is not registered (sealink devices add)")
    if kind == "permit":
        highest = highest_permit(db, device)
        if body["permit"] <= highest:
            raise CommandError(
                f"device {device}: permit id {body['permit']} is not above {highest}, the "
                "highest already queued (permit ids only increase per device, SPEC §5.7)"
            )
    ms = now_ms()
    cur = db.execute(
        "INSERT INTO commands (device, kind, body, created_ms, updated_ms) VALUES (?, ?, ?, ?, ?)",
        (device, kind, json.dumps(body, sort_keys=True), ms, ms),
    )
    return int(cur.lastrowid or 0)


def next_permit_id(db: sqlite3.Connection, device: str) -> int:
    highest = highest_permit(db, device)
    if not permit_id_fits(highest + 1):
        raise CommandError(
            f"device {device}: no permit id left above {highest} (the largest the wire carries)"
        )
    return highest + 1


def highest_permit(db: sqlite3.Connection, device: str) -> int:
    """The highest permit id queued for `device`, 0 if none. A v1 ledger may hold ids the wire
    cannot carry: they never reached the device, so they do not count."""
    highest = 0
    for (body,) in db.execute(
        "SELECT body FROM commands WHERE device = ? AND kind = 'permit'", (device,)
    ):
        permit = json.loads(body).get("permit")
        if isinstance(permit, int) and permit > highest and permit_id_fits(permit):
            highest = permit
    return highest
