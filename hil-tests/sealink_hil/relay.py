"""The pty relay: moves bytes between a board port and a pty the gateway opens, nothing else.

    board port (any pyserial URL) <-> PtyRelay <-> a fresh pty offered to the gateway

What happens to the bytes on the way is the fault engine's decision (sealink_hil.linkfaults):
the relay hands it every chunk and delivers what it answers, when it answers. The gateway
opens `host_url`, a symlink to the current pty slave, the way a udev `/dev/serial/by-id/...`
link names a USB adapter: after a `disconnect` the old pty is gone (the gateway's reads fail as
on an unplugged cable) and the link points at a new pty once the cable is "plugged back in".
Every chunk goes to the hexdump as its sender wrote it, and to the decoded wire log twice: as
sent (`tx`) and as delivered (`rx`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import queue
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

import serial

from .linkfaults import D2H, DIRECTIONS, FAULT_KINDS, H2D, Effect, LinkFaults, WireFault
from .wirelog import RX, Hexdump, WireLog

__all__ = ["PtyRelay"]

_READ_CHUNK = 4096
_BOARD_POLL_S = 0.02
_IDLE_S = 0.05


class _HostSide:
    """A pty pair whose slave the gateway opens through a stable symlink."""

    def __init__(self, link_path: Path) -> None:
        self.link_path = link_path
        self.master, self._slave = os.openpty()
        # Raw before anyone writes: a cooked pty would echo the board's bytes back to it.
        tty.setraw(self._slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        tmp = link_path.with_name(link_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(self._slave))
        os.replace(tmp, link_path)

    def hang_up(self) -> None:
        """Close both ends: the gateway's next read fails, as when a USB adapter is unplugged."""
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()


