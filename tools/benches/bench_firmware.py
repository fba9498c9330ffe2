"""Firmware figures: 1,000 impressions through the real firmware at `-X heapsize=96k`.

The code runs from the build's ROMFS image mapped outside the MicroPython heap, as a device
runs frozen or ROMFS code from flash (sealink_sim.emulator), so the heap holds what a
device's RAM holds. Two runs:

- the emulated board (the whole firmware: sensor, guard, journal, link, UART) with a host peer
  on its pty (firmware/tests/mpy/peer.py) that grants a permit and acks every event, stamped
  1,000 times. `heap_peak_bytes` is the largest live heap the board saw (collected first, at a
  scheduling point every few ms, by the emulated HAL's heap probe); the run fails if the
  firmware does not fit in 96k at all.
- the impression path alone in one process (Guard -> Recorder -> the chip's Sign -> Journal on
  the emulated board's littlefs block device), so `impressions_per_s`, `seal_ms_per_impression`
  and the flash figures are the device's own cost, not the control channel's pacing: a backlog
  of 200 records without a gateway gives `journal_bytes_per_event` (the flash it takes), then
  1,000 impressions, acknowledged every 16 records as the link frees them, give
  `flash_writes_per_event` (programs and erases, compaction included), of them
  `flash_erases_per_event`, and `flash_program_bytes_per_event`. The chip is the ATECC608
  model (sealink_sim.atecc) driven by the firmware's own driver over the emulated I2C bus,
  with the datasheet's typical execution times; `chip_ms_per_impression` is the same run with
  a chip that answers at once, subtracted.

    {"bench": "firmware", "heap_peak_bytes": ..., "mpy_total_bytes": ...,
     "journal_bytes_per_event": ..., "impressions_per_s": ..., ...}
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import serial
from sealink_sim.atecc import ChipModel, serve
from sealink_sim.emulator import HEAPSIZE, ROMFS_IMAGE, EmulatedBoard, rom_command
from sealproto import messages

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # tools/bench.py runs with tools/, not the checkout above it, on sys.path.
    sys.path.insert(0, str(ROOT))
from tools import build  # noqa: E402

IMPRESSIONS = 1000
BACKLOG = 200
HEAP_PROBE_MS = 5
_PEER_DIR = ROOT / "firmware" / "tests" / "mpy"

# Runs under micropython with SEAL_ROM = the mapped ROMFS image (the emulator's launcher).
_RUN = """
import gc, os, sys, time, uctypes, vfs
import asyncio
a, n = os.getenv("SEAL_ROM").split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(a), int(n))), "/rom")
sys.path.insert(0, "/rom")
gc.collect()
base = gc.mem_alloc()
from flashdev import BLOCK_SIZE, FileBlockDevice, filesystem, mkfs
from i2cbus import I2C
from seal.atecc import Atecc608
from seal.chipsetup import provision
from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.permits import Permits
gc.collect()
code = gc.mem_alloc()
N = int(os.getenv("SEAL_N"))
BACKLOG = int(os.getenv("SEAL_BACKLOG"))
IMG = os.getenv("SEAL_IMG")
dev = FileBlockDevice(IMG)
mkfs(dev)
dev = FileBlockDevice(IMG)
vfs.mount(filesystem(dev), "/flash")
class Pin:
    def value(self, v=None):
        return 0
now = 1795000000
j = Journal("/flash/journal", capacity_events=N + 16).open()
boot = j.new_boot()
chip = Atecc608(I2C())
provision(chip, 0)
rec = Recorder(j, bytes(32), chip, lambda: now, Uptime())
permits = Permits(lambda: now, j)
permits.grant(1, N + 1, now - 60, now + 3600, 42)
g = Guard(j, rec, permits, Pin(), Pin(), lambda n, v: None, lambda: now, lambda ms: None, 3300,
          asyncio.Event())
g.update_lock()
free0 = os.statvfs("/flash")[3]
# A backlog first (no gateway): the flash it takes.
for i in range(BACKLOG):
    asyncio.run(g.on_press(1))
used = (free0 - os.statvfs("/flash")[3]) * BLOCK_SIZE
j.ack(j.next_counter - 1)
# Then N impressions acknowledged as the link frees them, every 16 records (seal/link.py).
w0, e0, p0 = dev.writes, dev.erases, dev.programmed
t0 = time.ticks_us()
for i in range(N):
    asyncio.run(g.on_press(1))
    if i % 16 == 15:
        j.ack(j.next_counter - 1)
t1 = time.ticks_us()
assert j.next_counter == BACKLOG + N + 1, j.next_counter
print("RESULT", code - base, time.ticks_diff(t1, t0), used, dev.writes - w0, dev.erases - e0,
      dev.programmed - p0)
