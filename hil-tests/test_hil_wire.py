"""The port layer on its own: the fault engine, the decoded wire log, the pty relay.

The engine is sans-IO, so its decisions are checked with a made-up clock and no bytes moving.
The wire log is fed frames built with sealproto. The relay runs between two plain ptys: one
stands in for the board's UART (the emulated board's is a pty too; this test only needs bytes
to come out of it), so every fault's effect on the bytes can be checked exactly.
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
from sealink_hil.linkfaults import D2H, FAULT_KINDS, H2D, LinkFaults, WireFault
from sealink_hil.relay import PtyRelay
from sealink_hil.wirelog import RX, TX, Hexdump, WireLog
from sealproto import auth, framing
from sealproto import messages as m

KEY = bytes(range(32))


def _seeded(request: pytest.FixtureRequest) -> random.Random:
    seed = random.SystemRandom().randrange(2**32)
    print(f"{request.node.name} seed={seed}")
    return random.Random(seed)


# -- the engine: decisions only ------------------------------------------------------------


def test_engine_drops_corrupts_and_duplicates_exactly_the_armed_bytes(
    request: pytest.FixtureRequest,
) -> None:
    engine = LinkFaults(_seeded(request))
    engine.arm(WireFault("drop", D2H, 3), now=0.0)
    verdict = engine.on_chunk(D2H, b"ab", now=0.0)
    assert verdict.chunks == [] and verdict.release_at == 0.0
    assert engine.on_chunk(D2H, b"cdef", now=0.1).chunks == [b"def"]
    assert engine.on_chunk(H2D, b"other way", now=0.1).chunks == [b"other way"]

    engine.arm(WireFault("corrupt", H2D, 2), now=1.0)
    corrupted = engine.on_chunk(H2D, bytes(8), now=1.0).chunks
    assert len(corrupted) == 1 and sum(bin(b).count("1") for b in corrupted[0]) == 2
    engine.arm(WireFault("corrupt", H2D, 3), now=1.5)  # 3 bytes, over short chunks
    spread = [engine.on_chunk(H2D, bytes(2), now=1.5).chunks[0] for _ in range(3)]
    assert [sum(bin(b).count("1") for b in chunk) for chunk in spread] == [2, 1, 0]

    engine.arm(WireFault("duplicate", D2H), now=2.0)
    assert engine.on_chunk(D2H, b"xyz", now=2.0).chunks == [b"xyz", b"xyz"]
    assert engine.on_chunk(D2H, b"xyz", now=2.0).chunks == [b"xyz"]
    assert [f.kind for f in engine.applied] == ["drop", "corrupt", "corrupt", "duplicate"]


def test_engine_times_delay_stall_and_disconnect_on_the_clock_it_is_given() -> None:
    engine = LinkFaults(random.Random(0))
    engine.arm(WireFault("delay", D2H, 300), now=10.0)
    assert engine.on_chunk(D2H, b"held", now=10.0).release_at == pytest.approx(10.3)
    assert engine.on_chunk(D2H, b"next", now=10.1).release_at == pytest.approx(10.1)

    effects = engine.arm(WireFault("stall", H2D, 500), now=20.0)
    assert [str(e) for e in effects] == ["H>D FAULT stall nothing moves for 500 ms"]
    assert engine.stall_left(20.2) == pytest.approx(0.3)
    assert engine.stall_left(20.6) == 0.0

    engine.arm(WireFault("disconnect", D2H, 200), now=30.0)
    assert engine.take_hang_up() and not engine.take_hang_up()
    lost = engine.on_chunk(H2D, b"into the void", now=30.1)
    assert lost.lost and lost.chunks == []
    assert not engine.connected(30.1) and engine.connected(30.2)
    assert engine.on_chunk(H2D, b"back", now=30.3).chunks == [b"back"]


def test_random_faults_replay_identically_from_the_same_seed() -> None:
    def run(seed: int) -> list[tuple[str, str, int, list[bytes]]]:
        engine = LinkFaults(random.Random(seed))
        out = []
        for step in range(50):
            fault = engine.draw()
            engine.arm(fault, now=float(step))
            chunks = engine.on_chunk(fault.direction, bytes(range(64)), now=float(step)).chunks
            out.append((fault.kind, fault.direction, fault.amount, chunks))
        return out

    assert run(1234) == run(1234)
    assert run(1234) != run(4321)
    assert {kind for kind, *_ in run(1234)} == set(FAULT_KINDS)


def test_unknown_fault_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown wire fault 'melt'"):
        WireFault("melt")


# -- the decoded wire log ------------------------------------------------------------------


def _event(counter: int) -> bytes:
    msg = {
        m.K_TYPE: m.EVENT,
        m.EV_COUNTER: counter,
        m.EV_BOOT: 2,
        m.EV_UPTIME: 1500,
        m.EV_TIME: 1_718_000_000,
        m.EV_KIND: m.KIND_IMPRESSION,
        m.EV_PERMIT: 0,
        m.EV_OPERATOR: 0,
        m.EV_PREV: bytes(32),
        # the wire log names fields, it does not check the seal's signature
        m.EV_SIG: bytes(range(64)),
    }
    return framing.encode_frame(m.encode(auth.sign(msg, KEY)))


def test_wire_log_decodes_frames_names_fields_and_says_why_a_frame_failed(
    tmp_path: Path,
) -> None:
    wire = WireLog(tmp_path / "wire.log")
    event = _event(7)
    ack_msg = {m.K_TYPE: m.ACK, m.AK_COUNTER: 7, m.AK_STORED: b"", m.K_SEQ: 3}
    ack = framing.encode_frame(m.encode(auth.sign(ack_msg, KEY)))
    # Split mid-frame, with the optional leading 0x00 (SPEC §2): chunking must not matter.
    wire.tx(D2H, b"\x00" + event[:10])
    wire.tx(D2H, event[10:])
    wire.rx(D2H, event[:20] + bytes([event[20] ^ 0x10]) + event[21:])
    wire.tx(H2D, ack)
    wire.rx(D2H, framing.encode_frame(b"\xff\x00junk"))
    wire.close()

    sent = wire.last("EVENT", D2H, TX)
    assert sent is not None
    assert sent.fields["counter"] == 7 and sent.fields["kind"] == "IMPRESSION"
    assert sent.fields["time_s"] == 1_718_000_000 and sent.fields["boot"] == 2
    assert wire.board_counter == 7
    errors = wire.frames("ERROR", D2H, RX)
    assert [e.error.split(":")[0] for e in errors if e.error] == ["CRC", "CBOR"]
    assert wire.last("ACK", H2D, TX) is not None
    text = (tmp_path / "wire.log").read_text()
    assert "D>H tx EVENT counter=7 boot=2 kind=IMPRESSION time_s=1718000000" in text
    assert "D>H rx ERROR CRC: crc mismatch" in text
    assert "H>D tx ACK counter=7 stored=- seq=3" in text


def test_the_board_counter_comes_from_its_own_frames(tmp_path: Path) -> None:
    wire = WireLog(tmp_path / "wire.log")
    hello = {
        m.K_TYPE: m.HELLO,
        m.HE_VERSION: 3,
        m.HE_DEVICE: "seal-bench-1",
        m.HE_NONCE: bytes(16),
        m.HE_BOOT: 9,
        m.HE_NEXT: 501,
        m.HE_FIRMWARE: "seal-0.1.0/esp32",
        m.HE_ENROLMENT: 0,
    }
    wire.tx(D2H, framing.encode_frame(m.encode(auth.sign(hello, KEY))))
    assert wire.board_counter == 500, "HELLO next=501: the board holds 500 records"
    wire.tx(D2H, _event(501))
    assert wire.board_counter == 501
    wire.tx(D2H, _event(3))  # a resend of an old one moves nothing
    assert wire.board_counter == 501
    wire.close()


# -- the relay between two ptys ------------------------------------------------------------


class _FakeBoard:
    """The board end of a pty: the relay opens `path` like it opens a board's UART."""

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
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        data += os.read(fd, size - len(data))
    return bytes(data)


