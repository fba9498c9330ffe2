"""What crossed the link, twice over: a hexdump of the bytes and a log of the decoded frames.

    wire.hexdump  `hexdump -C`-like rows of every chunk as its sender wrote it, and each fault
    wire.log      every frame, decoded with sealproto (framing.FrameDecoder + messages.decode):
                  `tx` = as the sender wrote it, `rx` = as the receiver got it, after the faults

A wire.log line reads

       3.120456 D>H tx EVENT counter=7 boot=1 kind=IMPRESSION time_s=1718000000 ... (121 B)
       3.120470 D>H FAULT corrupt byte 40: 3a -> 32
       3.120502 D>H rx ERROR CRC: crc mismatch (121 B)

so a failure can be read as a conversation: which EVENT went out, which fault struck it, what
the gateway got, which ACK came back. `WireLog` also keeps the frames in memory, and what they
say about the board (its newest counter, its last HELLO and STATUS) for tests to wait on.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sealproto import messages as m
from sealproto.errors import DecodeError, reason_name
from sealproto.framing import FrameDecoder

from .linkfaults import D2H, DIRECTIONS, H2D, Effect

__all__ = ["RX", "TX", "Frame", "Hexdump", "WireLog"]

TX = "tx"
RX = "rx"

# Which fields of each message a reader needs, by the names SPEC §4 gives them.
_FIELDS: dict[int, tuple[tuple[str, int], ...]] = {
    m.HELLO: (
        ("device", m.HE_DEVICE),
        ("version", m.HE_VERSION),
        ("boot", m.HE_BOOT),
        ("next", m.HE_NEXT),
        ("firmware", m.HE_FIRMWARE),
        ("enrolment", m.HE_ENROLMENT),
    ),
    m.WELCOME: (("acked", m.WE_ACKED), ("time_ms", m.WE_TIME), ("stored", m.WE_STORED)),
    m.SYNC: (),
    m.EVENT: (
        ("counter", m.EV_COUNTER),
        ("boot", m.EV_BOOT),
        ("kind", m.EV_KIND),
        ("time_s", m.EV_TIME),
        ("uptime_ms", m.EV_UPTIME),
        ("permit", m.EV_PERMIT),
        ("operator", m.EV_OPERATOR),
        ("prev", m.EV_PREV),
        ("cause", m.EV_CAUSE),
    ),
    m.ACK: (("counter", m.AK_COUNTER), ("stored", m.AK_STORED)),
    m.ALARM: (("code", m.AL_CODE), ("time_s", m.AL_TIME), ("detail", m.AL_DETAIL)),
    m.STATUS: (
        ("next", m.ST_NEXT),
        ("backlog", m.ST_BACKLOG),
        ("free", m.ST_FREE),
        ("flags", m.ST_FLAGS),
        ("permit_left", m.ST_PERMIT_LEFT),
        ("battery_mv", m.ST_BATTERY),
        ("unrecorded", m.ST_UNRECORDED),
    ),
    m.PERMIT: (
        ("permit", m.PE_ID),
        ("count", m.PE_COUNT),
        ("not_before_s", m.PE_NOT_BEFORE),
        ("not_after_s", m.PE_NOT_AFTER),
        ("operator", m.PE_OPERATOR),
    ),
    m.REVOKE: (("permit", m.RV_PERMIT),),
    m.TIME: (("time_ms", m.TI_TIME),),
    m.RESULT: (("command_seq", m.RE_SEQ), ("code", m.RE_CODE)),
    m.ENROL: (("serial", m.EN_SERIAL), ("device", m.EN_DEVICE), ("gateway_key", m.EN_GATEWAY)),
}


def _named(prefix: str, exclude: tuple[str, ...] = ()) -> dict[int, str]:
    """{value: NAME} of sealproto's constants `<prefix>NAME`."""
    return {
        value: name[len(prefix) :]
        for name, value in vars(m).items()
        if name.startswith(prefix) and name not in exclude and isinstance(value, int)
    }


