"""Host absent: the emulated board (real firmware, real micropython) records impressions with
nobody on its UART until its journal is all but full, loses power, boots again, then drains them
in order to a peer host speaking the protocol over the board's pty. The peer (mpy/peer.py,
sealproto only) accepts an event only if its device MAC verifies, its counter is the next one
and its prev-hash chains; anything else is recorded."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpy"))

from peer import Peer
from sealproto import messages

serial = pytest.importorskip("serial")
emulator = pytest.importorskip("sealink_sim.emulator")

# The boards' journal holds 2,000 records (boards/*/board.py JOURNAL_CAPACITY): 1,990 presses
# and the records they bring fill it to within a few. A boot with that backlog once ran out of
# heap listing the journal's segments.
IMPRESSIONS = int(os.environ.get("SEAL_TEST_IMPRESSIONS", "1990"))
# The device's RAM budget; the firmware's code runs from the emulated flash (ROMFS image).
HEAPSIZE = os.environ.get("SEAL_TEST_HEAPSIZE", "96k")
DRAIN_TIMEOUT_S = 240.0


def _pump(port: serial.Serial, peer: Peer, until, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"peer has {peer.stored} of {IMPRESSIONS} events after "
                f"{timeout:.0f} s; errors {peer.errors[:5]!r}"
            )
        data = port.read(4096)
        if data:
            answer = peer.feed(data)
            if answer:
                port.write(answer)


# ~100 s (1,990 presses through the real firmware): `make test-slow`.
@pytest.mark.slow
def test_a_journal_filled_without_host_survives_a_power_cut_then_drains_in_order(
    tmp_path: Path,
) -> None:
    key = os.urandom(32)
    with emulator.EmulatedBoard(
        tmp_path, device_id="seal-absent", device_key=key, heapsize=HEAPSIZE
    ) as board:
        start = board.counter
        assert start == 0, "a fresh board starts at counter 0"
        for _ in range(IMPRESSIONS):
            board.stamp()  # returns once the board applied it
        board.power_cut()
        board.start()
        peer = Peer(key)
        port = serial.serial_for_url(board.uart_path, baudrate=115200, timeout=0.05)
        try:
            port.write(peer.sync())
            # The board's counter includes the record of its second boot, made as it boots
            # (long before the backlog ahead of it is drained).
            _pump(
                port,
                peer,
                lambda: peer.stored >= (board.counter or 0) > IMPRESSIONS,
                DRAIN_TIMEOUT_S,
            )
        finally:
            port.close()
        recorded = board.counter
        device_log = board.log_path
    assert recorded is not None and peer.counters() == list(range(1, recorded + 1)), device_log
    assert [e for e in peer.errors if e[0] != "session"] == [], (peer.errors, device_log)
    kinds = Counter(messages.decode(p)[messages.EV_KIND] for p in peer.events)
    # No host ever granted a permit: every press was with the lock shut, and recorded.
    assert kinds[messages.KIND_FORCED] == IMPRESSIONS, kinds
    assert len(peer.hellos) >= 1
