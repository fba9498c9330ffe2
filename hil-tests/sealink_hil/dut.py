"""The Dut layer: the device under test, one API over every kind of board.

App (the firmware) -> Port (the byte link, sealink_hil.port) -> Dut (this). Tests press the
stamp, cut and restore power, shift the clock and read the board's counter through a Dut;
what a board cannot do is in its `capabilities`, and a test that needs it is skipped before
it starts (sealink_hil.boards).

The counter is where the two boards differ most. The emulated board reports it on its console
the moment a record is journaled. A real board's console is not the protocol UART, so its
counter is what its own frames say on the link: HELLO and STATUS carry `next`, each EVENT its
counter (the wire log reads them from the bytes as the board sent them, before any fault).
Either way it starts from the board's history, never from 0.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .app import App
from .boards import BoardSpec, ExternalPower, capabilities
from .linkfaults import D2H
from .port import Port
from .wirelog import TX

if TYPE_CHECKING:
    from sealink_sim.emulator import EmulatedBoard

__all__ = ["Dut", "EmulatedDut", "SerialDut"]

_BOOT_TIMEOUT_S = 60.0


class Dut(Protocol):
    app: App
    port: Port
    spec: BoardSpec
    device_id: str
    device_key: bytes
    # The seal chip's public key (SPEC §4.1): what the gateway checks every record against.
    seal_key: bytes
    # The key file of the enrolment authority the board's firmware trusts (SPEC §5.11), to
    # enrol it with the suite's gateway; None: not enrolled, so it frees no journal space.
    authority_key: Path | None
    capabilities: frozenset[str]
    keeps_history: bool
    """The board outlives the test (a bench board): its history meets the next test's gateway."""

    @property
    def log_path(self) -> Path: ...

    @property
    def counter(self) -> int:
        """The newest event counter the board holds (its history included)."""

    @property
    def cut(self) -> bool:
        """The power is off: cut by the test, or at an armed flash write."""

    @property
    def boot_counter(self) -> int:
        """The counter the board recovered from its journal at this boot."""

    @property
    def block_writes(self) -> int | None: ...

    @property
    def firmware(self) -> str | None:
        """What the board's last HELLO said it runs."""

    def start(self) -> Dut: ...

    def stop(self) -> None: ...

    def stamp(self) -> None: ...

    def press(self) -> None: ...

    def release(self) -> None: ...

    def power_cut(self, at_write: int | None = None) -> None: ...

    def power_on(self) -> None: ...

    def set_rtc_offset(self, offset_s: float) -> None: ...

    def wait_until(self, predicate: Callable[[Dut], bool], timeout: float, what: str) -> None: ...


def _hello_firmware(port: Port) -> str | None:
    hello = port.wire.last("HELLO", D2H, TX)
    return None if hello is None else str(hello.get("firmware"))


