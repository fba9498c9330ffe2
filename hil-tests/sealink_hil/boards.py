"""The Dut layer: which board the suite runs against, what it can do, and one API over all of them.

    --board emulated            the real firmware under micropython (sealink_sim.emulator)
    --board serial:URL          a real, provisioned board on any pyserial URL
    --board ble:ADDRESS         parsed; tests skip until BLE boards are supported

A capability a board lacks turns into a skip with a reason (labgrid's `lg_feature` idea): the
`needs_*` markers below name capabilities, `capabilities()` says which ones a run has.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CAPABILITY_MARKERS",
    "BoardSpec",
    "EmulatedDut",
    "ExternalPower",
    "SerialDut",
    "capabilities",
]

# marker -> (capability, why a board may lack it)
CAPABILITY_MARKERS = {
    "needs_power_control": (
        "power_control",
        "cut and restore the board's power (emulated, or --power-cmd-off/--power-cmd-on)",
    ),
    "needs_flash_cut": (
        "flash_cut",
        "cut power at an exact flash block write (only the emulated board's block device can)",
    ),
    "needs_gpio": (
        "gpio",
        "press the stamp from the test (emulated control channel, or --press-cmd for an actuator)",
    ),
    "needs_rtc_control": (
        "rtc_control",
        "shift the device clock from the test (only the emulated board's RTC offset)",
    ),
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
        return frozenset({"power_control", "flash_cut", "gpio", "rtc_control"})
    found = set()
    if power_cmds:
        found.add("power_control")
    if press_cmd:
        found.add("gpio")
    return frozenset(found)


def skip_reason(spec: BoardSpec, marker: str, caps: frozenset[str]) -> str | None:
    capability, what = CAPABILITY_MARKERS[marker]
    if capability in caps:
        return None
    return f"board {spec} lacks {capability}: this test needs to {what}"


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


class EmulatedDut:
    """The emulated board: the real firmware under micropython, GPIO and flash under our control.

    The board's UART pty outlives reboots (like a USB-serial adapter), so the wire proxy stays
    attached through power cuts.
    """

    def __init__(
        self,
        workdir: Path,
        device_id: str,
        device_key: bytes,
        *,
        rtc_offset_s: float = 0.0,
        heapsize: str = "64k",
    ) -> None:
        from sealink_sim.emulator import EmulatedBoard  # the emulation extra: x86_64 Linux only

        self.spec = BoardSpec("emulated")
        self.capabilities = capabilities(self.spec, power_cmds=False, press_cmd=False)
        self.device_id = device_id
        self.device_key = device_key
        self.board: Any = EmulatedBoard(
            workdir,
            device_id=device_id,
            device_key=device_key,
            heapsize=heapsize,
            rtc_offset_s=rtc_offset_s,
        )
        self.boot_writes = 0

    @property
    def port_url(self) -> str:
        return str(self.board.uart_path)

    @property
    def log_path(self) -> Path:
        return Path(self.board.log_path)

    @property
    def counter(self) -> int:
        """The newest event counter the board reported (0 before its first event)."""
        return int(self.board.counter or 0)

    @property
    def cut(self) -> bool:
        """The power is off: cut now, or at an armed flash write."""
        return bool(self.board.powercut) or not self.board.running

    @property
    def block_writes(self) -> int:
        return int(self.board.block_writes)

    @property
    def boot_counter(self) -> int:
        """The counter the firmware recovered from flash at this boot (its first report)."""
        return next((int(v) for name, v in self.board.reports if name == "counter"), 0)

    def start(self) -> EmulatedDut:
        self.board.start()
        self._settle()
        return self

    def _settle(self) -> None:
        """Wait until boot-time records (a REBOOT event after a torn write) are journaled.

        The control channel serves commands only once the firmware watches its inputs, which
        it does after its boot records: a no-op command answered means the boot is done.
        """
        if self.board.running:
            self.board.release()
            self.boot_writes = int(self.board.block_writes)

    def stop(self) -> None:
        self.board.close()

    def stamp(self) -> None:
        self.board.stamp()

    def press(self) -> None:
        self.board.press()

    def release(self) -> None:
        self.board.release()

    def wait_until(
        self, predicate: Callable[[EmulatedDut], bool], timeout: float, what: str
    ) -> None:
        try:
            self.board.wait_until(lambda _board: predicate(self), timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"waiting for {what}: {exc}") from None

    def power_cut(self, at_write: int | None = None) -> None:
        """Cut now; or reboot with a cut armed at the `at_write`-th flash write after boot."""
        self.board.power_cut()
        if at_write is not None:
            self.board.power_cut_at_write = self.boot_writes + at_write
            self.power_on()

    def power_on(self) -> None:
        self.board.start()
        self._settle()

    def set_rtc_offset(self, offset_s: float) -> None:
        """The emulated RTC offset is read at boot: the board comes back with a drifted clock."""
        self.board.rtc_offset_s = offset_s
        self.board.power_cut()
        self.power_on()


class SerialDut:
    """A real board on a pyserial URL; power and the stamp actuator through shell commands."""

    def __init__(
        self,
        spec: BoardSpec,
        device_id: str,
        device_key: bytes,
        *,
        power: ExternalPower | None,
        press_cmd: str | None,
        log_path: Path,
    ) -> None:
        self.spec = spec
        self.device_id = device_id
        self.device_key = device_key
        self.power = power
        self.press_cmd = press_cmd
        self.log_path = log_path
        self.capabilities = capabilities(
            spec, power_cmds=power is not None, press_cmd=press_cmd is not None
        )
        self.powered = True
        self.observer: Any = None

    @property
    def port_url(self) -> str:
        return self.spec.target

    def attach(self, observer: Any) -> None:
        """A real board reports its counter on its REPL, not on the link: the observer knows."""
        self.observer = observer

    @property
    def counter(self) -> int:
        return int(self.observer.device(self.device_id).contiguous) if self.observer else 0

    @property
    def cut(self) -> bool:
        return not self.powered

    @property
    def boot_counter(self) -> int:
        return self.counter

    def wait_until(self, predicate: Callable[[SerialDut], bool], timeout: float, what: str) -> None:
        if self.observer is None:
            raise RuntimeError("attach an observer first: a real board's counter comes from it")
        from sealink import ObserverError

        try:
            self.observer.wait_until(lambda _obs: predicate(self), timeout, what)
        except ObserverError as exc:
            raise TimeoutError(str(exc)) from None

    def start(self) -> SerialDut:
        if self.power is not None:
            self.power.on()
        self.powered = True
        return self

    def stop(self) -> None:
        self.powered = False

    def stamp(self) -> None:
        if self.press_cmd is None:
            raise RuntimeError("no stamp actuator: give --press-cmd")
        subprocess.run(shlex.split(self.press_cmd), check=True, timeout=30)

    def power_cut(self, at_write: int | None = None) -> None:
        if at_write is not None:
            raise RuntimeError("a real board cannot be cut at a flash block write")
        if self.power is None:
            raise RuntimeError("no power control: give --power-cmd-off and --power-cmd-on")
        self.power.off()
        self.powered = False

    def power_on(self) -> None:
        if self.power is not None:
            self.power.on()
        self.powered = True

    def set_rtc_offset(self, offset_s: float) -> None:
        raise RuntimeError("a real board's RTC cannot be shifted from the test")
