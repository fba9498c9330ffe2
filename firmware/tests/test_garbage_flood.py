"""The seal's 0x00 before every frame (SPEC §2) under a garbage flood on the host's side.

A noisy line delivers bursts of non-zero garbage whenever it is idle, between the board's
frames (never inside one: what a frame loses to noise inside it, retransmission recovers,
with or without the leading 0x00); a receiver then holds garbage when the next frame begins.
The leading 0x00 ends that garbage (one malformed frame, dropped) and the real frame decodes
whole; without it the garbage and the frame merge into one malformed frame, every time.
The board is the real firmware on the emulated board; the host is the protocol peer of
firmware/tests/mpy/peer.py behind a relay that injects the garbage (seeded: SEAL_FLOOD_SEED,
printed). The same board bytes with their empty frames removed are what the firmware sent
before it had the leading 0x00: that run is the baseline.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sealproto import messages
from sealproto.errors import DecodeError
from sealproto.framing import FrameDecoder

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))

from peer import Peer

serial = pytest.importorskip("serial")
emulator = pytest.importorskip("sealink_sim.emulator")

SEED = int(os.environ.get("SEAL_FLOOD_SEED", "8080"))
STAMPS = 12
# How long each run floods once its records are through (or, in the baseline, resent twice):
# RTO_MS and its doublings resend unacknowledged events several times meanwhile.
FLOOD_S = 3.0
TIMEOUT_S = 30.0


class Flood:
    """The line from board to host: once `on`, garbage whenever it is between two frames.

    Counts the EVENT frames the board sent (`sent`) and those a host decoder makes of what
    arrives (`decoded`) while flooding.
    """

    def __init__(self, rnd: random.Random, strip_leading_zero: bool) -> None:
        self.on = False
        self._rnd = rnd
        self._strip = strip_leading_zero
        self._between = True  # nothing of a frame relayed since the last frame ended
        self._after_zero = True
        self._board = FrameDecoder()
        self._host = FrameDecoder()
        self.sent = 0
        self.decoded = 0
        self.garbage_bytes = 0

    def relay(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._strip and b == 0 and self._after_zero:
                continue  # an empty frame: the firmware before the leading 0x00 sent none
            if self._between and self.on:
                out += self._burst()
            self._between = False
            out.append(b)
            if b == 0:
                self._between = not self._after_zero
            self._after_zero = b == 0
        if self.on:
            self.sent += _events(self._board.feed(data))
            self.decoded += _events(self._host.feed(bytes(out)))
        return bytes(out)

    def idle(self) -> bytes:
        """Noise on the idle line, between frames only."""
        if not (self.on and self._between):
            return b""
        burst = self._burst()
        self._host.feed(burst)
        return burst

    def _burst(self) -> bytes:
        # 1..32 bytes of 0x01..0xFF: garbage that no 0x00 of its own ends.
        rnd = self._rnd
        burst = bytes(rnd.randrange(1, 256) for _ in range(rnd.randrange(1, 33)))
        self.garbage_bytes += len(burst)
        return burst


def _events(items: list[bytes | DecodeError]) -> int:
    count = 0
    for item in items:
        if isinstance(item, bytes):
            try:
                count += messages.decode(item)[messages.K_TYPE] == messages.EVENT
            except DecodeError:
                continue
    return count


def _run(tmp_path: Path, strip: bool) -> Flood:
    key = os.urandom(32)
    peer = Peer(key, keep=False)
    line = Flood(random.Random(SEED), strip)
    stop = threading.Event()
    errors: list[str] = []
    with emulator.EmulatedBoard(tmp_path, device_id="seal-flood", device_key=key) as board:
        port = serial.serial_for_url(board.uart_path, timeout=0.02)

        def pump() -> None:
            # The host: reads the line through the flood and answers.
            try:
                port.write(peer.sync())
                while not stop.is_set():
                    data = port.read(4096)
                    answer = peer.feed(line.relay(data) if data else line.idle())
                    if answer:
                        port.write(answer)
            except Exception as e:  # reported by the test, not lost in a thread
                errors.append(f"{type(e).__name__}: {e}")

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            _wait(lambda: peer.session_key is not None and bool(peer.session), "a session", board)
            line.on = True
            for _ in range(STAMPS):
                board.stamp()
            board.wait_until(lambda b: b.counter == STAMPS, timeout=TIMEOUT_S)
            if strip:
                _wait(lambda: line.sent >= 2 * STAMPS, "resends", board)
            else:
                _wait(lambda: peer.stored == STAMPS, "every record at the host", board)
            # Both runs flood as long again, so both get as much garbage: a measuring window,
            # not a wait for anything.
            time.sleep(FLOOD_S)
        finally:
            stop.set()
            thread.join(timeout=10)
            port.close()
    assert not errors, errors
    assert [e for e in peer.errors if e[0] not in ("frame", "decode")] == [], peer.errors[:5]
    line.stored = peer.stored  # type: ignore[attr-defined]
    return line


def _wait(condition: Callable[[], bool], what: str, board: Any) -> None:
    # The peer's progress is not a board report: poll it, with a deadline.
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}; device log {board.log_path}")
        time.sleep(0.02)


def test_the_leading_zero_resynchronises_a_receiver_holding_garbage(tmp_path: Path) -> None:
    print(f"garbage flood seed {SEED} (replay: SEAL_FLOOD_SEED={SEED})")
    with_zero = _run(tmp_path / "with", strip=False)
    without = _run(tmp_path / "without", strip=True)
    for name, run in (("with the leading 0x00", with_zero), ("without it", without)):
        print(
            f"garbage before every frame, {name}: {run.decoded} of {run.sent} EVENT frames "
            f"decoded, {run.stored} of {STAMPS} records stored "  # type: ignore[attr-defined]
            f"({run.garbage_bytes} garbage bytes)"
        )
    assert with_zero.stored == STAMPS  # type: ignore[attr-defined]
    assert with_zero.decoded == with_zero.sent > 0
    # The baseline shows that this flood is one the leading 0x00 is needed against.
    assert without.sent >= 2 * STAMPS
    assert without.decoded == 0 and without.stored == 0  # type: ignore[attr-defined]
