"""The Port layer: the byte link between the board and the gateway (pytest-embedded's Serial).

App (the built firmware) -> Port (this) -> Dut (the device API tests use). A Port takes the
board's end of the link (`board_url`), offers the gateway an end of its own (`host_url`), and
in between runs every chunk past a fault engine (sealink_hil.linkfaults) and two taps: the
hexdump and the decoded wire log. Two Ports: a pty relay over any pyserial URL
(sealink_hil.relay), and the emulated board's BLE link on a virtual air, whose chunks are ATT
writes and notifications (sealink_hil.bleport).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .linkfaults import LinkFaults, WireFault
from .relay import PtyRelay
from .wirelog import Hexdump, WireLog

__all__ = ["BLE_TRANSPORTS", "TRANSPORTS", "Port", "open_port"]

# The links a test marked `transports` runs over (plugin's `transport` fixture).
TRANSPORTS = ("serial", "ble")
# The BLE links a test can ask for, by the ATT MTU the gateway's central asks for (SPEC §6).
BLE_TRANSPORTS = {"ble": 247, "ble-mtu23": 23}


class Port(Protocol):
    """What the Dut, the gateway fixture and the fault injection need of a link."""

    kind: str
    # The wire faults this link can have (sealink_hil.linkfaults.FAULT_KINDS, or fewer).
    fault_kinds: tuple[str, ...]
    board_url: str
    engine: LinkFaults
    wire: WireLog
    hexdump: Hexdump
    error: BaseException | None

    @property
    def host_url(self) -> str: ...

    @property
    def applied(self) -> list[WireFault]: ...

    @property
    def connected(self) -> bool: ...

    def inject(self, fault: WireFault) -> None: ...

    def release(self, direction: str) -> int:
        """Deliver now whatever a delay still holds in `direction`."""

    def start(self) -> Port: ...

    def close(self) -> None: ...


def open_port(
    board_url: str, host_link: Path, engine: LinkFaults, hexdump: Hexdump, wire: WireLog
) -> Port:
    """The Port for a board reachable at a pyserial URL, started."""
    return PtyRelay(board_url, host_link, engine, hexdump, wire).start()