@pytest.fixture
def relay(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[_FakeBoard, PtyRelay, serial.Serial]]:
    board = _FakeBoard()
    engine = LinkFaults(_seeded(request))
    wire = WireLog(tmp_path / "wire.log")
    hexdump = Hexdump(tmp_path / "wire.hexdump")
    proxy = PtyRelay(board.path, tmp_path / "link", engine, hexdump, wire).start()
    host = serial.serial_for_url(str(tmp_path / "link"), timeout=0.05)
    try:
        yield board, proxy, host
    finally:
        host.close()
        proxy.close()
        hexdump.close()
        wire.close()
        board.close()
    assert proxy.error is None


def test_clean_relay_passes_every_byte_both_ways_and_logs_them(
    relay: tuple[_FakeBoard, PtyRelay, serial.Serial], tmp_path: Path
) -> None:
    board, proxy, host = relay
    payload = bytes(range(256)) * 4
    os.write(board.fd, payload)
    assert _read_until(host, len(payload)) == payload
    host.write(b"\x00hello\x00")
    assert _read_fd(board.fd, 7) == b"\x00hello\x00"
    os.write(board.fd, b"\x00" + _event(1))  # the leading 0x00 ends the bytes before (SPEC §2)
    proxy.wire.wait_for("EVENT", D2H, RX, 0, 5.0)
    dump = (tmp_path / "wire.hexdump").read_text()
    assert "D>H 00000000  00" in dump
    assert "|.hello.|" in dump
    assert [f.stage for f in proxy.wire.frames("EVENT")] == [TX, RX]


