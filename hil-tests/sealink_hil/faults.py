"""Seeded fault injection across every part of the link, each fault recorded as it happens.

One `Faults` per test: its seed is printed at the start and written first in faults.jsonl, so
a failing run replays with `--hil-seed SEED`. Every choice (which fault, where, how long, which
byte a corruption hits) comes from a stream derived from that seed: `rng` for the test and the
soak's schedule, `stream(name)` for each part that decides on its own (the link's fault engine
gets `stream("wire")`), so one part's draws never shift another's. The objects faulted are the
suite's own layers (a Dut, its Port, the gateway process, the broker); this module decides and
records, they act.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any, Protocol

from .artifacts import FAULTS, Artifacts
from .linkfaults import FAULT_KINDS, WireFault

__all__ = ["ALL_KINDS", "WIRE_KINDS", "Faults"]

WIRE_KINDS = tuple(f"wire_{kind}" for kind in FAULT_KINDS)
ALL_KINDS = (
    "power_cut_write",
    "power_cut_random",
    *WIRE_KINDS,
    "host_kill",
    "broker_restart",
    "clock_jump",
    "rtc_drift",
)


class _Board(Protocol):
    def power_cut(self, at_write: int | None = None) -> None: ...
    def set_rtc_offset(self, offset_s: float) -> None: ...


class _Link(Protocol):
    def inject(self, fault: WireFault) -> None: ...


class _Host(Protocol):
    def kill(self) -> None: ...
    def start(self) -> Any: ...
    def jump_clock(self, offset_s: float) -> None: ...


class _Broker(Protocol):
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def start(self) -> Any: ...


class Faults:
    """Decide faults from the seed and apply them to the parts handed in, recording each."""

    def __init__(
        self, seed: int, artifacts: Artifacts, echo: Callable[[str], None] = print
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.artifacts = artifacts
        self.counts: collections.Counter[str] = collections.Counter()
        self.effects: collections.Counter[str] = collections.Counter()
        echo(f"sealink HIL seed={seed} (replay: --hil-seed {seed}); faults: {artifacts.faults}")
        artifacts.append_json(FAULTS, {"seed": seed, "test": artifacts.nodeid})

    def stream(self, name: str) -> random.Random:
        """An independent stream of choices for one part, derived from the seed."""
        self.artifacts.append_json(FAULTS, {"stream": name, "seed": f"{self.seed}/{name}"})
        return random.Random(f"{self.seed}/{name}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        self.artifacts.append_json(FAULTS, {"fault": kind, "seed": self.seed, **detail})

    def note(self, what: str, **detail: Any) -> None:
        """A consequence of a fault (an armed cut that fired): recorded, not counted as a fault."""
        self.effects[what] += 1
        self.artifacts.append_json(FAULTS, {"effect": what, **detail})

    # -- the device -----------------------------------------------------------------------

    def power_cut_at_write(self, board: _Board, writes_from_now: int | None = None) -> int:
        """Cut power at the N-th flash block write after a boot's own writes.

        The board reboots first (the power cut before that boot is part of this fault), then
        the cut is armed N writes ahead on the booted board; it tears or loses whatever write
        N was for.
        """
        n = writes_from_now if writes_from_now is not None else self.rng.randint(1, 8)
        self.record("power_cut_write", at_write=n)
        board.power_cut(at_write=n)
        return n

    def power_cut_now(self, board: _Board) -> None:
        """Cut power at whatever instant this is (the caller picks a random one from the rng)."""
        self.record("power_cut_random")
        board.power_cut()

    def rtc_offset(self, low_s: float = 5.0, high_s: float = 7200.0) -> float:
        """A drift of the device clock, ahead or behind, `low_s`..`high_s` seconds."""
        return self.rng.choice((-1, 1)) * self.rng.uniform(low_s, high_s)

    def rtc_drift(self, board: _Board, offset_s: float | None = None) -> float:
        offset = offset_s if offset_s is not None else self.rtc_offset()
        self.record("rtc_drift", offset_s=round(offset, 3))
        board.set_rtc_offset(offset)
        return offset

    # -- the link -------------------------------------------------------------------------

    def wire(
        self,
        link: _Link,
        kind: str | None = None,
        *,
        direction: str | None = None,
        amount: int | None = None,
    ) -> WireFault:
        """Arm one link fault: drawn from the seed, except what the caller fixes."""
        fault = WireFault.random(self.rng, (kind,) if kind else FAULT_KINDS)
        if direction is not None:
            fault.direction = direction
        if amount is not None:
            fault.amount = amount
        self.record(f"wire_{fault.kind}", direction=fault.direction, amount=fault.amount)
        link.inject(fault)
        return fault

    # -- the gateway and the broker -------------------------------------------------------

    def host_kill(self, host: _Host, restart: bool = True) -> None:
        """SIGKILL the gateway mid-flight; start it again on the same ledger and keys."""
        self.record("host_kill")
        host.kill()
        if restart:
            host.start()

    def broker_restart(self, broker: _Broker, crash: bool = False, restart: bool = True) -> None:
        """Stop the broker (SIGTERM, or SIGKILL if `crash`) and start it again on its port.

        The soak only stops it cleanly: Mosquitto saves its state every `autosave_s`, so a
        crash loses the messages it had PUBACKed but not yet saved for an offline subscriber,
        a loss no gateway can see (see the README, "QA: hardware-in-the-loop").
        """
        self.record("broker_restart", crash=crash)
        if crash:
            broker.kill()
        else:
            broker.stop()
        if restart:
            broker.start()

    def clock_jump(self, host: _Host, offset_s: float | None = None) -> float:
        """Step the gateway's wall clock (NTP step, a wrong RTC on a Pi) while it runs."""
        offset = (
            offset_s
            if offset_s is not None
            else self.rng.choice((-86400.0, -3600.0, 3600.0, 86400.0 * 30))
        )
        self.record("clock_jump", offset_s=offset)
        host.jump_clock(offset)
        return offset