class PtyRelay:
    """The Port of a board on a serial link (sealink_hil.port): relay, fault engine, taps.

    `board_url` is any pyserial URL (a pty path, /dev/ttyUSB0, socket://, rfc2217://).
    `error` holds what stopped a relay thread, if anything did.
    """

    kind = "serial"
    fault_kinds: tuple[str, ...] = FAULT_KINDS

    def __init__(
        self,
        board_url: str,
        link_path: str | os.PathLike[str],
        engine: LinkFaults,
        hexdump: Hexdump,
        wire: WireLog,
        *,
        baudrate: int = 115200,
    ) -> None:
        self.board_url = board_url
        self.link_path = Path(link_path)
        self.engine = engine
        self.hexdump = hexdump
        self.wire = wire
        self.baudrate = baudrate
        self._out: dict[str, collections.deque[tuple[float, bytes]]] = {
            D2H: collections.deque(),
            H2D: collections.deque(),
        }
        self._from_board: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._host: _HostSide | None = None
        self._port: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    @property
    def host_url(self) -> str:
        """What the gateway opens: a stable path to whichever pty is plugged in."""
        return str(self.link_path)

    @property
    def applied(self) -> list[WireFault]:
        return self.engine.applied

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PtyRelay:
        self._port = serial.serial_for_url(
            self.board_url, baudrate=self.baudrate, timeout=_BOARD_POLL_S
        )
        self._host = _HostSide(self.link_path)
        self._note(f"relay up: board {self.board_url} <-> host {self.link_path}")
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._guard(self._read_board), name="relay-board", daemon=True),
            threading.Thread(target=self._guard(self._pump), name="relay-pump", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        if self._host is not None:
            self._host.hang_up()
            self._host = None
        if self._port is not None:
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._note("relay closed")

    def __enter__(self) -> PtyRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------

    def inject(self, fault: WireFault) -> None:
        """Arm a fault in the engine: byte faults hit the next bytes, timed ones start now."""
        with self._lock:
            for effect in self.engine.arm(fault, time.monotonic()):
                self._effect(effect)
        self._wake()

    def release(self, direction: str) -> int:
        """Deliver now what a delay holds in `direction`; the number of bytes let go."""
        with self._lock:
            now = time.monotonic()
            out = self._out[direction]
            held = sum(len(chunk) for release, chunk in out if release > now)
            self._out[direction] = collections.deque((min(r, now), c) for r, c in out)
        self._note(f"{direction} released {held} held bytes")
        self._wake()
        return held

    @property
    def connected(self) -> bool:
        with self._lock:
            return self.engine.connected(time.monotonic())

    # -- the taps --------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        self.hexdump.note(text)
        self.wire.note(text)

    def _effect(self, effect: Effect) -> None:
        self.hexdump.note(str(effect))
        self.wire.effect(effect)

    # -- moving bytes ----------------------------------------------------------------------

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                self.error = exc
                self._note(f"relay thread failed: {exc!r}")
                raise

        return run

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _read_board(self) -> None:
        port = self._port
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                if self._stop.is_set():
                    return
                self._note(f"{D2H} board port error: {exc}")
                time.sleep(_BOARD_POLL_S)  # a bench port that went away: retry at the poll rate
                continue
            if data:
                self._from_board.put(data)
                self._wake()

    def _enqueue(self, direction: str, data: bytes) -> None:
        now = time.monotonic()
        self.hexdump.chunk(direction, data)
        self.wire.tx(direction, data, now)
        with self._lock:
            verdict = self.engine.on_chunk(direction, data, now)
            for effect in verdict.effects:
                self._effect(effect)
            if verdict.lost or not self.engine.connected(now):
                return
            out = self._out[direction]
            # FIFO: a delayed chunk holds back everything behind it, as on a real line.
            release = max(verdict.release_at, out[-1][0]) if out else verdict.release_at
            out.extend((release, chunk) for chunk in verdict.chunks)

    def _plug(self) -> int | None:
        """Hang up or plug back in the host side as the engine says; the master fd, if any."""
        with self._lock:
            now = time.monotonic()
            if self.engine.take_hang_up():
                lost = sum(len(chunk) for out in self._out.values() for _, chunk in out)
                for out in self._out.values():
                    out.clear()
                if self._host is not None:
                    self._host.hang_up()
                    self._host = None
                self._note(f"host side unplugged, {lost} queued bytes lost")
            if self._host is None and self.engine.connected(now):
                self._host = _HostSide(self.link_path)
                # The gateway's reader starts afresh on the new pty; so does the rx decoder.
                self.wire.reset(D2H, RX)
                self._note(f"host side plugged back in at {self.link_path}")
            return self._host.master if self._host is not None else None

    def _pump(self) -> None:
        while not self._stop.is_set():
            master = self._plug()
            timeout = self._flush(master)
            readable = [self._wake_r] + ([master] if master is not None else [])
            ready, _, _ = select.select(readable, [], [], timeout)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 1024)
            while True:
                try:
                    self._enqueue(D2H, self._from_board.get_nowait())
                except queue.Empty:
                    break
            if master is not None and master in ready:
                try:
                    data = os.read(master, _READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO: the gateway closed its end, keep waiting
                        raise
                    continue
                if data:
                    self._enqueue(H2D, data)

    def _flush(self, master: int | None) -> float:
        """Write what is due; return how long the pump may sleep before something else is."""
        now = time.monotonic()
        with self._lock:
            stall = self.engine.stall_left(now)
            if stall > 0:
                return stall
            next_due = _IDLE_S
            for direction in DIRECTIONS:
                out = self._out[direction]
                while out and out[0][0] <= now:
                    release, chunk = out[0]
                    written = self._write(direction, master, chunk)
                    if written:
                        self.wire.rx(direction, chunk[:written], now)
                    if written < len(chunk):
                        out[0] = (release, chunk[written:])
                        next_due = min(next_due, 0.005)
                        break
                    out.popleft()
                if out and out[0][0] > now:
                    next_due = min(next_due, out[0][0] - now)
            return next_due

    def _write(self, direction: str, master: int | None, chunk: bytes) -> int:
        if direction == H2D:
            self._port.write(chunk)
            return len(chunk)
        if master is None:
            return 0
        try:
            return os.write(master, chunk)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno == errno.EIO:
                return 0
            raise