def test_drop_corrupt_duplicate_change_exactly_the_armed_bytes(
    relay: tuple[_FakeBoard, PtyRelay, serial.Serial], tmp_path: Path
) -> None:
    board, proxy, host = relay
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
    assert "D>H FAULT drop dropped 61" in (tmp_path / "wire.log").read_text()


def test_a_corrupted_frame_is_sent_whole_and_received_as_a_crc_error(
    relay: tuple[_FakeBoard, PtyRelay, serial.Serial],
) -> None:
    board, proxy, host = relay
    frame = _event(5)
    proxy.inject(WireFault("corrupt", D2H, 1))
    os.write(board.fd, frame)
    assert len(_read_until(host, len(frame))) == len(frame)
    error = proxy.wire.wait_for("ERROR", D2H, RX, 0, 5.0)
    sent = proxy.wire.last("EVENT", D2H, TX)
    assert sent is not None and sent.get("counter") == 5
    assert error.error is not None and error.error.split(":")[0] in ("CRC", "COBS", "SHORT")


def test_delay_and_stall_hold_bytes_without_losing_or_reordering_them(
    relay: tuple[_FakeBoard, PtyRelay, serial.Serial],
) -> None:
    board, proxy, host = relay
    proxy.inject(WireFault("delay", D2H, 300))
    os.write(board.fd, b"first")
    proxy.wire.wait_until(lambda _w: proxy.hexdump.bytes[D2H] >= 5, 5.0, "the first chunk read")
    os.write(board.fd, b"second")
    assert host.read(64) == b""  # held: read timeout is 50 ms, the delay 300 ms
    assert _read_until(host, 11) == b"firstsecond"

    proxy.inject(WireFault("delay", D2H, 60_000))
    os.write(board.fd, b"held until released")
    proxy.wire.wait_until(lambda _w: proxy.hexdump.bytes[D2H] >= 30, 5.0, "the held chunk read")
    assert host.read(64) == b""
    assert proxy.release(D2H) == 19
    assert _read_until(host, 19) == b"held until released"

    proxy.inject(WireFault("stall", H2D, 300))
    host.write(b"during stall")
    assert not select.select([board.fd], [], [], 0.1)[0], "bytes moved during a 300 ms stall"
    assert _read_fd(board.fd, 12) == b"during stall"


def test_disconnect_hangs_up_the_host_side_and_plugs_a_new_pty_back_in(
    relay: tuple[_FakeBoard, PtyRelay, serial.Serial], tmp_path: Path
) -> None:
    board, proxy, host = relay
    first_pty = os.readlink(tmp_path / "link")
    proxy.inject(WireFault("disconnect", D2H, 200))
    with pytest.raises(serial.SerialException):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            host.read(1)
    os.write(board.fd, b"lost while unplugged")
    deadline = time.monotonic() + 5
    while not (tmp_path / "link").exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the relay re-creates the link: no event to wait on but the file
    assert os.readlink(tmp_path / "link") != first_pty
    reopened = serial.serial_for_url(str(tmp_path / "link"), timeout=0.05)
    try:
        os.write(board.fd, b"after")
        assert _read_until(reopened, 5) == b"after"
    finally:
        reopened.close()


def test_every_alarm_code_is_named_from_sealproto(tmp_path: Path) -> None:
    wire = WireLog(tmp_path / "wire.log")
    alarm = {
        m.K_TYPE: m.ALARM,
        m.AL_CODE: m.AL_PIN_LOCKOUT,
        m.AL_TIME: 1_718_000_000,
        m.AL_DETAIL: 3,
        m.K_SEQ: 4,
    }
    wire.tx(D2H, framing.encode_frame(m.encode(auth.sign(alarm, KEY))))
    wire.close()
    sent = wire.last("ALARM", D2H, TX)
    assert sent is not None and sent.fields["code"] == "PIN_LOCKOUT", sent