class EmulatedDut:
    """The emulated board: the real firmware under micropython, GPIO and flash under our control.

    The board's UART pty outlives reboots (like a USB-serial adapter), so the Port stays
    attached through power cuts. The board lives in the test's own folder: no history.
    """

    keeps_history = False

    def __init__(
        self,
        app: App,
        port: Port,
        board: EmulatedBoard,
        device_key: bytes,
        authority_key: Path | None,
    ) -> None:
        self.app = app
        self.port = port
        self.board = board
        self.spec = BoardSpec("emulated")
        self.capabilities = capabilities(self.spec, power_cmds=False, press_cmd=False)
        self.device_id = board.device_id
        self.device_key = device_key
        # The provisioning station's work: the flash image and the key inside the chip.
        self.seal_key = board.provision()
        self.authority_key = authority_key

    @property
    def log_path(self) -> Path:
        return Path(self.board.log_path)

    @property
    def counter(self) -> int:
        return int(self.board.counter or 0)

    @property
    def cut(self) -> bool:
        return bool(self.board.powercut) or not self.board.running

    @property
    def block_writes(self) -> int:
        return int(self.board.block_writes)

    @property
    def boot_counter(self) -> int:
        """The first counter the firmware reported at this boot: what it recovered from flash."""
        return next((int(v) for name, v in self.board.reports if name == "counter"), 0)

    @property
    def firmware(self) -> str | None:
        return _hello_firmware(self.port)

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

    def stop(self) -> None:
        self.board.close()

    def stamp(self) -> None:
        self.board.stamp()

    def press(self) -> None:
        self.board.press()

    def release(self) -> None:
        self.board.release()

    def wait_until(self, predicate: Callable[[Dut], bool], timeout: float, what: str) -> None:
        try:
            self.board.wait_until(lambda _board: predicate(self), timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"waiting for {what}: {exc}") from None

    def power_cut(self, at_write: int | None = None) -> None:
        """Cut now; or reboot with a cut armed at the `at_write`-th flash write after the
        boot's own (counted on the booted board: a boot after a torn write writes more)."""
        self.board.power_cut()
        if at_write is not None:
            self.power_on()
            self.board.arm_power_cut(at_write)

    def power_on(self) -> None:
        self.board.start()
        self._settle()

    def set_rtc_offset(self, offset_s: float) -> None:
        """The emulated RTC offset is read at boot: the board comes back with a drifted clock."""
        self.board.rtc_offset_s = offset_s
        self.board.power_cut()
        self.power_on()


class SerialDut:
    """A real board on a pyserial URL; power and the stamp actuator through shell commands.

    It stays on the bench between tests and runs: it keeps its history.
    """

    keeps_history = True

    def __init__(
        self,
        app: App,
        port: Port,
        spec: BoardSpec,
        device_id: str,
        device_key: bytes,
        seal_key: bytes,
        *,
        authority_key: Path | None,
        power: ExternalPower | None,
        press_cmd: str | None,
        log_path: Path,
    ) -> None:
        self.app = app
        self.port = port
        self.spec = spec
        self.device_id = device_id
        self.device_key = device_key
        self.seal_key = seal_key
        self.authority_key = authority_key
        self.power = power
        self.press_cmd = press_cmd
        self._log_path = log_path
        self.capabilities = capabilities(
            spec, power_cmds=power is not None, press_cmd=press_cmd is not None
        )
        self.powered = True

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def counter(self) -> int:
        return self.port.wire.board_counter or 0

    @property
    def cut(self) -> bool:
        return not self.powered

    @property
    def boot_counter(self) -> int:
        return self.counter

    @property
    def block_writes(self) -> None:
        return None

    @property
    def firmware(self) -> str | None:
        return _hello_firmware(self.port)

    def wait_until(self, predicate: Callable[[Dut], bool], timeout: float, what: str) -> None:
        self.port.wire.wait_until(lambda _wire: predicate(self), timeout, what)

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

    def press(self) -> None:
        raise RuntimeError("an actuator does whole presses: the stamp cannot be held down")

    def release(self) -> None:
        raise RuntimeError("an actuator does whole presses: the stamp cannot be held down")

    def power_cut(self, at_write: int | None = None) -> None:
        if at_write is not None:
            raise RuntimeError("a real board cannot be cut at a flash block write")
        if self.power is None:
            raise RuntimeError("no power control: give --power-cmd-off and --power-cmd-on")
        self.power.off()
        self.powered = False

    def power_on(self) -> None:
        """Switch on and wait for the boot's HELLO: then the board's counter is known again."""
        mark = self.port.wire.mark()
        if self.power is not None:
            self.power.on()
        self.powered = True
        self.port.wire.wait_for(
            "HELLO", D2H, TX, mark, _BOOT_TIMEOUT_S, f"{self.device_id}'s HELLO after power on"
        )

    def set_rtc_offset(self, offset_s: float) -> None:
        raise RuntimeError("a real board's RTC cannot be shifted from the test")
