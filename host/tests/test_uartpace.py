"""The UART pacing relay (sealink_sim.uartpace): its schedule on a given clock, then real ptys.

Timing is never asserted against a fixed figure: each bound is the line rate's ideal for the
bytes sent, measured in the same test, with room for a slice of the relay and the scheduler.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator

import pytest
from sealink_sim.uartpace import D2H, H2D, LinePacer, UartRelay

_SLOW_BAUD = 9600
_DEADLINE_S = 30.0


def test_the_pacer_lets_out_a_byte_per_ten_bit_times() -> None:
    pacer = LinePacer(_SLOW_BAUD)
    byte_s = 10 / _SLOW_BAUD
    pacer.restart(100.0)
    assert pacer.due(100.0) == 0
    assert pacer.next_due_at() == pytest.approx(100.0 + byte_s)
    assert pacer.due(100.0 + 5.5 * byte_s) == 5
    pacer.sent(5)
    assert pacer.due(100.0 + 5.5 * byte_s) == 0
    assert pacer.next_due_at() == pytest.approx(100.0 + 6 * byte_s)


def test_late_wake_ups_do_not_accumulate(seed: int) -> None:
    # Polled at random, often late, instants: every byte leaves when due or later, never
    # earlier, and after the last poll exactly the bytes the line had time for have left.
    rng = random.Random(seed)
    pacer = LinePacer(_SLOW_BAUD)
    byte_s = 10 / _SLOW_BAUD
    start = now = 50.0
    pacer.restart(start)
    sent = 0
    for _ in range(2000):
        now += rng.choice((0.1, 1.0, 3.7, 20.0)) * byte_s
        n = pacer.due(now)
        pacer.sent(n)
        sent += n
        assert sent <= (now - start) / byte_s
    assert sent == int((now - start) / byte_s)


def test_an_idle_line_starts_a_new_stretch_with_the_next_byte() -> None:
    pacer = LinePacer(_SLOW_BAUD)
    byte_s = 10 / _SLOW_BAUD
    pacer.restart(0.0)
    pacer.sent(pacer.due(3 * byte_s))
    pacer.restart(10.0)
    assert pacer.due(10.0) == 0
    assert pacer.due(10.0 + byte_s) == 1


def test_a_restart_never_overlaps_the_bytes_still_on_the_line() -> None:
    pacer = LinePacer(_SLOW_BAUD)
    byte_s = 10 / _SLOW_BAUD
    pacer.restart(0.0)
    pacer.sent(4)  # as if taken early: the fourth is out at 4 byte times
    pacer.restart(byte_s)
    assert pacer.next_due_at() == pytest.approx(5 * byte_s)


def test_the_baud_must_be_positive() -> None:
    with pytest.raises(ValueError, match="baud"):
        LinePacer(0)


def _raw(fd: int) -> int:
    tty.setraw(fd)
    os.set_blocking(fd, False)
    return fd


@contextlib.contextmanager
def _link(baud: int, taps: list[tuple[str, int, float]]) -> Iterator[tuple[int, int, UartRelay]]:
    """(the board's end, the host's end, the relay): the board holds a pty's master, as the
    emulated board does; the relay opens that pty's slave and offers the host a new one."""
    board, board_slave = os.openpty()
    _raw(board)
    _raw(board_slave)
    lock = threading.Lock()

    def tap(direction: str, data: bytes, t: float) -> None:
        with lock:
            taps.append((direction, len(data), t))

    relay = UartRelay(os.ttyname(board_slave), baud, tap=tap).start()
    host = _raw(os.open(relay.host_path, os.O_RDWR | os.O_NOCTTY))
    try:
        yield board, host, relay
    finally:
        relay.close()
        for fd in (board, board_slave, host):
            os.close(fd)
        assert relay.error is None, relay.error


def _exchange(
    pairs: list[tuple[int, bytes, int]],
    deadline_s: float,
    reading: Callable[[], bool] = lambda: True,
) -> list[bytes]:
    """Write each payload into its first fd and read its second (once `reading()` holds),
    until every payload arrived or the deadline passed; what each reader got."""
    got = [bytearray() for _ in pairs]
    left = [memoryview(data) for _, data, _ in pairs]
    deadline = time.monotonic() + deadline_s
    while any(len(g) < len(data) for g, (_, data, _) in zip(got, pairs, strict=True)):
        assert time.monotonic() < deadline, f"got {[len(g) for g in got]} bytes by the deadline"
        read = reading()
        readers = [dst for _, _, dst in pairs] if read else []
        writers = [src for i, (src, _, _) in enumerate(pairs) if left[i]]
        # A short wait: `reading()` may change without either fd moving.
        readable, writable, _ = select.select(readers, writers, [], 0.01)
        for i, (src, _, dst) in enumerate(pairs):
            if src in writable:
                with contextlib.suppress(BlockingIOError):
                    left[i] = left[i][os.write(src, left[i]) :]
            if dst in readable:
                with contextlib.suppress(BlockingIOError):
                    got[i] += os.read(dst, 65536)
    return [bytes(g) for g in got]


def test_a_full_duplex_stream_arrives_whole_at_the_line_rate(seed: int) -> None:
    rng = random.Random(seed)
    size = 2000
    down, up = rng.randbytes(size), rng.randbytes(size)
    byte_s = 10 / _SLOW_BAUD
    ideal_s = size * byte_s
    taps: list[tuple[str, int, float]] = []
    with _link(_SLOW_BAUD, taps) as (board, host, _):
        start = time.monotonic()
        got = _exchange([(board, down, host), (host, up, board)], _DEADLINE_S)
    assert got == [down, up]
    for direction in (D2H, H2D):
        chunks = [(n, t) for d, n, t in taps if d == direction]
        carried = 0
        for n, t in chunks:
            carried += n
            # Never ahead of a line that started no earlier than the first write.
            assert carried <= (t - start) / byte_s + 1e-6, (direction, carried, t - start)
        took_s = chunks[-1][1] - start
        # Both directions at once in about one direction's time: full duplex, not shared.
        assert took_s < 1.5 * ideal_s + 0.5, (direction, took_s, ideal_s)


def test_a_receiver_that_stops_reading_loses_nothing(seed: int) -> None:
    # Far more than the host's pty holds (about 20 KB): the relay must wait for the reader.
    rng = random.Random(seed)
    data = rng.randbytes(200_000)
    taps: list[tuple[str, int, float]] = []
    with _link(4_000_000, taps) as (board, host, relay):
        [got] = _exchange([(board, data, host)], _DEADLINE_S, lambda: relay.stalls[D2H] > 0)
    assert got == data
    assert relay.stalls[D2H] > 0
