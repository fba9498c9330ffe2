"""The Port layer: the byte link between the board and the gateway (pytest-embedded's Serial).

App (the built firmware) -> Port (this) -> Dut (the device API tests use). A Port takes the
board's end of the link (`board_url`), offers the gateway an end of its own (`host_url`), and
in between runs every chunk past a fault engine (sealink_hil.linkfaults) and two taps: the
hexdump and the decoded wire log. Today's Port is a pty relay over any pyserial URL; a BLE
Port (a bumble relay between the board's GATT server and the gateway's central) would give the
same engine and taps other chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .linkfaults import LinkFaults, WireFault
from .relay import PtyRelay
from .wirelog import Hexdump, WireLog

__all__ = ["Port", "open_port"]


class Port(Protocol):
    """What the Dut, the gateway fixture and the fault injection need of a link."""

    kind: str
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
