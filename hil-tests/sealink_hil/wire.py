"""The port layer: a fault-injecting serial proxy between a board and the host, and its hexdump.

    board port (any pyserial URL) <-> WireProxy <-> a fresh pty offered to the host

The host opens `proxy.link_path`, a symlink to the current pty slave, the way a udev
`/dev/serial/by-id/...` link names a USB adapter: after a `disconnect` the old pty is gone (the
host's reads fail as on an unplugged cable) and the link points at a new pty once the cable is
"plugged back in". Every byte that crosses, and every fault applied to it, is written to the
wire hexdump, so a failure can be read byte by byte.

Faults (all drawn from the caller's seeded `random.Random`):
    drop N       the next N bytes in one direction vanish
    corrupt N    the next N bytes each get one random bit flipped
    duplicate    the next chunk is delivered twice
    delay MS     the next chunk (and so everything behind it) is held MS milliseconds
    stall MS     nothing moves in either direction for MS; bytes queue, none are lost
    disconnect MS  the host side is hung up; bytes in either direction are lost for MS
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import queue
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import serial

__all__ = ["D2H", "FAULT_KINDS", "H2D", "Hexdump", "WireFault", "WireProxy"]

D2H = "D>H"
H2D = "H>D"
FAULT_KINDS = ("drop", "corrupt", "duplicate", "delay", "stall", "disconnect")
_READ_CHUNK = 4096
_BOARD_POLL_S = 0.02


@dataclass
class WireFault:
    """One fault armed on the wire; `amount` is bytes (drop, corrupt) or milliseconds."""

    kind: str
    direction: str = D2H
    amount: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown wire fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.direction not in (D2H, H2D):
            raise ValueError(f"direction must be {D2H!r} or {H2D!r}, not {self.direction!r}")

    @classmethod
    def random(cls, rng: random.Random, kinds: tuple[str, ...] = FAULT_KINDS) -> WireFault:
        kind = rng.choice(kinds)
        direction = rng.choice((D2H, H2D))
        amount = {
            "drop": rng.randint(1, 40),
            "corrupt": rng.randint(1, 4),
            "duplicate": 1,
            "delay": rng.randint(20, 400),
            "stall": rng.randint(100, 1500),
            "disconnect": rng.randint(100, 1000),
        }[kind]
        return cls(kind, direction, amount)


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
            self._file.write(f"{time.monotonic() - self._t0:11.6f} {text}\n")

    def chunk(self, direction: str, data: bytes) -> None:
        stamp = time.monotonic() - self._t0
        with self._lock:
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


class _HostSide:
    """A pty pair whose slave the host opens through a stable symlink."""

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
        """Close both ends: the host's next read fails, as when a USB adapter is unplugged."""
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link_path.unlink()


