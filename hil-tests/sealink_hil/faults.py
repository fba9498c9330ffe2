"""Seeded fault injection across every part of the link, each fault recorded as it happens.

One `Faults` per test: a `random.Random(seed)` draws every choice (which fault, where, how
long), the seed is printed at the start and written first in faults.jsonl, so a failing run can
be replayed with `--hil-seed SEED`. The objects faulted are the suite's own layers (a Dut, the
WireProxy, the gateway process, the broker); this module only decides and records.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any, Protocol

from .artifacts import FAULTS, Artifacts
from .wire import FAULT_KINDS, WireFault, WireProxy

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

    def __init__(self, seed: int, artifacts: Artifacts, echo: Callable[[str], None] = print):
        self.seed = seed
        self.rng = random.Random(seed)
        self.artifacts = artifacts
        self.counts: collections.Counter[str] = collections.Counter()
        self.effects: collections.Counter[str] = collections.Counter()
        echo(f"sealink HIL seed={seed} (replay: --hil-seed {seed}); faults: {artifacts.faults}")
        artifacts.append_json(FAULTS, {"seed": seed, "test": artifacts.nodeid})

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

        The emulated block device is armed at boot, so the board reboots first (the cut-short
        boot is part of this fault); the cut then tears or loses whatever write N was for.
        """
        n = writes_from_now if writes_from_now is not None else self.rng.randint(1, 8)
        self.record("power_cut_write", at_write=n)
        board.power_cut(at_write=n)
        return n

    def power_cut_now(self, board: _Board) -> None:
        """Cut power at whatever instant this is (the caller picks a random one from the rng)."""
        self.record("power_cut_random")
        board.power_cut()

    def rtc_drift(self, board: _Board, offset_s: float | None = None) -> float:
        offset = (
            offset_s
            if offset_s is not None
            else self.rng.choice((-1, 1)) * self.rng.uniform(5, 7200)
        )
        self.record("rtc_drift", offset_s=round(offset, 3))
        board.set_rtc_offset(offset)
        return offset

    # -- the serial link ------------------------------------------------------------------

    def wire(self, proxy: WireProxy, kind: str | None = None) -> WireFault:
        """Arm one link fault; drawn from the seed unless `kind` (drop, corrupt, ...) is given."""
        fault = WireFault.random(self.rng, (kind,) if kind else FAULT_KINDS)
        self.record(f"wire_{fault.kind}", direction=fault.direction, amount=fault.amount)
        proxy.inject(fault)
        return fault

    # -- the gateway and the broker -------------------------------------------------------

    def host_kill(self, host: _Host) -> None:
        """SIGKILL the gateway mid-flight and start it again on the same ledger and keys."""
        self.record("host_kill")
        host.kill()
        host.start()

    def broker_restart(self, broker: _Broker, crash: bool = False) -> None:
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
        broker.start()

    def clock_jump(self, host: _Host, offset_s: float | None = None) -> float:
        """Restart the gateway with its wall clock shifted (NTP step, a wrong RTC on a Pi)."""
        offset = (
            offset_s
            if offset_s is not None
            else self.rng.choice((-86400.0, -3600.0, 3600.0, 86400.0 * 30))
        )
        self.record("clock_jump", offset_s=offset)
        host.jump_clock(offset)
        return offset
