"""The whole link under test, driven as one: stamp, inject faults, settle, account, soak.

Accounting, from the device outward (the rule: nothing the device counted may be lost, and no
press may become two records):

- `counted`: counters of the impressions the device counted. A press counts when the board
  reports its new counter. A press cut short by a power cut is resolved after the reboot: it
  counted if the journal the board recovered holds a record newer than the one before the press.
- after `settle()`, every counter 1..newest the device journaled has reached the observer.
- lost = counted impressions the observer never verified, and gaps in the device's counters.
- duplicates_after_dedupe = counters delivered with different bytes + impression records the
  device never counted (a press that became two records).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2
from sealink import SealinkError

from .artifacts import Artifacts
from .faults import ALL_KINDS, WIRE_KINDS, Faults
from .wire import WireProxy

__all__ = ["Rig", "SoakResult"]

_EV_KIND = 5
_IMPRESSION_KINDS = (0, 1)  # IMPRESSION (under a permit) and FORCED (lock shut): both were pressed
_STAMP_TIMEOUT_S = 20.0
_BACKLOG_LIMIT = 200  # the journal holds 1000: keep stamping from outrunning a faulted link


@dataclass
class SoakResult:
    stamps: int
    faults: int
    lost: int
    duplicates_after_dedupe: int
    verified: int
    mqtt_redeliveries: int
    seed: int
    by_kind: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        return (
            f"soak: stamps={self.stamps} faults={self.faults} lost={self.lost} "
            f"duplicates_after_dedupe={self.duplicates_after_dedupe} verified={self.verified} "
            f"mqtt_redeliveries={self.mqtt_redeliveries} seed={self.seed}"
        )

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicates_after_dedupe == 0
            and self.verified == self.stamps
            and not self.problems
        )


class Rig:
    """board -> wire -> host -> broker -> observer, with the seeded `faults` applied to them."""

    def __init__(
        self,
        board: Any,
        wire: WireProxy,
        host: Any,
        broker: Any,
        observer: Any,
        faults: Faults,
        artifacts: Artifacts,
    ) -> None:
        self.board = board
        self.wire = wire
        self.host = host
        self.broker = broker
        self.observer = observer
        self.faults = faults
        self.artifacts = artifacts
        self.counted: set[int] = set()
        self.presses = 0

    # -- driving the board ----------------------------------------------------------------

    def where(self) -> str:
        return self.artifacts.describe()

    def stamp(self) -> int:
        """Press once and return the counter it got; after a power cut, press again if lost."""
        while True:
            if self.board.cut:
                self.faults.note("power_cut_fired", between_presses=True, writes=self._writes())
                self._power_on()
            self._pace()
            before = int(self.board.counter)
            self.presses += 1
            self.board.stamp()
            try:
                self.board.wait_until(
                    lambda b, before=before: b.counter > before or b.cut,
                    _STAMP_TIMEOUT_S,
                    f"the press after counter {before} to count",
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; {self.where()}") from None
            if not self.board.cut:
                return self._counted(before)
            self.faults.note("power_cut_fired", during_press_after=before, writes=self._writes())
            if self._recover(before):
                return before + 1

    def _power_on(self) -> None:
        """Power back on and wait until the board is up and its boot records are counted.

        The emulated board reports both itself. A real one is up when the gateway logs its
        HELLO, whose next_counter covers the records of its boot: wait for the observer to have
        verified all of them, so the next press moves the counter by exactly one.
        """
        mark = self.host.log_mark()
        self.board.power_on()
        if self.board.spec.kind == "emulated":
            return
        device = self.board.device_id
        hello = self.host.wait_for_log(f"session open device={device}", mark, 60.0)
        found = re.search(r"\bnext=(\d+)", hello)
        newest = int(found.group(1)) - 1 if found else 0
        self.observer.wait_until(
            lambda o: o.device(device).contiguous >= newest,
            60.0,
            f"{device}'s boot records 1..{newest} verified; {self.where()}",
        )

    def _writes(self) -> int | None:
        return getattr(self.board, "block_writes", None)

    def _counted(self, before: int) -> int:
        counter = int(self.board.counter)
        if counter != before + 1:
            raise AssertionError(
                f"one press moved the device counter from {before} to {counter}; {self.where()}"
            )
        self.counted.add(counter)
        return counter

    def _recover(self, before: int) -> bool:
        """Power back on after a cut; True if the interrupted press had been journaled."""
        self._power_on()
        journaled = int(self.board.boot_counter) > before
        if journaled:
            self.counted.add(before + 1)
        return journaled

    def _pace(self) -> None:
        """Keep the device's backlog bounded: a long outage must not fill its journal."""
        device = self.board.device_id
        newest = int(self.board.counter)
        if newest - self.observer.device(device).contiguous < _BACKLOG_LIMIT:
            return
        self.observer.wait_until(
            lambda o: o.device(device).contiguous >= newest - _BACKLOG_LIMIT // 2,
            120.0,
            f"{device}'s backlog to drain below {_BACKLOG_LIMIT // 2}; {self.where()}",
        )

    # -- faults ---------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        """Apply one fault of `kind` (one of faults.ALL_KINDS) to the right part of the rig."""
        faults = self.faults
        if kind == "power_cut_write":
            faults.power_cut_at_write(self.board)
        elif kind == "power_cut_random":
            self._cut_mid_press()
        elif kind in WIRE_KINDS:
            faults.wire(self.wire, kind.removeprefix("wire_"))
        elif kind == "host_kill":
            faults.host_kill(self.host)
        elif kind == "broker_restart":
            faults.broker_restart(self.broker)
        elif kind == "clock_jump":
            faults.clock_jump(self.host)
        elif kind == "rtc_drift":
            faults.rtc_drift(self.board)
        else:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(ALL_KINDS)}")

    def _cut_mid_press(self) -> None:
        """Cut the power at a random instant of a press: before, during or after its record."""
        if self.board.spec.kind != "emulated":
            # A stamp actuator only does whole presses: cut between them instead.
            self.faults.power_cut_now(self.board)
            self._power_on()
            return
        if self.board.cut:
            self._power_on()
        before = self.board.counter
        self.presses += 1
        self.board.press()
        time.sleep(self.faults.rng.uniform(0.0, 0.05))  # the instant IS the fault (seeded)
        self.faults.power_cut_now(self.board)
        if self.board.counter > before:
            self._counted(before)
            self._power_on()
        else:
            self._recover(before)

    def kinds(self) -> tuple[str, ...]:
        """The fault kinds this board allows (a real board has no flash cut, no RTC control)."""
        needs = {
            "power_cut_write": "flash_cut",
            "power_cut_random": "power_control",
            "rtc_drift": "rtc_control",
        }
        caps = self.board.capabilities
        return tuple(kind for kind in ALL_KINDS if needs.get(kind, "") in caps | {""})

    # -- the verdict ----------------------------------------------------------------------

    def settle(self, timeout_s: float = 180.0) -> None:
        """Wait until everything the device journaled has been verified by the observer."""
        device = self.board.device_id
        newest = int(self.board.counter)
        self.observer.wait_until(
            lambda o: o.device(device).contiguous >= newest,
            timeout_s,
            f"{device} counters 1..{newest} verified by the observer; {self.where()}",
        )

    def result(self, stamps: int) -> SoakResult:
        tally = self.observer.device(self.board.device_id)
        impressions = {
            counter
            for counter, event in tally.events.items()
            if cbor2.loads(event).get(_EV_KIND) in _IMPRESSION_KINDS
        }
        problems = list(self.observer.problems)
        if tally.invalid or tally.chain_breaks:
            problems.append(f"invalid={tally.invalid} chain_breaks={tally.chain_breaks}")
        return SoakResult(
            stamps=stamps,
            faults=self.faults.total,
            lost=len((self.counted - impressions) | set(tally.missing)),
            duplicates_after_dedupe=tally.conflicts + len(impressions - self.counted),
            verified=len(impressions & self.counted),
            mqtt_redeliveries=tally.published - len(tally.events),
            seed=self.faults.seed,
            by_kind=dict(self.faults.counts),
            problems=problems,
        )

    # -- the soak -------------------------------------------------------------------------

    def schedule(self, stamps: int) -> dict[int, list[str]]:
        """Which faults strike before which stamp: every kind once, at least stamps/50 in all."""
        rng = self.faults.rng
        available = self.kinds()
        total = max(len(available), math.ceil(stamps / 50))
        kinds = list(available)
        rng.shuffle(kinds)
        kinds += [rng.choice(available) for _ in range(total - len(kinds))]
        plan: dict[int, list[str]] = {}
        for kind in kinds:
            plan.setdefault(rng.randrange(1, stamps + 1), []).append(kind)
        return plan

    def soak(self, stamps: int, echo: Any = print) -> SoakResult:
        """Stamp until the device counted `stamps` impressions under the seeded schedule.

        A wait that times out ends the stamping, not the verdict: the result then says what
        was lost, and the soak line is printed either way.
        """
        plan = self.schedule(stamps)
        started = time.monotonic()
        stopped: list[str] = []
        try:
            while len(self.counted) < stamps:
                # <=: a press cut by a power cut can count, so the count may skip an index.
                for at in sorted(at for at in plan if at <= len(self.counted) + 1):
                    for kind in plan.pop(at):
                        self.inject(kind)
                if len(self.counted) < stamps:
                    self.stamp()
                if len(self.counted) % 500 == 0:
                    echo(f"soak: {len(self.counted)}/{stamps} stamped, {self.faults.total} faults")
            self.settle()
        except (AssertionError, TimeoutError, SealinkError) as exc:
            stopped.append(f"stopped after {len(self.counted)} impressions: {exc}")
        result = self.result(stamps)
        result.problems[:0] = stopped
        echo(
            f"soak: {stamps} impressions from {self.presses} presses in "
            f"{time.monotonic() - started:.1f} s; faults {result.by_kind}; "
            f"effects {dict(self.faults.effects)}"
        )
        return result
