"""What the link state machine asks its I/O shell to do: plain records, no behaviour.

The machine (`machine.LinkMachine`) decides; the session (`session.Session`) and the service
(`service.Gateway`) carry these out: send bytes, countersign and store, quarantine, alarm,
publish status, look a stored event up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Action",
    "Alarm",
    "CommandDone",
    "CompareStored",
    "Displace",
    "Hangup",
    "Reject",
    "Send",
    "SessionOpen",
    "Status",
    "Store",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the link (one or more whole frames)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Store:
    """An EVENT passed every check: countersign it and commit it; the ACK follows the commit."""

    device: str
    counter: int
    payload: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """A rejected input. Always counted (ledger `rejections`); `row` says whether its bytes go
    to the quarantine table, `alarm` whether an alarm is raised (both rate-limited per link and
    reason, so a garbage flood costs counters, not rows)."""

    reason: str
    detail: str
    device: str | None
    data: bytes | None
    row: bool
    alarm: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Alarm:
    """A gateway alarm about a device or this link that is not a rejected input."""

    device: str | None
    reason: str
    detail: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    """Publish the device's retained status (SPEC §11.2)."""

    device: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionOpen:
    """A handshake was confirmed by the device's first session message: the session is live."""

    device: str
    boot_id: int
    next_counter: int
    acked: int
    firmware: str


@dataclass(frozen=True, slots=True)
class Displace:
    """The device's session moved here from another link: that link's session is over."""

    device: str
    port: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close this link: the peer on it is not the device its port is for (SPEC §6); the port
    opens a new link."""

    detail: str


@dataclass(frozen=True, slots=True)
class CompareStored:
    """Fetch stored event `counter` of `device` and hand it to `LinkMachine.stored_bytes`."""

    device: str
    counter: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CommandDone:
    """A queued command got its RESULT (state "done" or "failed"), or cannot be sent at all
    ("invalid")."""

    command_id: int
    state: str
    code: int | None


Action = (
    Send
    | Store
    | Reject
    | Alarm
    | Status
    | SessionOpen
    | Displace
    | Hangup
    | CompareStored
    | CommandDone
)
