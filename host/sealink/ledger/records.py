"""What the ledger stores and returns: plain frozen records, and the group-commit `Batch`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GENESIS",
    "Batch",
    "Command",
    "DeviceRecord",
    "DeviceUpdate",
    "EventRow",
    "Gap",
    "OperatorAction",
    "OutboxRow",
    "Quarantine",
    "QuarantineRow",
    "Rejection",
    "id_runs",
    "now_ms",
]

# The `prev` of a device's first record (SPEC §4.1); also the anchor of an empty ledger.
GENESIS = bytes(32)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def id_runs(ids: list[int]) -> list[tuple[int, int]]:
    """The ids as (first, last) runs of consecutive integers: each run holds exactly ids."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


@dataclass(frozen=True, slots=True)
class EventRow:
    device: str
    counter: int
    event: bytes
    hash: bytes
    cose: bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    device: str | None
    port: str
    reason: str
    detail: str
    data: bytes | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    device: str | None
    counter: int | None


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    device: str
    kind: str
    body: dict[str, Any]
    state: str
    result: int | None


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Why a device is quarantined (SPEC §5.8): the first cause, kept until an operator acts."""

    reason: str
    detail: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """The host's durable state of one device (SPEC §5.1).

    `stored` is L: the highest counter the ledger accounts for, an event or the end of an
    operator-adopted gap. `stored_hash` is the record hash of event L (GENESIS when L = 0), the
    hash the fleet vouched for when L ends the gap of a seal it moved here (SPEC §11.6), or
    None when L ends an operator's gap: the next event's `prev` cannot be checked, it anchors
    the chain. `boot_id` is B, the highest boot_id seen. `ahead_acked` is the acked counter a seal
    claimed beyond the ledger (the upper end of the gap `adopt` would record). `seal_key` is
    the seal chip's public key, X || Y (SPEC §4.1), None if it was never registered. The link
    key is not here: it lives in the key store (crypto/keystore.py), never in the ledger.
    `enrolment` is the enrolment certificate (JSON) this gateway hands the seal (SPEC §5.11)."""

    device: str
    stored: int
    stored_hash: bytes | None
    boot_id: int
    quarantine: Quarantine | None
    ahead_acked: int | None
    seal_key: bytes | None = None
    enrolment: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """A change to a device's row, applied by `Ledger.commit` with the rest of its batch:
    boot_id only ever rises; a quarantine (reason, detail) is kept only if none is set (the
    first cause stays); ahead_acked replaces the stored claim."""

    device: str
    boot_id: int | None = None
    quarantine: tuple[str, str] | None = None
    ahead_acked: int | None = None


@dataclass(frozen=True, slots=True)
class OperatorAction:
    """One row of the audit trail: who quarantined, released or adopted which device, why."""

    id: int
    device: str
    action: str
    operator: str
    note: str
    ms: int
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Gap:
    """Counters first..last that an operator declared lost, or that the fleet holds of a seal
    it moved here (`head`: record `last`'s hash), with the countersigned evidence."""

    device: str
    first: int
    last: int
    adopted_ms: int
    operator: str
    note: str
    cose: bytes
    head: bytes | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """How many inputs of one reason a port produced (for a device, or none authenticated)."""

    port: str
    device: str | None
    reason: str
    count: int
    first_ms: int
    last_ms: int


@dataclass
class Batch:
    """One group commit. Outbox entries are (topic, payload, device, counter); rejections are
    (port, device or None, reason, how many)."""

    events: list[EventRow] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    outbox: list[tuple[str, bytes, str | None, int | None]] = field(default_factory=list)
    published: list[int] = field(default_factory=list)
    command_states: list[tuple[int, str, int | None]] = field(default_factory=list)
    devices: list[DeviceUpdate] = field(default_factory=list)
    rejections: list[tuple[str, str | None, str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.events)
            + len(self.quarantine)
            + len(self.outbox)
            + len(self.published)
            + len(self.command_states)
            + len(self.devices)
            + len(self.rejections)
        )
