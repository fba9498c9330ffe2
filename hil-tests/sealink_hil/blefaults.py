"""The link fault engine on a BLE link: a Radio's `chunk_filter` (sealink_sim.air) that runs
every RX write and TX notification through `LinkFaults.on_chunk`.

    faults = BleFaults(LinkFaults(random.Random(seed)))
    board.radio.chunk_filter = faults            # called on the Air's thread
    faults.arm(WireFault("duplicate", D2H))      # or faults.draw(): a seeded BLE fault

A BLE link moves whole ATT PDUs and its link layer checks every bit (a CRC; a bad packet is
resent), so a chunk arrives whole or not at all: a drop that cuts any byte of a chunk loses the
whole chunk, and bit corruption is no BLE fault (`arm` refuses it, `draw` never picks it).
Delay and duplicate act on the chunk as the engine says; a stall holds chunks until it ends;
while the engine's link is down, chunks are lost. The engine only decides: the hang-up a
disconnect asks for (`take_hang_up()`) is for the test to act on with `radio.disconnect()`,
from its own thread (the filter runs on the Air's and must not wait on it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sealink_hil.linkfaults import FAULT_KINDS, Effect, LinkFaults, WireFault

__all__ = ["BLE_FAULT_KINDS", "BleFaults"]

BLE_FAULT_KINDS = tuple(kind for kind in FAULT_KINDS if kind != "corrupt")


class BleFaults:
    """A seeded engine as a Radio's chunk filter; `effects` lists what struck, in order."""

    def __init__(self, engine: LinkFaults, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self.effects: list[Effect] = []
        self._lock = threading.Lock()

    def draw(self, kinds: tuple[str, ...] = BLE_FAULT_KINDS) -> WireFault:
        """A random BLE fault from the engine's seeded stream, armed now."""
        if "corrupt" in kinds:
            raise ValueError("bit corruption is not a BLE fault: the link layer checks it")
        with self._lock:
            fault = self.engine.draw(kinds)
        self.arm(fault)
        return fault

    def arm(self, fault: WireFault) -> None:
        if fault.kind == "corrupt":
            raise ValueError("bit corruption is not a BLE fault: the link layer checks it")
        with self._lock:
            self.effects += self.engine.arm(fault, self.clock())

    def take_hang_up(self) -> bool:
        with self._lock:
            return self.engine.take_hang_up()

    def __call__(self, direction: str, data: bytes) -> list[tuple[float, bytes]]:
        with self._lock:
            now = self.clock()
            stall = self.engine.stall_left(now)
            verdict = self.engine.on_chunk(direction, data, now)
            self.effects += verdict.effects
        if verdict.lost or any(effect.kind == "drop" for effect in verdict.effects):
            return []
        delay = stall + max(0.0, verdict.release_at - now)
        return [(delay, chunk) for chunk in verdict.chunks]
