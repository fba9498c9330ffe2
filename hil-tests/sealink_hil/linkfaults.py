"""The link fault engine: which bytes a faulty link drops, flips, repeats, holds or loses.

Sans-IO, as sealproto is: a relay hands each chunk it read to `on_chunk(direction, data, now)`
and gets back what to deliver and when; it asks `stall_left(now)`, `connected(now)` and
`take_hang_up()` before it moves bytes. The engine never reads a clock, a file or a socket, so
the pty relay (sealink_hil.relay) and a BLE relay (GATT writes and notifications are chunks
too) share it, and a test can drive it with a fake clock.

Faults, each drawn from the caller's seeded `random.Random` (`draw`) or given exactly:
    drop N         the next N bytes in one direction vanish
    corrupt N      the next N bytes each get one random bit flipped
    duplicate      the next chunk is delivered twice
    delay MS       the next chunk (and so everything behind it) is held MS milliseconds
    stall MS       nothing moves in either direction for MS; bytes queue, none are lost
    disconnect MS  the host side is hung up; bytes in either direction are lost for MS
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

__all__ = [
    "D2H",
    "DIRECTIONS",
    "FAULT_KINDS",
    "H2D",
    "Effect",
    "LinkFaults",
    "Verdict",
    "WireFault",
]

D2H = "D>H"
H2D = "H>D"
DIRECTIONS = (D2H, H2D)
FAULT_KINDS = ("drop", "corrupt", "duplicate", "delay", "stall", "disconnect")
# How a fault's size is drawn: bytes for drop and corrupt, milliseconds for the timed ones.
_AMOUNTS = {
    "drop": (1, 40),
    "corrupt": (1, 4),
    "duplicate": (1, 1),
    "delay": (20, 400),
    "stall": (100, 1500),
    "disconnect": (100, 1000),
}


@dataclass
class WireFault:
    """One fault armed on the link; `amount` is bytes (drop, corrupt) or milliseconds."""

    kind: str
    direction: str = D2H
    amount: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown wire fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be {D2H!r} or {H2D!r}, not {self.direction!r}")

    @classmethod
    def random(cls, rng: random.Random, kinds: tuple[str, ...] = FAULT_KINDS) -> WireFault:
        kind = rng.choice(kinds)
        direction = rng.choice(DIRECTIONS)
        low, high = _AMOUNTS[kind]
        return cls(kind, direction, rng.randint(low, high))


@dataclass(frozen=True)
class Effect:
    """What a fault did, for the hexdump and the decoded wire log."""

    direction: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.direction} FAULT {self.kind} {self.detail}"


@dataclass
class Verdict:
    """The engine's answer for one chunk: deliver `chunks`, in order, not before `release_at`."""

    release_at: float
    chunks: list[bytes]
    effects: list[Effect] = field(default_factory=list)
    lost: bool = False


class LinkFaults:
    """The faults armed on one link and the seeded choices they make (which byte, which bit).

    Not thread-safe: a relay calls it under its own lock. `applied` lists, once each, the
    faults that struck; `rng` makes every choice, so a seed replays a run byte for byte.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.applied: list[WireFault] = []
        self._armed: dict[str, collections.deque[WireFault]] = {
            D2H: collections.deque(),
            H2D: collections.deque(),
        }
        self._stall_until = 0.0
        self._down_until = 0.0
        self._hang_up = False

    # -- decisions ------------------------------------------------------------------------

    def draw(self, kinds: tuple[str, ...] = FAULT_KINDS) -> WireFault:
        """A random fault of one of `kinds`, from this engine's seeded stream."""
        return WireFault.random(self.rng, kinds)

    def arm(self, fault: WireFault, now: float) -> list[Effect]:
        """Byte faults wait for the next bytes in their direction; timed ones start `now`."""
        if fault.kind == "stall":
            self._stall_until = max(self._stall_until, now + fault.amount / 1000)
            return [self._struck(fault, f"nothing moves for {fault.amount} ms")]
        if fault.kind == "disconnect":
            self._down_until = max(self._down_until, now + fault.amount / 1000)
            self._hang_up = True
            return [self._struck(fault, f"host side hung up for {fault.amount} ms")]
        self._armed[fault.direction].append(fault)
        return []

    # -- what the relay asks --------------------------------------------------------------

    def stall_left(self, now: float) -> float:
        """Seconds until bytes may move again (0.0: they may move now)."""
        return max(0.0, self._stall_until - now)

    def connected(self, now: float) -> bool:
        return now >= self._down_until

    def take_hang_up(self) -> bool:
        """True once per disconnect: the relay must hang up the host side (and drop its queue)."""
        hang_up, self._hang_up = self._hang_up, False
        return hang_up

    def on_chunk(self, direction: str, data: bytes, now: float) -> Verdict:
        """Apply the faults armed in `direction` to a chunk just read from its sender."""
        if not self.connected(now):
            effect = Effect(direction, "disconnect", f"lost {len(data)} bytes: cable unplugged")
            return Verdict(now, [], [effect], lost=True)
        armed = self._armed[direction]
        chunks = [data]
        effects: list[Effect] = []
        delay_ms = 0
        while armed and chunks[-1]:
            fault = armed[0]
            chunk = chunks[-1]
            if fault.kind == "drop":
                cut = min(fault.amount, len(chunk))
                effects.append(self._struck(fault, f"dropped {chunk[:cut].hex(' ')}"))
                chunks[-1] = chunk[cut:]
                fault.amount -= cut
            elif fault.kind == "corrupt":
                # Distinct bytes: one bit flipped twice would put the byte back, no fault at all.
                struck = min(fault.amount, len(chunk))
                out = bytearray(chunk)
                for index in sorted(self.rng.sample(range(len(chunk)), struck)):
                    out[index] ^= 1 << self.rng.randrange(8)
                    detail = f"byte {index}: {chunk[index]:02x} -> {out[index]:02x}"
                    effects.append(self._struck(fault, detail))
                chunks[-1] = bytes(out)
                fault.amount -= struck
                if fault.amount > 0:
                    break  # every byte of this chunk struck: the rest go to the next chunks
            elif fault.kind == "duplicate":
                effects.append(self._struck(fault, f"{len(chunk)} bytes delivered twice"))
                chunks.append(chunk)
                fault.amount = 0
            else:  # delay
                effects.append(self._struck(fault, f"{len(chunk)} bytes held {fault.amount} ms"))
                delay_ms += fault.amount
                fault.amount = 0
            if fault.amount <= 0:
                armed.popleft()
            if fault.kind in ("duplicate", "delay"):
                break
        return Verdict(now + delay_ms / 1000, [chunk for chunk in chunks if chunk], effects)

    def _struck(self, fault: WireFault, detail: str) -> Effect:
        """Every effect is reported; a fault is listed in `applied` once, however many chunks."""
        if not any(seen is fault for seen in self.applied):
            self.applied.append(fault)
        return Effect(fault.direction, fault.kind, detail)
