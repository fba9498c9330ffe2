"""The emulated board (boards/emulated + sealink_sim.emulator) running the real firmware.

Nothing is mocked: `micropython` runs the firmware's .mpy build from a ROMFS image mapped as
flash outside its 64 KB heap; the UART is a real pty, the flash a littlefs image, power cuts
are SIGKILLs after a counted block write.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from checkout import ROOT
from sealink_sim import emulator
from sealink_sim.emulator import EmulatedBoard, EmulatorError
from sealproto import auth, framing, messages
from sealproto.messages import AL_FORCED_STAMP, EV_TIME, HE_DEVICE, HELLO, K_TYPE

KEY = bytes(range(1, 33))
# The device's RAM budget: the firmware's code runs from the ROMFS image (emulated flash), so
# the heap holds only what a board's RAM holds (tools/benches/bench_firmware.py measures it).
HEAPSIZE = "96k"


@pytest.fixture
def board(tmp_path: Path) -> Iterator[EmulatedBoard]:
    with EmulatedBoard(tmp_path, device_id="seal-0001", device_key=KEY, heapsize=HEAPSIZE) as b:
        yield b


def test_stamp_is_journaled_and_counted(board: EmulatedBoard) -> None:
    assert board.counter == 0 and not board.lock_open
    board.stamp()
    board.wait_until(lambda b: b.counter == 1)
    # No permit: the lock was shut, so the impression is a forced one.
    board.wait_until(lambda b: AL_FORCED_STAMP in b.alarms)
    board.stamp()
    board.wait_until(lambda b: b.counter == 2)


def test_counter_survives_reboot_and_power_cut(board: EmulatedBoard) -> None:
    for n in range(1, 4):
        board.stamp()
        board.wait_until(lambda b, n=n: b.counter == n)
    board.stop()
    board.start()
    assert board.counter == 3
    board.power_cut()
    board.start()
    assert board.counter == 3
    board.stamp()
    board.wait_until(lambda b: b.counter == 4)


def test_press_held_across_reboot_counts_once(board: EmulatedBoard) -> None:
    board.press()
    board.wait_until(lambda b: b.counter == 1)
    board.power_cut()
    board.start()
    assert board.counter == 1
    board.release()
    board.stamp()
    board.wait_until(lambda b: b.counter == 2)
    board.stop()
    board.start()
    assert board.counter == 2


def test_uart_is_a_pty_carrying_frames(board: EmulatedBoard) -> None:
    port = serial.serial_for_url(board.uart_path, timeout=0.1)
    try:
        decoder = framing.FrameDecoder()
        hello = None
        deadline = time.monotonic() + 10
        while hello is None and time.monotonic() < deadline:
            for item in decoder.feed(port.read(512)):
                if isinstance(item, bytes):
                    msg = messages.decode(item)
                    if msg[K_TYPE] == HELLO:
                        hello = msg
        assert hello is not None, f"no HELLO on {board.uart_path}; device log: {board.log_path}"
        assert hello[HE_DEVICE] == "seal-0001"
        auth.verify(hello, KEY)
    finally:
        port.close()


def test_power_cut_at_write_keeps_exactly_the_writes_before(tmp_path: Path) -> None:
    with EmulatedBoard(tmp_path, device_id="seal-0002", device_key=KEY, heapsize=HEAPSIZE) as b:
        b.stamp()
        b.wait_until(lambda b: b.counter == 1)
        b.restart()
        boot_writes = b.block_writes
        b.stop()
        image = b.flash_path.read_bytes()
        # At the next stamp's first journal write (the second record of a segment is one
        # littlefs commit: it is still inline): after the reboot the stamp counted or not,
        # and the board must agree with what it reported before it lost power.
        b.power_cut_at_write = boot_writes + 1
        b.start()
        b.stamp()
        b.wait_until(lambda b: b.powercut)
        assert b.block_writes == boot_writes + 1
        assert not b.running
        assert b.flash_path.read_bytes() != image
        counted = b.counter
        b.start()
        after = b.counter
        assert after is not None and counted is not None and after >= counted
        b.stamp()
        b.wait_until(lambda b: b.counter == after + 1)


def test_a_cut_armed_on_the_running_board_counts_from_now(tmp_path: Path) -> None:
    # However many writes the boot made (more after a torn write), the cut comes exactly N
    # writes after it was armed.
    with EmulatedBoard(tmp_path, device_id="seal-0005", device_key=KEY, heapsize=HEAPSIZE) as b:
        before = b.block_writes
        b.arm_power_cut(2)
        assert b.block_writes == before, "arming writes nothing"
        b.stamp()
        b.stamp()
        b.wait_until(lambda b: b.powercut)
        assert b.block_writes == before + 2
        with pytest.raises(ValueError, match="at least 1"):
            b.arm_power_cut(0)


def test_power_cut_sweep_through_the_real_app(tmp_path: Path) -> None:
    """Every block-write index of a boot + 3 stamps, cut by SIGKILL in the real firmware."""
    seed = int(os.environ.get("SEAL_POWERCUT_SEED", 20261126))
    rnd = random.Random(seed)
    base = tmp_path / "base"
    with EmulatedBoard(base, device_id="seal-0003", device_key=KEY, heapsize=HEAPSIZE) as b:
        start = b.block_writes
        for n in range(1, 4):
            b.stamp()
            b.wait_until(lambda b, n=n: b.counter == n)
        total = b.block_writes
        b.stop()
    pristine = (base / "flash.img").read_bytes()
    # The pristine image already holds 3 events; each cut run adds 3 more on a copy of it.
    indices = list(range(1, total + 1))
    rnd.shuffle(indices)
    print(f"app power-cut sweep: seed {seed}, boot writes {start}, cut indices 1..{total}")
    for cut in indices:
        work = tmp_path / f"cut{cut}"
        work.mkdir()
        (work / "flash.img").write_bytes(pristine)
        (work / "flash.img").chmod(0o600)
        with EmulatedBoard(
            work, device_id="seal-0003", device_key=KEY, heapsize=HEAPSIZE, power_cut_at_write=cut
        ) as b:
            for _ in range(10):
                if b.powercut:
                    break
                b.stamp()
            assert b.powercut, f"cut {cut}: never reached; log {b.log_path}"
            # The last counter the board reported before the power went (3 if none this boot).
            counted = 3 if b.counter is None else b.counter
            b.start()
            after = b.counter
            assert after is not None, f"cut {cut}: no counter after reboot; log {b.log_path}"
            # Nothing that counted is lost; at most the append in flight survives as well.
            assert counted <= after <= counted + 1, (
                f"cut {cut}: counted {counted}, after reboot {after}; log {b.log_path}"
            )
            b.stamp()
            b.wait_until(lambda b, after=after: b.counter == after + 1)


_DUMP = """
import os, sys, vfs, binascii
from flashdev import FileBlockDevice, filesystem
from seal.journal import Journal
vfs.mount(filesystem(FileBlockDevice(os.getenv("SEAL_FLASH"))), "/flash")
j = Journal("/flash/journal").open()
for c in range(1, j.next_counter):
    p = j.read(c)
    if p is not None:
        print(binascii.hexlify(p).decode())
