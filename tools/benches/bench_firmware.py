"""Firmware figures: 1,000 impressions through the real firmware under `micropython`.

The run drives the firmware's impression path (Guard -> Recorder -> Journal on the emulated
board's littlefs block device) without the UART, so the figure is the device's own cost:
build the event, MAC it, chain it, append it durably, count it. Heap is sampled around every
impression (after a collection before it, without one after it: an upper bound of what the
impression held). The run is tried at -X heapsize=64k; if that heap is too small the figures
come from a larger heap and `fits_64k` says so.

    {"bench": "firmware", "heap_peak_bytes": ..., "mpy_total_bytes": ...,
     "journal_bytes_per_event": ..., "impressions_per_s": ..., ...}
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
IMPRESSIONS = 1000
HEAPSIZES = ("64k", "96k", "128k", "256k")

# Runs under micropython with MICROPYPATH = the emulated board's .mpy build.
_RUN = """
import gc, os, sys, time, vfs
import asyncio
gc.collect()
base = gc.mem_alloc()
from flashdev import BLOCK_SIZE, FileBlockDevice
from seal.events import Recorder, Uptime
from seal.guard import Guard
from seal.journal import Journal
from seal.permits import Permits
gc.collect()
code = gc.mem_alloc()
N = int(os.getenv("SEAL_N"))
IMG = os.getenv("SEAL_IMG")
dev = FileBlockDevice(IMG)
vfs.VfsLfs2.mkfs(dev)
dev = FileBlockDevice(IMG)
vfs.mount(vfs.VfsLfs2(dev), "/flash")
class Pin:
    def value(self, v=None):
        return 0
now = 1795000000
j = Journal("/flash/journal", capacity_events=N + 16).open()
boot = j.new_boot()
free0 = os.statvfs("/flash")[3]
rec = Recorder(j, bytes(32), boot, lambda: now, Uptime())
permits = Permits(lambda: now)
permits.grant(1, N + 1, now - 60, now + 3600, 42)
g = Guard(j, rec, permits, Pin(), Pin(), lambda n, v: None, lambda: now, lambda ms: None, 3300)
g.update_lock()
w0 = dev.writes
peak = 0
gc.collect()
t0 = time.ticks_us()
for i in range(N):
    gc.collect()
    asyncio.run(g.on_press(1))
    asyncio.run(g.on_press(0))
    a = gc.mem_alloc()
    if a > peak:
        peak = a
t1 = time.ticks_us()
assert j.next_counter == N + 1, j.next_counter
used = (free0 - os.statvfs("/flash")[3]) * BLOCK_SIZE
print("RESULT", peak, code - base, time.ticks_diff(t1, t0), used, dev.writes - w0)
"""


def _build(out: Path) -> Path:
    spec = importlib.util.spec_from_file_location("_seal_build", ROOT / "tools" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.build("emulated", out)
    return out


def _micropython() -> str:
    return str(Path(sys.executable).parent / "micropython")


def _run(fw: Path, tmp: Path, heapsize: str) -> list[int] | None:
    img = tmp / f"bench-{heapsize}.img"
    img.write_bytes(b"\xff" * (512 * 4096))
    env = {"MICROPYPATH": f".frozen:{fw}", "SEAL_N": str(IMPRESSIONS), "SEAL_IMG": str(img)}
    proc = subprocess.run([_micropython(), "-X", f"heapsize={heapsize}", "-c", _RUN],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return [int(x) for x in line.split()[1:]]
    if "MemoryError" in proc.stdout + proc.stderr:
        return None
    raise RuntimeError(f"firmware bench failed at heapsize={heapsize}:\n{proc.stdout}{proc.stderr}")


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-firmware-") as d:
        tmp = Path(d)
        fw = _build(tmp / "fw")
        mpy_total = sum(p.stat().st_size for pkg in ("seal", "sealproto")
                        for p in (fw / pkg).glob("*.mpy"))
        for heapsize in HEAPSIZES:
            result = _run(fw, tmp, heapsize)
            if result is not None:
                break
        else:
            raise RuntimeError(f"firmware bench: MemoryError even at heapsize={HEAPSIZES[-1]}")
    peak, code, elapsed_us, used, writes = result
    return [{
        "bench": "firmware",
        "impressions": IMPRESSIONS,
        "heapsize": heapsize,
        "fits_64k": heapsize == "64k",
        "heap_peak_bytes": peak,
        # Of the peak, what the loaded .mpy code takes (frozen on a device, so not RAM there).
        "heap_code_bytes": code,
        "mpy_total_bytes": mpy_total,
        "journal_bytes_per_event": round(used / IMPRESSIONS, 1),
        "flash_writes_per_event": round(writes / IMPRESSIONS, 2),
        "impressions_per_s": round(IMPRESSIONS / (elapsed_us / 1e6), 1),
    }]


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