# The one field an `rx` line repeats: enough to pair it with its `tx` line.
_KEY_FIELD = {m.HELLO: "next", m.EVENT: "counter", m.ACK: "counter", m.WELCOME: "acked"}
# Names of the wire's numbers, taken from sealproto's constants (SPEC §4.1, §7.2, §7.3), so a
# code added there is named here too.
_KINDS = _named("KIND_")
# A REBOOT record's cause bits (SPEC §4.1 key 10); the bits from CA_MISSING_SHIFT on count.
_CAUSE_BITS = {
    m.CA_TORN: "torn",
    m.CA_ROLLBACK: "rollback",
    m.CA_NEW_JOURNAL: "new_journal",
    m.CA_WATCHDOG: "watchdog",
    m.CA_BROWNOUT: "brownout",
    m.CA_HARD_RESET: "hard_reset",
}
_ALARMS = _named("AL_", exclude=("AL_CODE", "AL_TIME", "AL_DETAIL"))
_RESULTS = _named("R_")
_NAMED = {
    (m.EVENT, "kind"): _KINDS,
    (m.ALARM, "code"): _ALARMS,
    (m.RESULT, "code"): _RESULTS,
}


def _show(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        if not value:
            return "-"  # an ACK's or WELCOME's stored signature left out
        return bytes(value[:4]).hex() + ("…" if len(value) > 4 else "")
    return str(value)


@dataclass(frozen=True)
class Frame:
    """One frame seen on the link: decoded (`type`, `fields`, `msg`) or not (`error`)."""

    at: float  # time.monotonic() when it was seen
    t: float  # seconds since the log started
    wall: float  # time.time() when it was seen (to compare with clocks the frame carries)
    direction: str
    stage: str  # TX: as its sender wrote it; RX: as its receiver got it
    size: int  # payload bytes (the CRC and COBS overhead not counted)
    type: str  # "EVENT", "ACK", ... or "ERROR"
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # "CRC: crc mismatch", "FIELD: ...": why it did not decode
    msg: dict[int, Any] | None = None

    def get(self, name: str) -> Any:
        return self.fields.get(name)

    def line(self) -> str:
        head = f"{self.t:11.6f} {self.direction} {self.stage} {self.type}"
        if self.error is not None:
            return f"{head} {self.error}" + (f" ({self.size} B)" if self.size else "")
        shown = list(self.fields.items())
        if self.stage == RX:
            # The tx line above has the details; rx repeats only what pairs it with that line.
            key = _KEY_FIELD.get(self.msg[m.K_TYPE] if self.msg else -1, "seq")
            shown = [(name, value) for name, value in shown if name == key]
        text = " ".join(f"{name}={_show(value)}" for name, value in shown)
        return f"{head} {text} ({self.size} B)" if text else f"{head} ({self.size} B)"


def decode_payload(payload: bytes) -> tuple[str, dict[str, Any], str | None, dict[int, Any] | None]:
    """(type name, key fields by name, error, message) of one frame's payload."""
    try:
        msg = m.decode(payload)
    except DecodeError as exc:
        return "ERROR", {}, _reason(exc), None
    kind = msg[m.K_TYPE]
    fields: dict[str, Any] = {}
    for name, key in _FIELDS.get(kind, ()):
        if key in msg:
            value = msg[key]
            named = _NAMED.get((kind, name))
            fields[name] = named.get(value, value) if named else value
    if kind == m.EVENT and m.EV_CAUSE in msg:
        fields["cause"] = _cause(msg[m.EV_KIND], msg[m.EV_CAUSE])
    if m.K_SEQ in msg:
        fields["seq"] = msg[m.K_SEQ]
    return m.type_name(kind), fields, None, msg


def _cause(kind: int, cause: int) -> str:
    """REBOOT: its cause bits and missing count (`rollback+watchdog/3`); ALARM: the alarm's name;
    UNRECORDED: how many presses."""
    if kind == m.KIND_REBOOT:
        names = "+".join(name for bit, name in _CAUSE_BITS.items() if cause & bit)
        missing = cause >> m.CA_MISSING_SHIFT
        return f"{names}/{missing}" if missing else names
    if kind == m.KIND_ALARM:
        return _ALARMS.get(cause, str(cause))
    return str(cause)


def _reason(exc: DecodeError) -> str:
    return f"{reason_name(exc.reason)}: {exc.detail}" if exc.detail else reason_name(exc.reason)


class Hexdump:
    """`hexdump -C`-like rows, one block per chunk, prefixed with time and direction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[str] = self.path.open("a", buffering=1)
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self.bytes = {D2H: 0, H2D: 0}

    def note(self, text: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(f"{time.monotonic() - self._t0:11.6f} {text}\n")

    def chunk(self, direction: str, data: bytes) -> None:
        stamp = time.monotonic() - self._t0
        with self._lock:
            if self._file.closed:
                return
            offset = self.bytes[direction]
            for row in range(0, len(data), 16):
                part = data[row : row + 16]
                hexes = " ".join(f"{b:02x}" for b in part)
                text = "".join(chr(b) if 32 <= b < 127 else "." for b in part)
                self._file.write(
                    f"{stamp:11.6f} {direction} {offset + row:08x}  {hexes:<47}  |{text}|\n"
                )
            self.bytes[direction] = offset + len(data)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class WireLog:
    """The decoded frames of one link, in memory and in `path`; thread-safe, waitable."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[str] = self.path.open("a", buffering=1)
        self._cond = threading.Condition()
        self._t0 = time.monotonic()
        self._decoders = {(d, s): FrameDecoder() for d in DIRECTIONS for s in (TX, RX)}
        self._frames: list[Frame] = []
        self.board_counter: int | None = None
        """The newest counter the board has shown on the link (HELLO/STATUS next - 1, EVENT)."""

    # -- what the relay reports -----------------------------------------------------------

    def tx(self, direction: str, data: bytes, now: float | None = None) -> None:
        """Bytes as their sender wrote them, before any fault."""
        self._feed(direction, TX, data, now)

    def rx(self, direction: str, data: bytes, now: float | None = None) -> None:
        """Bytes as their receiver got them, after the faults."""
        self._feed(direction, RX, data, now)

    def effect(self, effect: Effect, now: float | None = None) -> None:
        self.note(str(effect), now)

    def note(self, text: str, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        with self._cond:
            if not self._file.closed:
                self._file.write(f"{at - self._t0:11.6f} {text}\n")

    def reset(self, direction: str, stage: str) -> None:
        """Forget a partial frame: the receiver's end was re-opened (a new pty after a hang-up)."""
        with self._cond:
            self._decoders[(direction, stage)].reset()

    def close(self) -> None:
        with self._cond:
            self._file.close()

    def _feed(self, direction: str, stage: str, data: bytes, now: float | None) -> None:
        at = time.monotonic() if now is None else now
        with self._cond:
            for item in self._decoders[(direction, stage)].feed(data):
                t, wall = at - self._t0, time.time()
                if isinstance(item, DecodeError):
                    frame = Frame(at, t, wall, direction, stage, 0, "ERROR", {}, _reason(item))
                else:
                    kind, fields, error, msg = decode_payload(item)
                    frame = Frame(
                        at, t, wall, direction, stage, len(item), kind, fields, error, msg
                    )
                self._frames.append(frame)
                if direction == D2H and stage == TX:
                    self._learn(frame)
                if not self._file.closed:
                    self._file.write(frame.line() + "\n")
            self._cond.notify_all()

    def _learn(self, frame: Frame) -> None:
        """What the board's own frames say about its counter (a real board says it nowhere else)."""
        if frame.type in ("HELLO", "STATUS"):
            newest = int(frame.get("next")) - 1
        elif frame.type == "EVENT":
            newest = int(frame.get("counter"))
        else:
            return
        if self.board_counter is None or newest > self.board_counter:
            self.board_counter = newest

    # -- what tests ask -------------------------------------------------------------------

    def mark(self) -> int:
        """Where the log ends now: `frames(since=mark)` is what comes after."""
        with self._cond:
            return len(self._frames)

    def position(self, frame: Frame) -> int:
        """The index of `frame` in the log: `frames(since=position(f))` starts at f."""
        with self._cond:
            for index in range(len(self._frames) - 1, -1, -1):
                if self._frames[index] is frame:
                    return index
        raise ValueError(f"not a frame of this log: {frame.line()}")

    def frames(
        self,
        type: str | None = None,
        direction: str | None = None,
        stage: str | None = None,
        since: int = 0,
    ) -> list[Frame]:
        with self._cond:
            found = self._frames[since:]
        return [
            f
            for f in found
            if (type is None or f.type == type)
            and (direction is None or f.direction == direction)
            and (stage is None or f.stage == stage)
        ]

    def last(self, type: str, direction: str, stage: str = TX, since: int = 0) -> Frame | None:
        found = self.frames(type, direction, stage, since)
        return found[-1] if found else None

    def wait_until(self, predicate: Callable[[WireLog], bool], timeout: float, what: str) -> None:
        """Wait for predicate(log) to hold; TimeoutError names this log's file."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout:g} s waiting for {what}; "
                        f"decoded wire log: {self.path}"
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_for(
        self, type: str, direction: str, stage: str, since: int, timeout: float, what: str = ""
    ) -> Frame:
        """The first frame of `type` after `since`; waits up to `timeout` for it."""
        self.wait_until(
            lambda log: bool(log.frames(type, direction, stage, since)),
            timeout,
            what or f"{direction} {type} ({stage})",
        )
        return self.frames(type, direction, stage, since)[0]
