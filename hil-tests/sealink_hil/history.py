"""Where the board's history stands when a test starts: every count starts from here.

A board on a bench keeps its journal between tests and runs: the 40th test of the second run
meets a seal with hundreds of impressions behind it. So the suite never counts from 0. Once
the test's gateway has opened a session, the link itself says where things stand:

    WELCOME acked     L   what the gateway's ledger holds for the device
    STATUS next - 1   N0  the newest record the board holds (its counter)
    STATUS backlog        N0 - A, where A is what the board has seen acknowledged

A > L means the board was acknowledged by a ledger this gateway is not (the bench state was
lost, or the seal was used with another gateway): the gateway must refuse that seal (SPEC §5,
"STATUS: device acked beyond the ledger"), so the test fails at once and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from .dut import Dut
from .linkfaults import D2H, H2D
from .wirelog import TX, Frame

__all__ = ["History", "HistoryError", "fresh_history", "read_history"]

_SESSION_TIMEOUT_S = 30.0


class HistoryError(AssertionError):
    """The board's history and the gateway's ledger disagree; the message says how to fix it."""


@dataclass(frozen=True)
class History:
    device: str
    counter: int  # N0: the newest record the board holds at the test's start
    ledger: int  # L: the newest the gateway's ledger holds (WELCOME acked)
    board_acked: int  # A: the newest the board has seen acknowledged
    boot: int  # the board's boot id (HELLO)
    firmware: str  # what the board says it runs (HELLO)

    def __str__(self) -> str:
        return (
            f"{self.device} counter N0={self.counter} ledger L={self.ledger} "
            f"board acked A={self.board_acked} boot={self.boot}"
        )

    def properties(self) -> list[tuple[str, object]]:
        """For the JUnit XML: where each test started."""
        return [
            ("history_counter", self.counter),
            ("history_ledger", self.ledger),
            ("history_board_acked", self.board_acked),
            ("board_boot", self.boot),
            ("board_firmware", self.firmware),
        ]


def fresh_history(dut: Dut) -> History:
    """A board provisioned for this test meeting a ledger made for it: its console says it all.

    Nothing to read from the link, so nothing to wait for: the test starts at once, as a fresh
    emulated board's tests always have (the session opens while they stamp).
    """
    hello = dut.port.wire.last("HELLO", D2H, TX)
    return History(
        device=dut.device_id,
        counter=dut.counter,
        ledger=0,
        board_acked=0,
        boot=int(hello.get("boot")) if hello else -1,
        firmware=str(hello.get("firmware")) if hello else "?",
    )


def read_history(dut: Dut, state: str, since: int = 0) -> History:
    """Wait for the session the test's gateway opens (its first WELCOME), and read it.

    The wire log is the test's own, so its first WELCOME is this gateway's. `state` names
    where the gateway's ledger lives, for the message when it is behind.
    """
    wire = dut.port.wire
    welcome = wire.wait_for(
        "WELCOME", H2D, TX, since, _SESSION_TIMEOUT_S, f"the gateway's WELCOME to {dut.device_id}"
    )
    hello = wire.last("HELLO", D2H, TX, since) or wire.last("HELLO", D2H, TX)

    def statuses() -> list[Frame]:
        return [f for f in wire.frames("STATUS", D2H, TX, since) if f.at >= welcome.at]

    wire.wait_until(
        lambda _wire: bool(statuses()),
        _SESSION_TIMEOUT_S,
        f"{dut.device_id}'s STATUS after the WELCOME",
    )
    status = statuses()[0]
    newest = int(status.get("next")) - 1
    board_acked = newest - int(status.get("backlog"))
    ledger = int(welcome.get("acked"))
    history = History(
        device=dut.device_id,
        counter=max(dut.counter, newest),
        ledger=ledger,
        board_acked=board_acked,
        boot=int(hello.get("boot")) if hello else -1,
        firmware=str(hello.get("firmware")) if hello else "?",
    )
    if board_acked > ledger:
        raise HistoryError(
            f"{history}: the board has seen counters up to {board_acked} acknowledged, but "
            f"this gateway's ledger ({state}) holds only up to {ledger}. The bench state was "
            "lost or the seal was used with another gateway; a gateway refuses such a seal. "
            "Point --hil-state at the folder of the runs before, or re-provision the board "
            f"(tools/provision.py) to start its history again; decoded wire log: {wire.path}"
        )
    return history
