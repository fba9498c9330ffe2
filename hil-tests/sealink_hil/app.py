"""The App layer: the firmware under test, as built from this checkout (pytest-embedded's App).

An emulated board runs exactly this build (tools/build.py, compiled on first use). A real
board runs whatever was flashed on it: its HELLO names it (`seal-0.1.0/esp32`), and the Dut
records that beside the App's sha, so a report says what was meant and what answered.
"""

from __future__ import annotations

import ast
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["App", "firmware_sha", "firmware_version"]

REPO = Path(__file__).resolve().parents[2]
# What the firmware image is built from: an edit under these makes the sha "-dirty".
_FIRMWARE_SOURCES = ("firmware", "boards", "protocol/sealproto")


@dataclass(frozen=True)
class App:
    """The firmware the run means to test."""

    sha: str  # the commit it is built from, "-dirty" if its sources differ from it
    version: str  # FIRMWARE in firmware/seal/app.py, e.g. "seal-0.1.0"
    board: str  # the board it is built for: "emulated", or the kind a --board names

    @classmethod
    def from_checkout(cls, board: str) -> App:
        return cls(firmware_sha(), firmware_version(), board)

    def describe(self) -> str:
        return f"{self.version} @ {self.sha} for {self.board}"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-optional-locks: other people work in this tree; never touch its index.
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@cache
def firmware_sha() -> str:
    """The commit the firmware is built from, `-dirty` if its sources differ from it."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        changed = _git("diff", "--quiet", "HEAD", "--", *_FIRMWARE_SOURCES).returncode != 0
        untracked = _git("ls-files", "--others", "--exclude-standard", "--", *_FIRMWARE_SOURCES)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = head.stdout.strip() if head.returncode == 0 else "unknown"
    if sha != "unknown" and (changed or untracked.stdout.strip()):
        sha += "-dirty"
    return sha


@cache
def firmware_version() -> str:
    """The firmware's FIRMWARE constant, read (not imported: it is MicroPython code)."""
    try:
        tree = ast.parse((REPO / "firmware" / "seal" / "app.py").read_text())
    except (OSError, SyntaxError):
        return "unknown"
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "FIRMWARE"
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    return "unknown"
