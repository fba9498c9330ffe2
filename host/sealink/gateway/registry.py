"""The device registry: the one owner of what the gateway knows about each registered seal.

Sessions (through their link machines) and the group commit ask the registry to change a
device's state; nobody else writes it. What must survive a restart (highest boot_id seen,
quarantine) is queued here as `DeviceUpdate`s that the next group commit writes.

Per device: `stored` (L, SPEC §5: every counter 1..L is durably stored) with the hash and
boot_id of event L; `accepted` (events checked and handed to the commit, ≥ stored) with the
same; the highest boot_id seen (B); the sticky quarantine; which link holds its session.
A registered device whose link key the key store lacks has no state: its HELLOs are refused
as an unknown device's, and `missing_key` says where its key was looked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sealproto.timers import WINDOW

from sealink.crypto.enrolment import Certificate
from sealink.crypto.sealkey import SealKey
from sealink.errors import KeyFileError
from sealink.ledger import DeviceRecord, DeviceUpdate, Quarantine

__all__ = ["DeviceRegistry", "DeviceState"]

# Retransmissions arrive within a window or two of the newest event: their bytes are compared
# from memory; anything older is looked up in the ledger.
_RECENT = 4 * WINDOW


@dataclass
class DeviceState:
    device: str
    key: bytes
    stored: int
    # None: L ends a gap an operator adopted, so the next event's prev cannot be checked
    stored_hash: bytes | None
    stored_boot: int
    boot_id: int
    quarantine: Quarantine | None
    ahead_acked: int | None
    accepted: int = 0
    accepted_hash: bytes | None = None
    accepted_boot: int = 0
    # counter -> (payload, boot_id) of the newest accepted events
    recent: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    owner: str | None = None
    # The seal chip's public key (SPEC §4.1); None: never registered, every EVENT is refused.
    seal_key: SealKey | None = None
    # The enrolment certificate this gateway hands the seal (SPEC §5.11); None: it holds none.
    enrolment: Certificate | None = None

    def __post_init__(self) -> None:
        self.accepted = self.stored
        self.accepted_hash = self.stored_hash
        self.accepted_boot = self.stored_boot


class DeviceRegistry:
    def __init__(self) -> None:
        self._devices: dict[str, DeviceState] = {}
        self._updates: list[DeviceUpdate] = []
        self._keyless: dict[str, Path] = {}

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device: str) -> DeviceState | None:
        return self._devices.get(device)

    def devices(self) -> Iterable[DeviceState]:
        return self._devices.values()

    def load(self, record: DeviceRecord, key: bytes, stored_boot: int) -> DeviceState:
        """Take the ledger's view of a device, with its link key from the key store (at start,
        or after an operator acted on it). An existing state is updated in place (link
        machines hold it); events accepted but not yet committed stay accepted."""
        self._keyless.pop(record.device, None)
        state = self._devices.get(record.device)
        if state is None:
            state = self._devices[record.device] = DeviceState(
                record.device,
                key,
                record.stored,
                record.stored_hash,
                stored_boot,
                record.boot_id,
                record.quarantine,
                record.ahead_acked,
                seal_key=_seal_key(record.seal_key),
                enrolment=_certificate(record),
            )
            return state
        state.key = key
        state.enrolment = _certificate(record)
        if record.seal_key != (state.seal_key.public if state.seal_key else None):
            state.seal_key = _seal_key(record.seal_key)
        state.boot_id = max(state.boot_id, record.boot_id)
        state.quarantine = record.quarantine
        state.ahead_acked = record.ahead_acked
        if record.stored >= state.stored:
            state.stored, state.stored_hash, state.stored_boot = (
                record.stored,
                record.stored_hash,
                stored_boot,
            )
        if state.accepted < state.stored:
            state.accepted = state.stored
            state.accepted_hash = state.stored_hash
            state.accepted_boot = state.stored_boot
        return state

    def forget(self, device: str) -> None:
        self._devices.pop(device, None)
        self._keyless.pop(device, None)

    def lacks_key(self, device: str, key_store: Path) -> None:
        """The device is registered but `key_store` holds no link key for it: no session can
        start, and one open on it gets no more acknowledgements (its state is gone)."""
        self._devices.pop(device, None)
        self._keyless[device] = key_store

    def missing_key(self, device: str) -> Path | None:
        """Where the link key of this registered device was looked for and not found."""
        return self._keyless.get(device)

    @property
    def any_keyless(self) -> bool:
        return bool(self._keyless)

    # asked by a link machine ------------------------------------------------------------------

    def accept(
        self, state: DeviceState, counter: int, payload: bytes, digest: bytes, boot: int
    ) -> None:
        state.accepted = counter
        state.accepted_hash = digest
        state.accepted_boot = boot
        state.recent[counter] = (payload, boot)
        # Accepted counters only rise, so the dict's first key is the oldest.
        if len(state.recent) > _RECENT:
            del state.recent[next(iter(state.recent))]

    def claim(self, state: DeviceState, port: str) -> str | None:
        """The session of `state` is now on `port`; returns the port it moved from, if any."""
        previous, state.owner = state.owner, port
        return previous if previous != port else None

    def disown(self, state: DeviceState, port: str) -> None:
        if state.owner == port:
            state.owner = None

    def see_boot(self, state: DeviceState, boot_id: int) -> None:
        if boot_id > state.boot_id:
            state.boot_id = boot_id
            self._updates.append(DeviceUpdate(state.device, boot_id=boot_id))

    def quarantine(
        self, state: DeviceState, reason: str, detail: str, now_ms: int, ahead_acked: int | None
    ) -> bool:
        """Quarantine the device (sticky: the first cause stays). True if it was not already."""
        if ahead_acked is not None and ahead_acked > (state.ahead_acked or 0):
            state.ahead_acked = ahead_acked
        if state.quarantine is not None:
            if ahead_acked is not None:
                self._updates.append(DeviceUpdate(state.device, ahead_acked=ahead_acked))
            return False
        state.quarantine = Quarantine(reason, detail, now_ms)
        self._updates.append(
            DeviceUpdate(state.device, quarantine=(reason, detail), ahead_acked=ahead_acked)
        )
        return True

    # asked by the group commit ----------------------------------------------------------------

    def stored(self, device: str, counter: int, digest: bytes) -> None:
        state = self._devices.get(device)
        if state is not None and counter > state.stored:
            recent = state.recent.get(counter)
            state.stored, state.stored_hash = counter, digest
            if recent is not None:
                state.stored_boot = recent[1]

    def take_updates(self) -> list[DeviceUpdate]:
        updates, self._updates = self._updates, []
        return updates


def _seal_key(public: bytes | None) -> SealKey | None:
    return None if public is None else SealKey(public)


def _certificate(record: DeviceRecord) -> Certificate | None:
    # Checked when `sealink devices enrol` stored it: a row that no longer parses was written
    # by another tool; the seal gets no ENROL from it, and the log says why.
    if record.enrolment is None:
        return None
    try:
        return Certificate.from_json(record.enrolment, f"device {record.device}: enrolment")
    except KeyFileError as exc:
        logging.getLogger("sealink.gateway").error("%s; run `sealink devices enrol` again", exc)
        return None
