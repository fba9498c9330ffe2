"""A UART's line rate on a pty link: bytes leave no faster than a shift register sends them.

    board's pty (the path a gateway would open) <-> UartRelay(baud) <-> a fresh pty (host_path)

A pty moves bytes at memory speed. At 8N1 a UART sends a byte per 10 bit times, each direction
on its own wire, so each direction here has its own `LinePacer` and thread (full duplex). The
pacer keeps time on the monotonic clock: byte n of a busy stretch is out at start + n * 10 /
baud, so a late wake-up delivers what fell due meanwhile and the schedule never drifts; a line
that went idle starts a new stretch with the next byte. Due bytes are written a slice at a time
(`slice_s`, 1 ms by default: about 12 bytes at 115,200 baud), which is how a USB-serial adapter
hands a UART's bytes to the host anyway, never ahead of the line.

Nothing is dropped or reordered. A receiver that stops reading fills its pty; the relay then
holds the bytes (as hardware flow control would) and starts a new stretch once it can write.
The relay holds at most `_HOLD` bytes a direction; behind it the board's pty buffers more than
a UART driver's ring does, so a device feels back-pressure later than on a real UART.
Bytes the board wrote before the relay started are discarded: nobody was at the other end.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from types import TracebackType
from typing import Self

__all__ = ["D2H", "H2D", "LinePacer", "UartRelay"]

D2H = "d2h"
H2D = "h2d"
_BITS_PER_BYTE = 10  # 8N1: a start bit, 8 data bits, a stop bit
_HOLD = 4096

# (direction, the bytes, monotonic time just after they were written to the receiving pty)
Tap = Callable[[str, bytes, float], None]


class LinePacer:
    """When the bytes of one direction may leave (sans-IO: the caller brings the clock)."""

    def __init__(self, baud: int) -> None:
        if baud <= 0:
            raise ValueError(f"baud must be positive, not {baud}")
        self.byte_s = _BITS_PER_BYTE / baud
        self._start = 0.0
        self._sent = 0

    def restart(self, now: float) -> None:
        """The line was idle (nothing queued, or a receiver that took nothing): the next byte
        starts shifting now, not before the last one is out."""
        self._start = max(now, self._start + self._sent * self.byte_s)
        self._sent = 0

    def due(self, now: float) -> int:
        """How many more bytes of this stretch have their stop bit out by `now`."""
        return max(0, int((now - self._start) / self.byte_s) - self._sent)

    def sent(self, n: int) -> None:
        self._sent += n

    def next_due_at(self) -> float:
        """When the next byte of this stretch is out."""
        return self._start + (self._sent + 1) * self.byte_s


def _raw(fd: int) -> None:
    # Raw, and reads that return what is there (VMIN=0, VTIME=0) rather than wait for more.
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 0
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    os.set_blocking(fd, False)


class UartRelay:
    """Relays the pty at `board_path` to a new pty at `host_path`, paced to `baud` 8N1.

    `tap(direction, data, t)` is called from the relay's threads with every chunk as it is
    written to its receiver; `carried` counts the bytes so, `stalls` the times a receiver's
    full pty held a direction back. `error` holds what stopped a direction's thread, if
    anything did.
    """

    def __init__(
        self,
        board_path: str,
        baud: int,
        *,
        tap: Tap | None = None,
        slice_s: float = 0.001,
    ) -> None:
        self.board_path = board_path
        self.baud = baud
        self.slice_s = slice_s
        self._tap = tap
        self.carried = {D2H: 0, H2D: 0}
        self.stalls = {D2H: 0, H2D: 0}
        self.error: BaseException | None = None
        self._board = -1
        self._master = self._slave = -1
        self.host_path = ""
        self._stop = threading.Event()
        self._stop_r = self._stop_w = -1
        self._threads: list[threading.Thread] = []

    def start(self) -> Self:
        # Written once, at close, and never read: it stays readable, so every thread sees it.
        self._stop_r, self._stop_w = os.pipe()
        self._board = os.open(self.board_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        _raw(self._board)
        termios.tcflush(self._board, termios.TCIFLUSH)
        # The relay keeps the slave open as well: until the host opens it, the host's bytes
        # wait in the pty, and a host that closes it leaves no hang-up behind for the relay.
        self._master, self._slave = os.openpty()
        _raw(self._slave)
        _raw(self._master)
        self.host_path = os.ttyname(self._slave)
        self._threads = [
            threading.Thread(
                target=self._pump,
                args=(direction, src, dst),
                name=f"uartpace-{direction}",
                daemon=True,
            )
            for direction, src, dst in (
                (D2H, self._board, self._master),
                (H2D, self._master, self._board),
            )
        ]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        for fd in (self._board, self._master, self._slave, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._board = self._master = self._slave = self._stop_r = self._stop_w = -1

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _pump(self, direction: str, src: int, dst: int) -> None:
        try:
            self._carry(direction, src, dst, LinePacer(self.baud))
        except BaseException as exc:
            self.error = exc
            raise

    def _carry(self, direction: str, src: int, dst: int, pacer: LinePacer) -> None:
        queued = bytearray()
        blocked = False  # the receiver's pty took less than was due: wait until it has room
        while not self._stop.is_set():
            now = time.monotonic()
            # Asleep until a byte falls due, at most every slice; until woken when nothing can.
            timeout = (
                None if blocked or not queued else max(pacer.next_due_at() - now, self.slice_s)
            )
            readers = [self._stop_r] + ([src] if len(queued) < _HOLD else [])
            readable, writable, _ = select.select(readers, [dst] if blocked else [], [], timeout)
            if self._stop_r in readable:
                return
            now = time.monotonic()
            if src in readable:
                data = _read(src, _HOLD - len(queued))
                if data and not queued:
                    pacer.restart(now)
                queued += data
            if blocked and dst in writable:
                blocked = False
                pacer.restart(now)
            if blocked or not queued:
                continue
            n = min(len(queued), pacer.due(now))
            if not n:
                continue
            written = _write(dst, queued[:n])
            if written:
                chunk = bytes(queued[:written])
                del queued[:written]
                pacer.sent(written)
                self.carried[direction] += written
                if self._tap is not None:
                    self._tap(direction, chunk, time.monotonic())
            if written < n:
                blocked = True
                self.stalls[direction] += 1


def _read(fd: int, limit: int) -> bytes:
    try:
        return os.read(fd, limit)
    except BlockingIOError:
        return b""
    except OSError as exc:
        # EIO: the other side of that pty is closed for now; a board that reboots keeps its
        # end, so this is a closed line, and the wake-ups on it are the only cost.
        if exc.errno == errno.EIO:
            time.sleep(0.01)
            return b""
        raise


def _write(fd: int, data: bytes | bytearray) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
