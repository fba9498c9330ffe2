"""Rate limits that keep one noisy link from costing storage, log volume or other links' time.

Every rejected input is counted; only some keep their bytes (a quarantine row) or raise an
alarm. Per link and reason, both follow a token bucket: alarms `ALARM_BURST` at once, then one
per `ALARM_INTERVAL_MS`, each carrying the number suppressed since the last one; rows
`ROW_BURST` at once, then one per `ROW_INTERVAL_MS`. A 115,200-baud line of garbage thus keeps
a few frames a minute as samples instead of every frame (`make bench`: the `line_cost` lines).
Approval refusals (SPEC §11.5) follow two buckets, per claimed approver name and in total;
those beyond them are counted into one summary a minute (`RefusalLimiter`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sealproto import messages
from sealproto.errors import DecodeError
from sealproto.timers import SYNC_INTERVAL_MAX_MS, SYNC_INTERVAL_MS

from sealink.gateway.actions import Action, CommandDone, Reject, SessionOpen, Status, Store
from sealink.gateway.registry import DeviceRegistry, DeviceState

__all__ = [
    "ALARM_BURST",
    "ALARM_INTERVAL_MS",
    "NOISY_BYTES_PER_S",
    "REFUSAL_SUMMARY_MS",
    "ROW_BURST",
    "ROW_INTERVAL_MS",
    "SUMMARY_NAMES",
    "FloodMeter",
    "RateGate",
    "RefusalLimiter",
    "RejectLimiter",
    "Rejector",
    "SeenOnce",
    "SyncPacer",
]

ALARM_BURST = 3
ALARM_INTERVAL_MS = 60_000
ROW_BURST = 8
ROW_INTERVAL_MS = 60_000


@dataclass(slots=True)
class RateGate:
    """A token bucket: `allow(now)` is true at most `burst` times at once, then once per
    `interval_ms`."""

    burst: int
    interval_ms: int
    tokens: float = -1.0
    last_ms: int = 0

    def allow(self, now_ms: int) -> bool:
        if self.ready(now_ms):
            self.tokens -= 1.0
            return True
        return False

    def ready(self, now_ms: int) -> bool:
        """Would `allow(now)` be true? (Takes nothing.)"""
        self._refill(now_ms)
        return self.tokens >= 1.0

    def full(self, now_ms: int) -> bool:
        """Refilled to `burst`: no different from a new gate."""
        self._refill(now_ms)
        return self.tokens >= self.burst

    def _refill(self, now_ms: int) -> None:
        if self.tokens < 0:
            self.tokens, self.last_ms = float(self.burst), now_ms
        elapsed = now_ms - self.last_ms
        if elapsed > 0:
            self.tokens = min(float(self.burst), self.tokens + elapsed / self.interval_ms)
            self.last_ms = now_ms


@dataclass(slots=True)
class _ReasonLimit:
    rows: RateGate
    alarms: RateGate
    suppressed: int = 0


@dataclass
class RejectLimiter:
    """Per reason on one link: may this rejection keep a row, and raise an alarm?"""

    row_burst: int = ROW_BURST
    row_interval_ms: int = ROW_INTERVAL_MS
    alarm_burst: int = ALARM_BURST
    alarm_interval_ms: int = ALARM_INTERVAL_MS
    _limits: dict[str, _ReasonLimit] = field(default_factory=dict)

    def decide(self, reason: str, now_ms: int) -> tuple[bool, dict[str, Any] | None]:
        """(keep a row, alarm fields or None). The alarm fields carry `suppressed_since_last`."""
        limit = self._limits.get(reason)
        if limit is None:
            limit = self._limits[reason] = _ReasonLimit(
                RateGate(self.row_burst, self.row_interval_ms),
                RateGate(self.alarm_burst, self.alarm_interval_ms),
            )
        row = limit.rows.allow(now_ms)
        if limit.alarms.allow(now_ms):
            alarm = {"suppressed_since_last": limit.suppressed}
            limit.suppressed = 0
            return row, alarm
        limit.suppressed += 1
        return row, None


# Approval refusals (SPEC §11.5): the summary of those beyond the limits is closed this long
# after the first it counts.
REFUSAL_SUMMARY_MS = 60_000
# Claimed names a summary lists with their counts; the others' refusals are one number, so a
# flood under random names does not make the summary as big as the flood.
SUMMARY_NAMES = 16
_NAME_CHARS = 64
_MINUTE_MS = 60_000


@dataclass
class _Summary:
    first_ms: int
    last_ms: int
    count: int = 0
    recorded: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    names: dict[str, int] = field(default_factory=dict)
    other_names: int = 0

    def add(self, reason: str, name: str, recorded: bool, now_ms: int) -> None:
        self.count += 1
        self.recorded += recorded
        self.last_ms = max(self.last_ms, now_ms)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if name in self.names or len(self.names) < SUMMARY_NAMES:
            self.names[name] = self.names.get(name, 0) + 1
        else:
            self.other_names += 1

    def fields(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "recorded": self.recorded,
            "by_reason": self.by_reason,
            "names": self.names,
            "other_names": self.other_names,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


class RefusalLimiter:
    """Approval refusals against two token buckets, one per claimed approver name and one for
    the gateway, each `per_min` at once and refilled at that rate: `admit` says whether a
    refusal is handled one by one; one that is not is `fold`ed into the open summary, which
    `take` closes `REFUSAL_SUMMARY_MS` after its first refusal. Sans-IO: the caller's clock."""

    def __init__(self, per_name_per_min: int, per_min: int) -> None:
        self._per_name = per_name_per_min
        self._total = RateGate(per_min, _MINUTE_MS // per_min)
        self._names: dict[str, RateGate] = {}
        # A name's gate is made only with a gateway token in hand, and is full again a minute
        # after its last token: at most 2 * per_min gates are not full at any time (a burst
        # and a minute's refill of the gateway's), and full ones are dropped at this size.
        self._names_max = 4 * per_min
        self._summary: _Summary | None = None

    def __len__(self) -> int:
        """Names that hold a bucket."""
        return len(self._names)

    def admit(self, name: str | None, now_ms: int) -> bool:
        """Take a token of `name` (None: the request claims none) and one of the gateway's,
        or neither."""
        if not self._total.ready(now_ms):
            return False
        key = _name_key(name)
        gate = self._names.get(key)
        if gate is None:
            if len(self._names) >= self._names_max:
                self._names = {k: g for k, g in self._names.items() if not g.full(now_ms)}
            gate = self._names[key] = RateGate(self._per_name, _MINUTE_MS // self._per_name)
        if not gate.allow(now_ms):
            return False
        self._total.allow(now_ms)
        return True

    def fold(self, reason: str, name: str | None, recorded: bool, now_ms: int) -> None:
        """Count a refusal `admit` turned away; `recorded`: its row was kept all the same."""
        if self._summary is None:
            self._summary = _Summary(now_ms, now_ms)
        self._summary.add(reason, _name_key(name), recorded, now_ms)

    @property
    def due_ms(self) -> int | None:
        """When the open summary is to be closed; None: none is open."""
        return None if self._summary is None else self._summary.first_ms + REFUSAL_SUMMARY_MS

    def take(self, now_ms: int, *, closing: bool = False) -> dict[str, Any] | None:
        """The open summary's fields if it is due (or, `closing`, at all); it is closed."""
        due = self.due_ms
        if self._summary is None or not (closing or (due is not None and now_ms >= due)):
            return None
        summary, self._summary = self._summary, None
        return summary.fields()


def _name_key(name: str | None) -> str:
    return "-" if name is None else name[:_NAME_CHARS]


# Rejections that happen in normal operation now and then (a WELCOME lost, so the seal said
# HELLO again): counted and sampled, never alarmed; a flood of them still makes a link noisy.
_UNALARMED = frozenset({"unconfirmed_hello"})


class Rejector:
    """Turns a rejection into its action: counted always, row and alarm as the limits allow."""

    def __init__(self, registry: DeviceRegistry, limiter: RejectLimiter) -> None:
        self._registry = registry
        self._limiter = limiter

    def reject(
        self, reason: str, detail: str, device: str | None, data: bytes | None, now_ms: int
    ) -> Reject:
        row, alarm = self._limiter.decide(reason, now_ms)
        if reason in _UNALARMED:
            alarm = None
        if reason == "unknown_device" and data is not None and self._registry.any_keyless:
            detail = self._why_unknown(detail, data)
        return Reject(reason, detail, device, data if row else None, row, alarm)

    def _why_unknown(self, detail: str, hello: bytes) -> str:
        """An unknown device may be a registered one whose link key the key store lacks: the
        operator needs to know which file to fix, not that the seal is a stranger."""
        try:
            device = messages.decode(hello).get(messages.HE_DEVICE)
        except DecodeError:
            return detail
        store = self._registry.missing_key(device) if isinstance(device, str) else None
        if store is None:
            return detail
        return f"{detail}: registered, but the key store {store} holds no link key for it"

    def quarantine(
        self,
        state: DeviceState,
        reason: str,
        detail: str,
        data: bytes | None,
        now_ms: int,
        ahead_acked: int | None,
    ) -> Reject:
        if self._registry.quarantine(state, reason, detail, now_ms, ahead_acked):
            # The transition always keeps its bytes and always alarms.
            return Reject(reason, detail, state.device, data, True, {"quarantine": True})
        return self.reject(reason, detail, state.device, data, now_ms)


class SyncPacer:
    """When a link without a session sends SYNC (SPEC §5.1, §5.9): at link open; periodically
    with the interval doubling up to `SYNC_INTERVAL_MAX_MS` while nobody answers, so that a
    seal nobody registered is not asked for a HELLO (one alarm each) every second for ever;
    and in answer to a frame that needs a session, at most once per `SYNC_INTERVAL_MS`."""

    def __init__(self) -> None:
        self.due_ms = 0
        self._last_ms: int | None = None
        self._interval_ms = SYNC_INTERVAL_MS

    def sent(self, now_ms: int) -> None:
        self._last_ms = now_ms
        self.due_ms = max(self.due_ms, now_ms + self._interval_ms)

    def periodic(self, now_ms: int) -> bool:
        """Is the periodic SYNC due? If so, it counts as sent and the interval doubles."""
        if now_ms < self.due_ms:
            return False
        self.sent(now_ms)
        self._interval_ms = min(2 * self._interval_ms, SYNC_INTERVAL_MAX_MS)
        self.due_ms = now_ms + self._interval_ms
        return True

    def may_answer(self, now_ms: int) -> bool:
        return self._last_ms is None or now_ms - self._last_ms >= SYNC_INTERVAL_MS

    def session_opened(self) -> None:
        self._interval_ms = SYNC_INTERVAL_MS


class SeenOnce:
    """Remembers up to `limit` keys (then starts over): evidence kept once, not per resend."""

    def __init__(self, limit: int) -> None:
        self._seen: set[object] = set()
        self._limit = limit

    def first(self, key: object) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(key)
        return True

    def clear(self) -> None:
        self._seen.clear()


# A real UART at 115,200 baud delivers 11,520 bytes/s; a link producing only rejected input is
# read at twice that, so a flood (a pty, a socket, a stuck transmitter) costs the gateway what
# a noisy serial line would, and the other links' events keep their latency
# (`make bench`: the `flood` lines).
NOISY_BYTES_PER_S = 23_040
# Rejected frames in a row, with nothing accepted between them, that make a link noisy.
NOISY_AFTER_REJECTS = 32


class FloodMeter:
    """Is a link producing nothing but rejected input? Any accepted progress (an event stored,
    a session opened or confirmed, a STATUS, a RESULT) clears it at once."""

    def __init__(self) -> None:
        self._rejects = 0

    def observe(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Reject):
                self._rejects += 1
            elif isinstance(action, Store | SessionOpen | Status | CommandDone):
                self._rejects = 0

    @property
    def noisy(self) -> bool:
        return self._rejects >= NOISY_AFTER_REJECTS

    def throttle_s(self, nbytes: int) -> float:
        """How long to wait before reading more of this link."""
        return nbytes / NOISY_BYTES_PER_S if self.noisy else 0.0