"""


def _build(out: Path) -> Path:
    build.build("emulated", out, romfs=True)
    return out


def _impression_path(fw: Path, tmp: Path, latency: str) -> list[int]:
    img = tmp / f"bench-{latency}.img"
    img.write_bytes(b"\xff" * (512 * 4096))
    host_end, board_end = socket.socketpair()
    chip = ChipModel(tmp / f"chip-{latency}.state", latency=latency)
    serving = serve(host_end, chip, name=f"bench-chip-{latency}")
    env = dict(
        os.environ,
        MICROPYPATH=".frozen",
        SEAL_N=str(IMPRESSIONS),
        SEAL_BACKLOG=str(BACKLOG),
        SEAL_IMG=str(img),
        SEAL_I2C_FD=str(board_end.fileno()),
    )
    cmd = rom_command(fw / ROMFS_IMAGE, "-X", f"heapsize={HEAPSIZE}", "-c", _RUN)
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            check=False,
            pass_fds=(board_end.fileno(),),
        )
    finally:
        board_end.close()
        serving.join(timeout=10)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return [int(x) for x in line.split()[1:]]
    raise RuntimeError(f"firmware bench failed at heapsize={HEAPSIZE}:\n{proc.stdout}{proc.stderr}")


def _pump(port: serial.Serial, peer: Any, stop: threading.Event, errors: list[str]) -> None:
    # The host side: answer every frame, and grant one permit for the whole run once the
    # session is up, so every stamp is a permitted impression with the lock open.
    granted = False
    try:
        port.write(peer.sync())
        while not stop.is_set():
            data = port.read(4096)
            if data:
                answer = peer.feed(data)
                if answer:
                    port.write(answer)
            if not granted and peer.session_key is not None:
                granted = True
                port.write(
                    peer.command(
                        {
                            messages.K_TYPE: messages.PERMIT,
                            messages.PE_ID: 1,
                            messages.PE_COUNT: IMPRESSIONS + 10,
                            messages.PE_NOT_BEFORE: 0,
                            messages.PE_NOT_AFTER: 0,
                            messages.PE_OPERATOR: 42,
                        }
                    )
                )
    except Exception as e:  # reported by the bench, not lost in a thread
        errors.append(f"{type(e).__name__}: {e}")


def _board_heap_peak(tmp: Path) -> int:
    sys.path.insert(0, str(_PEER_DIR))
    try:
        from peer import Peer
    finally:
        sys.path.remove(str(_PEER_DIR))
    key = os.urandom(32)
    peer = Peer(key, keep=False)
    stop = threading.Event()
    errors: list[str] = []
    with EmulatedBoard(
        tmp / "board",
        device_id="seal-bench",
        device_key=key,
        heapsize=HEAPSIZE,
        heap_probe_ms=HEAP_PROBE_MS,
    ) as board:
        port = serial.serial_for_url(board.uart_path, baudrate=115200, timeout=0.02)
        pump = threading.Thread(target=_pump, args=(port, peer, stop, errors), daemon=True)
        pump.start()
        try:
            board.wait_until(lambda b: b.lock_open, timeout=30)
            for _ in range(IMPRESSIONS):
                board.stamp()
            board.wait_until(lambda b: b.counter == IMPRESSIONS, timeout=60)
            # The peer's progress is not a board report: poll it, with a deadline.
            deadline = time.monotonic() + 60
            while peer.stored < IMPRESSIONS and not errors and time.monotonic() < deadline:
                time.sleep(0.05)
            if peer.stored < IMPRESSIONS:
                errors.append(f"the peer stored {peer.stored} of {IMPRESSIONS} events")
        finally:
            stop.set()
            pump.join(timeout=10)
            port.close()
        if errors or peer.errors:
            raise RuntimeError(f"peer: {errors or peer.errors[:5]}; log {board.log_path}")
        if board.alarms:
            raise RuntimeError(f"alarms {board.alarms} in a permitted run; log {board.log_path}")
        if board.heap_peak is None:
            raise RuntimeError(f"the board reported no heap figure; log {board.log_path}")
        return board.heap_peak


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-firmware-") as d:
        tmp = Path(d)
        fw = _build(tmp / "fw")
        mpy_total = sum(
            p.stat().st_size for pkg in ("seal", "sealproto") for p in (fw / pkg).glob("*.mpy")
        )
        code, elapsed_us, used, writes, erases, programmed = _impression_path(fw, tmp, "typical")
        instant_us = _impression_path(fw, tmp, "none")[1]
        heap_peak = _board_heap_peak(tmp)
    return [
        {
            "bench": "firmware",
            "impressions": IMPRESSIONS,
            "heapsize": HEAPSIZE,
            "heap_peak_bytes": heap_peak,
            # What importing the impression path costs in heap with its code in ROMFS.
            "heap_code_bytes": code,
            "mpy_total_bytes": mpy_total,
            # flash a backlog takes: whole blocks, one per journal segment
            "journal_bytes_per_event": round(used / BACKLOG, 1),
            # programs and erases, acks and compaction included (goal: at most 4)
            "flash_writes_per_event": round(writes / IMPRESSIONS, 2),
            "flash_erases_per_event": round(erases / IMPRESSIONS, 2),
            "flash_program_bytes_per_event": round(programmed / IMPRESSIONS),
            "impressions_per_s": round(IMPRESSIONS / (elapsed_us / 1e6), 1),
            # chip plus journal, the chip at the datasheet's typical times
            "seal_ms_per_impression": round(elapsed_us / IMPRESSIONS / 1000, 2),
            "chip_ms_per_impression": round((elapsed_us - instant_us) / IMPRESSIONS / 1000, 2),
        }
    ]


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
