"""The Port of an emulated board over BLE: its GATT peripheral and the gateway's central on a
virtual air (sealink_sim.air), every chunk past the fault engine and the taps.

    board (firmware, boards/emulated/bluetooth.py) <-> Radio <-air-> gateway (ble://… over HCI/TCP)

A chunk here is one ATT Write Command (host to seal) or Handle Value Notification (seal to
host): the Radio hands each to `_chunk` before delivering it and delivers what the fault engine
answers, when it answers, in order. The link layer's CRC and retransmissions make a BLE link
lose or flip no bit, so `corrupt` is not a fault this Port offers (`fault_kinds`); `drop`,
`duplicate` and `delay` act on whole ATT chunks as a broken stack would (sealink_hil.blefaults
decides), `stall` holds both directions, and `disconnect` is the seal dropping the connection
(the gateway finds it again when it advertises).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .blefaults import BLE_FAULT_KINDS, BleFaults
from .linkfaults import Effect, LinkFaults, WireFault
from .wirelog import Hexdump, WireLog

if TYPE_CHECKING:
    from sealink_sim.air import Air
    from sealink_sim.emulator import EmulatedBoard

__all__ = ["BleAirPort"]


class BleAirPort:
    """The Port (sealink_hil.port) of an EmulatedBoard whose link is BLE; it closes the air
    it is given when it closes."""

    kind = "ble"
    fault_kinds: tuple[str, ...] = BLE_FAULT_KINDS

    def __init__(
        self,
        board: EmulatedBoard,
        air: Air,
        engine: LinkFaults,
        hexdump: Hexdump,
        wire: WireLog,
        mtu: int,
    ) -> None:
        self.board = board
        self._air = air
        self.engine = engine
        self._faults = BleFaults(engine)
        self.hexdump = hexdump
        self.wire = wire
        self.board_url = f"ble://{board.device_id}"
        self._host_url = f"{board.ble_url(air.central_hci())}&mtu={mtu}"
        self.error: BaseException | None = None

    @property
    def host_url(self) -> str:
        return self._host_url

    @property
    def applied(self) -> list[WireFault]:
        return self.engine.applied

    @property
    def connected(self) -> bool:
        return self.engine.connected(time.monotonic())

    def start(self) -> BleAirPort:
        # Every boot's Radio asks the board for its filter (EmulatedBoard.chunk_filter).
        self.board.chunk_filter = self._chunk
        self._note(f"BLE port up: {self.board_url} <-> gateway at {self._host_url}")
        return self

    def close(self) -> None:
        self.board.chunk_filter = None
        self._air.close()
        self._note("BLE port closed")

    def inject(self, fault: WireFault) -> None:
        if fault.kind not in self.fault_kinds:
            raise ValueError(f"{fault.kind!r} is not a BLE fault; known: {self.fault_kinds}")
        seen = len(self._faults.effects)
        self._faults.arm(fault)
        self._taps(seen)
        if self._faults.take_hang_up():
            radio = self.board.radio
            if radio is not None and radio.connected:
                radio.disconnect()
            self._note("the seal dropped the BLE connection")

    def release(self, direction: str) -> int:
        # The Radio's queue holds delayed chunks; it delivers them in order on its own clock.
        self._note(f"{direction} release: a BLE delay runs its course")
        return 0

    # -- on the air's thread --------------------------------------------------------------

    def _chunk(self, direction: str, data: bytes) -> list[tuple[float, bytes]]:
        now = time.monotonic()
        self.hexdump.chunk(direction, data)
        self.wire.tx(direction, data, now)
        seen = len(self._faults.effects)
        deliveries = self._faults(direction, data)
        self._taps(seen)
        for delay, chunk in deliveries:
            self.wire.rx(direction, chunk, now + delay)
        return deliveries

    def _taps(self, seen: int) -> None:
        for effect in self._faults.effects[seen:]:
            self._effect(effect)

    def _note(self, text: str) -> None:
        self.hexdump.note(text)
        self.wire.note(text)

    def _effect(self, effect: Effect) -> None:
        self.hexdump.note(str(effect))
        self.wire.effect(effect)
