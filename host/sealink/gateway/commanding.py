"""Host → device commands of one session (SPEC §5.7), sans-IO.

One command in flight at a time, TIME first in every session, then ENROL when the gateway
holds a newer enrolment certificate for the seal than the one its HELLO names (SPEC §5.11),
or as soon as it keeps one during the session (the fleet's, §11.6). A
command without RESULT after `COMMAND_TIMEOUT_MS` is sent again with a new seq,
`COMMAND_ATTEMPTS` times in all; then the device is reported unreachable and nothing more is
sent in this session (the command stays pending in the ledger for the next one). A RESULT
answers the command if its `command_seq` is any of the seqs that command was sent with.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sealproto import messages
from sealproto.messages import K_TYPE
from sealproto.timers import COMMAND_ATTEMPTS, COMMAND_TIMEOUT_MS

from sealink.commands import command_message
from sealink.errors import CommandError
from sealink.gateway.actions import Action, Alarm, CommandDone
from sealink.ledger import Command

__all__ = ["CommandQueue", "Outgoing"]

# The session's own commands: not ledger rows.
_TIME_ID = 0
_ENROL_ID = -1


@dataclass
class Outgoing:
    command_id: int
    kind: str
    message: dict[int, Any]
    seqs: set[int] = field(default_factory=set)
    attempts: int = 0
    deadline_ms: int = 0


class CommandQueue:
    def __init__(self) -> None:
        self._queue: deque[Outgoing] = deque()
        self._ids: set[int] = set()
        self.inflight: Outgoing | None = None
        self.unreachable = False
        self.invalid: list[int] = []

    def start(self, host_time_ms: int, enrol: dict[int, Any] | None = None) -> None:
        """A new session: forget what was in flight, set the device clock first, then hand
        over the enrolment certificate `enrol` (an ENROL message) if there is one."""
        self._queue.clear()
        self._ids.clear()
        self.inflight = None
        self.unreachable = False
        time_msg = {K_TYPE: messages.TIME, messages.TI_TIME: host_time_ms}
        self._queue.append(Outgoing(_TIME_ID, "time", time_msg))
        if enrol is not None:
            self.enrol(enrol)

    def enrol(self, enrol: dict[int, Any]) -> None:
        """Hand over the enrolment certificate `enrol` (an ENROL message) after what is
        queued: at the session's start, or a newer one kept during it."""
        self._queue.append(Outgoing(_ENROL_ID, "enrol", enrol))

    def offer(self, commands: list[Command], *, hold_permits: bool) -> None:
        """Pending ledger commands, oldest first; ones already queued or in flight are kept.
        `hold_permits`: a quarantined seal gets revocations but no new permits."""
        for cmd in commands:
            if cmd.id in self._ids or (hold_permits and cmd.kind == "permit"):
                continue
            try:
                msg = command_message(cmd.kind, cmd.body)
            except CommandError:
                # A row written by another tool or version that no device could accept: it is
                # marked invalid instead of stopping every later command of the device.
                self.invalid.append(cmd.id)
                self._ids.add(cmd.id)
                continue
            self._ids.add(cmd.id)
            self._queue.append(Outgoing(cmd.id, cmd.kind, msg))

    def due(self, now_ms: int) -> Outgoing | None:
        """The command to send (again) now, if any; the caller sends it and calls `sent`."""
        if self.unreachable:
            return None
        out = self.inflight
        if out is not None:
            if now_ms < out.deadline_ms:
                return None
            if out.attempts >= COMMAND_ATTEMPTS:
                self.unreachable = True
                return None
            return out
        if not self._queue:
            return None
        self.inflight = self._queue.popleft()
        return self.inflight

    def sent(self, out: Outgoing, seq: int, now_ms: int) -> None:
        out.seqs.add(seq)
        out.attempts += 1
        out.deadline_ms = now_ms + COMMAND_TIMEOUT_MS

    def result(self, command_seq: int) -> Outgoing | None:
        """The command a RESULT answers (then the next one may go), or None."""
        out = self.inflight
        if out is None or command_seq not in out.seqs:
            return None
        # The id stays known for the session: the ledger still lists the command as pending
        # until the commit of its result, and a poll meanwhile must not send it again.
        self.inflight = None
        return out

    def busy(self, out: Outgoing, now_ms: int) -> None:
        """The device answered BUSY: try again after the timeout (it counts as an attempt)."""
        self.inflight = out
        out.deadline_ms = now_ms + COMMAND_TIMEOUT_MS

    def deadline_ms(self) -> int | None:
        if self.unreachable:
            return None
        if self.inflight is not None:
            return self.inflight.deadline_ms
        return 0 if self._queue else None

    # driven by the link machine: `send` signs and sends a session message, returns its seq

    def pump(
        self, device: str | None, now_ms: int, send: Callable[[dict[int, Any]], int]
    ) -> list[Action]:
        """Send what is due; after the last attempt, report the device unreachable."""
        actions: list[Action] = [CommandDone(i, "invalid", None) for i in self.invalid]
        self.invalid.clear()
        out = self.due(now_ms)
        if out is not None:
            self.sent(out, send(dict(out.message)), now_ms)
        elif self.unreachable and self.inflight is not None:
            stuck, self.inflight = self.inflight, None
            detail = f"no RESULT for {stuck.kind} after {stuck.attempts} attempts"
            actions.append(Alarm(device, "device_unreachable", detail))
        return actions

    def on_result(
        self,
        device: str | None,
        result: dict[int, Any],
        now_ms: int,
        send: Callable[[dict[int, Any]], int],
    ) -> list[Action]:
        out = self.result(result[messages.RE_SEQ])
        if out is None:
            return []
        code = result[messages.RE_CODE]
        actions: list[Action] = []
        if code == messages.R_BUSY:
            self.busy(out, now_ms)
        elif out.command_id == _ENROL_ID:
            if code != messages.R_OK:
                detail = f"the seal refused its enrolment certificate: result {code}"
                actions.append(Alarm(device, "enrolment_refused", detail))
        elif out.command_id != _TIME_ID:
            state = "done" if code == messages.R_OK else "failed"
            actions.append(CommandDone(out.command_id, state, code))
        return actions + self.pump(device, now_ms, send)