"""


def journal_events(board: EmulatedBoard) -> list[dict[int, object]]:
    """The events on a stopped board's flash, read by the firmware's own Journal."""
    env = dict(os.environ, MICROPYPATH=f".frozen:{board.build_dir}",
               SEAL_FLASH=str(board.flash_path))
    micropython = str(Path(sys.executable).parent / "micropython")
    proc = subprocess.run([micropython, "-c", _DUMP], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    return [messages.decode(bytes.fromhex(line)) for line in proc.stdout.split()]


@pytest.mark.parametrize("offset", [-86400.0, None])
def test_rtc_is_host_clock_plus_offset(tmp_path: Path, offset: float | None) -> None:
    with EmulatedBoard(tmp_path, device_id="seal-0006", device_key=KEY, heapsize=HEAPSIZE,
                       rtc_offset_s=offset) as b:
        before = time.time()
        b.stamp()
        b.wait_until(lambda b: b.counter == 1)
        after = time.time()
        b.stop()
        (event,) = journal_events(b)
    auth.verify(event, KEY)
    if offset is None:
        assert event[EV_TIME] == 0, "a never-set clock reads 0"
    else:
        assert int(before + offset) <= event[EV_TIME] <= after + offset + 1


def test_wait_until_names_the_log(board: EmulatedBoard) -> None:
    with pytest.raises(TimeoutError, match=str(board.log_path)):
        board.wait_until(lambda b: b.counter == 99, timeout=0.2)


def test_key_stays_out_of_logs_and_image_is_private(board: EmulatedBoard) -> None:
    board.stamp()
    board.wait_until(lambda b: b.counter == 1)
    board.stop()
    log = board.log_path.read_text()
    assert KEY.hex() not in log
    assert stat.S_IMODE(board.flash_path.stat().st_mode) == 0o600


def test_firmware_that_cannot_boot_is_an_error_naming_the_log(tmp_path: Path) -> None:
    board = EmulatedBoard(tmp_path, device_id="seal-0004", device_key=KEY, heapsize=HEAPSIZE)
    try:
        board.start()
        board.stop()
        # A flash image that is not littlefs: the firmware must refuse, not format it.
        board.flash_path.write_bytes(b"\0" * len(board.flash_path.read_bytes()))
        with pytest.raises(EmulatorError, match=str(board.log_path)):
            board.start()
    finally:
        board.close()


def test_firmware_boots_at_its_budget(tmp_path: Path) -> None:
    # The default heap is the budget (96k, SPEC §13); the code is in the ROMFS image, not in
    # the heap.
    with EmulatedBoard(tmp_path, device_id="seal-0005", device_key=KEY) as b:
        assert b.heapsize == "96k"
        b.stamp()
        b.wait_until(lambda b: b.counter == 1)
        b.restart()
        assert b.counter == 1
    assert "MemoryError" not in b.log_path.read_text()


def _tree(root: Path) -> Path:
    """A copy of what the emulated board's build reads, as a source tree of its own."""
    src = emulator.FirmwareSource.find()
    for path in src.files():
        target = root / path.relative_to(src.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    return root


def test_firmware_source_is_an_explicit_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator builds from the tree it is given, else from $SEALINK_SOURCE, else from the
    # checkout it can name (the tools package, the editable install); never by path arithmetic.
    copy = _tree(tmp_path / "copy")
    assert emulator.FirmwareSource.find(copy).root == copy.resolve()
    monkeypatch.setenv(emulator.SOURCE_ENV, str(copy))
    assert emulator.FirmwareSource.find().root == copy.resolve()
    # Content-addressed builds: another source, another build.
    (copy / "firmware" / "seal" / "app.py").write_text("# changed\n")
    assert (emulator.FirmwareSource.find().build_dir()
            != emulator.FirmwareSource.find(ROOT).build_dir())
    monkeypatch.setenv(emulator.SOURCE_ENV, str(tmp_path / "nothing"))
    with pytest.raises(EmulatorError, match=r"not a sealink source tree.*SEALINK_SOURCE"):
        EmulatedBoard(tmp_path / "b", device_id="seal-x", device_key=KEY)


def test_without_a_source_tree_the_error_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a wheel installed without a checkout sees it.
    monkeypatch.delenv(emulator.SOURCE_ENV, raising=False)
    monkeypatch.setattr(emulator, "_tools_checkout", lambda: None)
    monkeypatch.setattr(emulator, "_editable_checkout", lambda: None)
    with pytest.raises(EmulatorError, match="set SEALINK_SOURCE to a checkout"):
        emulator.FirmwareSource.find()


def test_the_default_source_is_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(emulator.SOURCE_ENV, raising=False)
    assert emulator.FirmwareSource.find().root == ROOT
    # Found either way: the tools package on sys.path, or the editable install's record.
    assert ROOT in {emulator._tools_checkout(), emulator._editable_checkout()}


def _permit_session(board: EmulatedBoard, peer: object, msg: dict[int, int]) -> int:
    """`msg` sent by `peer` (a new session after each boot); returns the RESULT code."""
    from sealproto.messages import RE_CODE, RE_SEQ, RESULT

    port = serial.serial_for_url(board.uart_path, timeout=0.05)
    try:
        if getattr(peer, "boot", None) != board.boots:
            peer.boot = board.boots  # type: ignore[attr-defined]
            peer.session_key = None  # type: ignore[attr-defined]
            port.write(peer.sync())  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        sent = None
        while time.monotonic() < deadline:
            answer = peer.feed(port.read(4096))  # type: ignore[attr-defined]
            if answer:
                port.write(answer)
            if sent is None and peer.session_key is not None:  # type: ignore[attr-defined]
                frame = peer.command(dict(msg))  # type: ignore[attr-defined]
                sent = peer._tx_seq  # type: ignore[attr-defined]
                port.write(frame)
            for m in peer.of_type(RESULT):  # type: ignore[attr-defined]
                if sent is not None and m[RE_SEQ] == sent:
                    peer.session.clear()  # type: ignore[attr-defined]
                    return int(m[RE_CODE])
        raise TimeoutError(f"no RESULT for {msg}; device log: {board.log_path}")
    finally:
        port.close()


def test_permit_of_two_gives_two_across_power_cut_and_reboot(tmp_path: Path) -> None:
    """PERMIT 3 (count 2) through the real app: one impression, a power cut inside the
    second stamp's journal append, a reboot and the PERMIT resent with the same id; pressing
    on, the permit yields exactly 2 IMPRESSION records, then only FORCED ones, also after
    another reboot and resend (SPEC §12: permits are durable)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))
    from peer import Peer
    from sealproto.messages import (
        EV_KIND,
        EV_PERMIT,
        KIND_FORCED,
        KIND_IMPRESSION,
        PE_COUNT,
        PE_ID,
        PE_NOT_AFTER,
        PE_NOT_BEFORE,
        PE_OPERATOR,
        PERMIT,
        R_OK,
        R_UNKNOWN_PERMIT,
    )

    permit = {K_TYPE: PERMIT, PE_ID: 3, PE_COUNT: 2, PE_NOT_BEFORE: 0, PE_NOT_AFTER: 0,
              PE_OPERATOR: 42}
    peer = Peer(KEY)
    with EmulatedBoard(tmp_path, device_id="seal-0007", device_key=KEY, heapsize=HEAPSIZE) as b:
        assert _permit_session(b, peer, permit) == R_OK
        b.wait_until(lambda b: b.lock_open)
        b.stamp()
        b.wait_until(lambda b: b.counter == 1)
        # Reboot; the permit is on flash: one impression left, the lock opens at boot.
        b.restart()
        b.wait_until(lambda b: b.lock_open)
        boot_writes = b.block_writes
        b.stop()
        # The next boot loses power inside the second stamp's append (cut after its 2nd write).
        b.power_cut_at_write = boot_writes + 2
        b.start()
        b.stamp()
        b.wait_until(lambda b: b.powercut)
        b.start()
        assert _permit_session(b, peer, permit) == R_OK, "a resend answers OK"
        assert _permit_session(b, peer, {**permit, PE_ID: 2}) == R_UNKNOWN_PERMIT
        for _ in range(2):
            b.stamp()
        b.restart()
        assert _permit_session(b, peer, permit) == R_OK
        before = b.counter
        b.stamp()
        b.wait_until(lambda b: b.counter == (before or 0) + 1)
        assert not b.lock_open
        b.stop()
        events = journal_events(b)
    kinds = [(e[EV_KIND], e[EV_PERMIT]) for e in events]
    assert kinds.count((KIND_IMPRESSION, 3)) == 2, (kinds, b.log_path)
    assert kinds[-1] == (KIND_FORCED, 0), (kinds, b.log_path)
    # The peer stored what the board sent: the same 2 impressions under permit 3.
    sent = [(messages.decode(p)[EV_KIND], messages.decode(p)[EV_PERMIT]) for p in peer.events]
    assert sent.count((KIND_IMPRESSION, 3)) <= 2, (sent, b.log_path)
