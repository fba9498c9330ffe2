"""Which board a run is against, and what that board can do.

    --board emulated            the real firmware under micropython (sealink_sim.emulator)
    --board serial:URL          a real, provisioned board on any pyserial URL
    --board ble:ADDRESS         parsed; tests skip until BLE boards are supported

A test asks for what it needs, never for a kind of board: `@pytest.mark.requires("power_control")`
(or the `requires` fixture, at run time) skips it with the reason when the board lacks it, as
labgrid's `lg_feature` does. `capabilities()` says what a run's board has.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from dataclasses import dataclass

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_MARKERS",
    "BoardSpec",
    "ExternalPower",
    "capabilities",
    "skip_reason",
]

# capability -> what a test needs it for, and how a board gets it
CAPABILITIES = {
    "gpio": "press the stamp from the test (emulated control channel, or --press-cmd for an "
    "actuator)",
    "gpio_hold": "hold the stamp down and release it later (only the emulated control channel; "
    "an actuator does whole presses)",
    "power_control": "cut and restore the board's power (emulated, or "
    "--power-cmd-off/--power-cmd-on)",
    "flash_cut": "cut power at an exact flash block write (only the emulated board's block "
    "device can)",
    "rtc_control": "shift the device clock from the test (only the emulated board's RTC offset)",
    "emulator": "run the firmware under micropython on this machine (the default --board "
    "emulated; a bench run against a real board has no use for it)",
}
# The markers of earlier versions, kept for bench scripts: each is one `requires(...)`.
CAPABILITY_MARKERS = {
    "needs_power_control": "power_control",
    "needs_flash_cut": "flash_cut",
    "needs_gpio": "gpio",
    "needs_rtc_control": "rtc_control",
}

_BLE_ADDRESS = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f-]{36}$")


@dataclass(frozen=True)
class BoardSpec:
    """The parsed `--board` value."""

    kind: str
    target: str = ""

    @classmethod
    def parse(cls, text: str) -> BoardSpec:
        """argparse `type=`: a bad value becomes a usage error naming the accepted forms."""
        kind, _sep, target = text.partition(":")
        if text == "emulated":
            return cls("emulated")
        if kind == "serial" and target:
            return cls("serial", target)
        if kind == "ble" and _BLE_ADDRESS.match(target):
            return cls("ble", target)
        if kind == "ble":
            raise argparse.ArgumentTypeError(
                f"{text!r}: a BLE address is AA:BB:CC:DD:EE:FF (or a macOS UUID)"
            )
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'emulated', 'serial:URL' (a pyserial URL: /dev/ttyUSB0, "
            "socket://HOST:PORT, rfc2217://HOST:PORT) or 'ble:ADDRESS'"
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


def capabilities(spec: BoardSpec, *, power_cmds: bool, press_cmd: bool) -> frozenset[str]:
    if spec.kind == "emulated":
        return frozenset(CAPABILITIES)
    found = set()
    if power_cmds:
        found.add("power_control")
    if press_cmd:
        found.add("gpio")
    return frozenset(found)


def skip_reason(spec: BoardSpec, capability: str, caps: frozenset[str]) -> str | None:
    """Why a test that needs `capability` cannot run on this board, or None if it can."""
    if capability not in CAPABILITIES:
        raise ValueError(
            f"unknown capability {capability!r}; known: {', '.join(sorted(CAPABILITIES))}"
        )
    if capability in caps:
        return None
    return f"board {spec} lacks {capability}: this test needs to {CAPABILITIES[capability]}"


class ExternalPower:
    """A power switch driven by shell commands, like labgrid's ExternalPowerDriver."""

    def __init__(self, cmd_off: str, cmd_on: str, timeout_s: float = 30.0) -> None:
        self.cmd_off = cmd_off
        self.cmd_on = cmd_on
        self.timeout_s = timeout_s

    def _run(self, cmd: str) -> None:
        result = subprocess.run(
            shlex.split(cmd), capture_output=True, text=True, timeout=self.timeout_s, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"power command {cmd!r} failed with exit status {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )

    def off(self) -> None:
        self._run(self.cmd_off)

    def on(self) -> None:
        self._run(self.cmd_on)
