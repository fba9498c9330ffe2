"""The port layer on its own: the fault proxy between two plain ptys, no board and no host.

A pty pair stands in for the board's UART here (the emulated board is also a pty; this test
only needs bytes to come out of one), so every fault's effect on the bytes can be checked exactly.
"""

from __future__ import annotations

import os
import random
import select
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from sealink_hil.wire import D2H, H2D, Hexdump, WireFault, WireProxy


class _FakeBoard:
    """The board end of a pty: the proxy opens `path` like it opens a board's UART."""

    def __init__(self) -> None:
        self.fd, self._slave = os.openpty()
        tty.setraw(self.fd)
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._slave)


def _read_until(port: serial.Serial, size: int, timeout_s: float = 5.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout_s
    while len(data) < size and time.monotonic() < deadline:
        data += port.read(size - len(data))
    return bytes(data)


def _read_fd(fd: int, size: int, timeout_s: float = 5.0) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + timeout_s
    os.set_blocking(fd, False)
    while len(data) < size and time.monotonic() < deadline:
        try:
            data += os.read(fd, size - len(data))
        except BlockingIOError:
            time.sleep(0.005)
    return bytes(data)


@pytest.fixture
def wire(tmp_path: Path) -> Iterator[tuple[_FakeBoard, WireProxy, serial.Serial]]:
    seed = random.SystemRandom().randrange(2**32)
    print(f"wire proxy seed={seed}")
    board = _FakeBoard()
    proxy = WireProxy(
        board.path, tmp_path / "link", Hexdump(tmp_path / "wire.hexdump"), rng=random.Random(seed)
    ).start()
    host = serial.serial_for_url(str(tmp_path / "link"), timeout=0.05)
    try:
        yield board, proxy, host
    finally:
        host.close()
        proxy.close()
        board.close()


def test_clean_wire_passes_every_byte_both_ways_and_dumps_them(
    wire: tuple[_FakeBoard, WireProxy, serial.Serial], tmp_path: Path
) -> None:
    board, _proxy, host = wire
    payload = bytes(range(256)) * 4
    os.write(board.fd, payload)
    assert _read_until(host, len(payload)) == payload
    host.write(b"\x00hello\x00")
    assert _read_fd(board.fd, 7) == b"\x00hello\x00"
    dump = (tmp_path / "wire.hexdump").read_text()
    assert "D>H 00000000  00" in dump
    assert "|.hello.|" in dump


def test_drop_corrupt_duplicate_change_exactly_the_armed_bytes(
    wire: tuple[_FakeBoard, WireProxy, serial.Serial], tmp_path: Path
) -> None:
    board, proxy, host = wire
    proxy.inject(WireFault("drop", D2H, 3))
    os.write(board.fd, b"abcdef")
    assert _read_until(host, 3) == b"def"

    proxy.inject(WireFault("corrupt", D2H, 1))
    os.write(board.fd, b"\x00" * 8)
    corrupted = _read_until(host, 8)
    assert len(corrupted) == 8 and sum(bin(b).count("1") for b in corrupted) == 1

    proxy.inject(WireFault("duplicate", H2D))
    host.write(b"xyz")
    assert _read_fd(board.fd, 6) == b"xyzxyz"
    assert [fault.kind for fault in proxy.applied] == ["drop", "corrupt", "duplicate"]
    dump = (tmp_path / "wire.hexdump").read_text()
    assert "D>H FAULT drop dropped 61" in dump
    assert "FAULT duplicate 3 bytes delivered twice" in dump


def test_delay_and_stall_hold_bytes_without_losing_or_reordering_them(
    wire: tuple[_FakeBoard, WireProxy, serial.Serial],
) -> None:
    board, proxy, host = wire
    proxy.inject(WireFault("delay", D2H, 300))
    os.write(board.fd, b"first")
    time.sleep(0.05)
    os.write(board.fd, b"second")
    assert host.read(64) == b""  # held: read timeout is 50 ms, the delay 300 ms
    assert _read_until(host, 11) == b"firstsecond"

    proxy.inject(WireFault("stall", H2D, 300))
    host.write(b"during stall")
    assert not select.select([board.fd], [], [], 0.1)[0], "bytes moved during a 300 ms stall"
    assert _read_fd(board.fd, 12) == b"during stall"


def test_disconnect_hangs_up_the_host_side_and_plugs_a_new_pty_back_in(
    wire: tuple[_FakeBoard, WireProxy, serial.Serial], tmp_path: Path
) -> None:
    board, proxy, host = wire
    first_pty = os.readlink(tmp_path / "link")
    proxy.inject(WireFault("disconnect", D2H, 200))
    with pytest.raises(serial.SerialException):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            host.read(1)
    os.write(board.fd, b"lost while unplugged")
    deadline = time.monotonic() + 5
    while not (tmp_path / "link").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.readlink(tmp_path / "link") != first_pty
    reopened = serial.serial_for_url(str(tmp_path / "link"), timeout=0.05)
    try:
        os.write(board.fd, b"after")
        assert _read_until(reopened, 5) == b"after"
    finally:
        reopened.close()


def test_random_faults_replay_identically_from_the_same_seed() -> None:
    decisions = []
    for _ in range(2):
        rng = random.Random(1234)
        decisions.append([WireFault.random(rng) for _ in range(50)])
    assert decisions[0] == decisions[1]
    assert {fault.kind for fault in decisions[0]} == {
        "drop",
        "corrupt",
        "duplicate",
        "delay",
        "stall",
        "disconnect",
    }


def test_unknown_fault_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown wire fault 'melt'"):
        WireFault("melt")