class WireProxy:
    """Forward bytes between a board port and a host-facing pty, applying seeded faults.

    `board_url` is any pyserial URL (a pty path, /dev/ttyUSB0, socket://, rfc2217://).
    `rng` draws which byte and bit a corruption hits. `applied` lists the faults that struck;
    `error` holds what stopped a forwarding thread, if anything did.
    """

    def __init__(
        self,
        board_url: str,
        link_path: str | os.PathLike[str],
        hexdump: Hexdump,
        *,
        rng: random.Random | None = None,
        baudrate: int = 115200,
    ) -> None:
        self.board_url = board_url
        self.link_path = Path(link_path)
        self.hexdump = hexdump
        self.rng = rng or random.Random(0)
        self.baudrate = baudrate
        self.applied: list[WireFault] = []
        self._armed: dict[str, collections.deque[WireFault]] = {
            D2H: collections.deque(),
            H2D: collections.deque(),
        }
        self._out: dict[str, collections.deque[tuple[float, bytes]]] = {
            D2H: collections.deque(),
            H2D: collections.deque(),
        }
        self._from_board: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stall_until = 0.0
        self._down_until = 0.0
        self._hang_up_pending = False
        self._host: _HostSide | None = None
        self._port: Any = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> WireProxy:
        self._port = serial.serial_for_url(
            self.board_url, baudrate=self.baudrate, timeout=_BOARD_POLL_S
        )
        self._host = _HostSide(self.link_path)
        self.hexdump.note(f"proxy up: board {self.board_url} <-> host {self.link_path}")
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._guard(self._read_board), name="wire-board", daemon=True),
            threading.Thread(target=self._guard(self._pump), name="wire-pump", daemon=True),
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
        self.hexdump.note("proxy closed")

    def __enter__(self) -> WireProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults ----------------------------------------------------------------------------

    def inject(self, fault: WireFault) -> None:
        """Arm a fault: byte faults hit the next bytes in their direction, timed ones start now."""
        with self._lock:
            self._arm(fault)
        self._wake()

    @property
    def connected(self) -> bool:
        return time.monotonic() >= self._down_until

    def _arm(self, fault: WireFault) -> None:
        """Caller holds the lock."""
        if fault.kind == "stall":
            self._stall_until = max(self._stall_until, time.monotonic() + fault.amount / 1000)
            self._applied(fault, f"nothing moves for {fault.amount} ms")
        elif fault.kind == "disconnect":
            # The pump thread owns the pty fds: it hangs up at its next turn.
            self._down_until = time.monotonic() + fault.amount / 1000
            self._hang_up_pending = True
            lost = sum(len(chunk) for out in self._out.values() for _, chunk in out)
            for out in self._out.values():
                out.clear()
            self._applied(fault, f"host side hung up for {fault.amount} ms, {lost} bytes lost")
        else:
            self._armed[fault.direction].append(fault)

    def _applied(self, fault: WireFault, detail: str) -> None:
        """Dump every effect; count and report a fault once, however many chunks it spans."""
        self.hexdump.note(f"{fault.direction} FAULT {fault.kind} {detail}")
        if any(seen is fault for seen in self.applied):
            return
        self.applied.append(fault)

    def _transform(self, direction: str, data: bytes) -> tuple[float, list[bytes]]:
        """Apply armed faults to a chunk just read: (release time, chunks to deliver in order)."""
        armed = self._armed[direction]
        chunks = [data]
        delay_ms = 0
        while armed and chunks[-1]:
            fault = armed[0]
            chunk = chunks[-1]
            if fault.kind == "drop":
                cut = min(fault.amount, len(chunk))
                self._applied(fault, f"dropped {chunk[:cut].hex(' ')}")
                chunks[-1] = chunk[cut:]
                fault.amount -= cut
            elif fault.kind == "corrupt":
                index = self.rng.randrange(len(chunk))
                flipped = chunk[index] ^ (1 << self.rng.randrange(8))
                self._applied(fault, f"byte {index}: {chunk[index]:02x} -> {flipped:02x}")
                chunks[-1] = chunk[:index] + bytes([flipped]) + chunk[index + 1 :]
                fault.amount -= 1
            elif fault.kind == "duplicate":
                self._applied(fault, f"{len(chunk)} bytes delivered twice")
                chunks.append(chunk)
                fault.amount = 0
            else:  # delay
                self._applied(fault, f"{len(chunk)} bytes held {fault.amount} ms")
                delay_ms += fault.amount
                fault.amount = 0
            if fault.amount <= 0:
                armed.popleft()
            if fault.kind in ("duplicate", "delay"):
                break
        return time.monotonic() + delay_ms / 1000, [chunk for chunk in chunks if chunk]

    # -- forwarding ------------------------------------------------------------------------

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                self.error = exc
                self.hexdump.note(f"proxy thread failed: {exc!r}")
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
                self.hexdump.note(f"{D2H} board port error: {exc}")
                time.sleep(_BOARD_POLL_S)
                continue
            if data:
                self._from_board.put(data)
                self._wake()

    def _enqueue(self, direction: str, data: bytes) -> None:
        self.hexdump.chunk(direction, data)
        with self._lock:
            if not self.connected:
                self.hexdump.note(f"{direction} lost {len(data)} bytes: cable disconnected")
                return
            release, chunks = self._transform(direction, data)
            if not self.connected:  # the chunk itself pulled the cable
                return
            out = self._out[direction]
            # FIFO: a delayed chunk holds back everything behind it, as on a real line.
            if out:
                release = max(release, out[-1][0])
            out.extend((release, chunk) for chunk in chunks)

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._hang_up_pending and self._host is not None:
                    self._host.hang_up()
                    self._host = None
                self._hang_up_pending = False
                if self._host is None and time.monotonic() >= self._down_until:
                    self._host = _HostSide(self.link_path)
                    self.hexdump.note(f"host side plugged back in at {self.link_path}")
                master = self._host.master if self._host is not None else None
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
                    if exc.errno != errno.EIO:  # EIO: the host closed its end, keep waiting
                        raise
                    continue
                if data:
                    self._enqueue(H2D, data)

    def _flush(self, master: int | None) -> float:
        """Write what is due; return how long the pump may sleep before something else is."""
        now = time.monotonic()
        with self._lock:
            if now < self._stall_until:
                return self._stall_until - now
            next_due = 0.05
            for direction in (D2H, H2D):
                out = self._out[direction]
                while out and out[0][0] <= now:
                    release, chunk = out[0]
                    written = self._write(direction, master, chunk)
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
