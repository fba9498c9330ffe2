"""The whole link under test, driven as one: stamp, inject faults, settle, account, soak.

Accounting, from the device outward (the rule: nothing the device counted may be lost, and no
press may become two records), always from the board's history at the test's start
(`History.counter`, N0), never from 0: a bench board arrives with every impression of earlier
tests and runs on it, and only what this test adds is this test's to account for.

- `counted`: counters (> N0) of the impressions the device counted. A press counts when the
  board reports its new counter. A press cut short by a power cut is resolved after the reboot:
  it counted if the journal the board recovered holds a record newer than the one before it.
- after `settle()`, every counter N0+1..newest the device journaled has reached the observer.
- lost = counted impressions the observer never verified, and gaps in the device's counters.
- duplicates_after_dedupe = counters delivered with different bytes + impression records the
  device never counted (a press that became two records).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from sealink import SealinkError
from sealproto import messages as m

from .artifacts import Artifacts
from .dut import Dut
from .faults import ALL_KINDS, WIRE_KINDS, Faults
from .history import History
from .linkfaults import D2H, H2D
from .waits import until
from .wirelog import RX, TX

__all__ = ["KillSnapshot", "Rig", "SoakResult"]

# IMPRESSION (under a permit) and FORCED (lock shut): both were pressed.
_IMPRESSION_KINDS = (m.KIND_IMPRESSION, m.KIND_FORCED)
_STAMP_TIMEOUT_S = 20.0
_BACKLOG_LIMIT = 200  # the journal holds 1000: keep stamping from outrunning a faulted link
_BROKER_SAVED = "Saving in-memory database"


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


@dataclass(frozen=True)
class KillSnapshot:
    """Where the link stood when the gateway was SIGKILLed."""

    at: float  # time.monotonic() of the kill
    board_counter: int  # the newest record the board had journaled
    ledger: int  # L: what the killed gateway's ledger held, read from disk after the kill
    newest_sent: int  # the newest EVENT counter the board had put on the wire
    newest_acked: int  # the newest ACK the board had received

    @property
    def in_flight(self) -> int:
        """Events the board had sent without an ACK back: what the crash caught mid-way."""
        return self.newest_sent - self.newest_acked

    @property
    def uncommitted(self) -> int:
        """Events the board held that the ledger did not: they must come again after restart."""
        return self.board_counter - self.ledger


class Rig:
    """board -> port -> host -> broker -> observer, with the seeded `faults` applied to them."""

    def __init__(
        self,
        board: Dut,
        host: Any,
        broker: Any,
        observer: Any,
        faults: Faults,
        artifacts: Artifacts,
        history: History,
    ) -> None:
        self.board = board
        self.port = board.port
        self.host = host
        self.broker = broker
        self.observer = observer
        self.faults = faults
        self.artifacts = artifacts
        self.history = history
        self.base = history.counter
        self.counted: set[int] = set()
        self.presses = 0
        self._through = self.base

    # -- what the observer verified, from the history on ----------------------------------

    def verified_through(self) -> int:
        """The highest n such that every counter N0+1..n has been verified by the observer."""
        events = self.observer.device(self.board.device_id).events
        while self._through + 1 in events:
            self._through += 1
        return self._through

    def new_events(self) -> dict[int, bytes]:
        """The verified device events this test added (counter > N0)."""
        tally = self.observer.device(self.board.device_id)
        return {c: e for c, e in tally.events.items() if c > self.base}

    # -- driving the board ----------------------------------------------------------------

    def where(self) -> str:
        return f"history {self.history}; " + self.artifacts.describe()

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

            def counted(board: Dut, before: int = before) -> bool:
                return board.counter > before or board.cut

            try:
                self.board.wait_until(
                    counted, _STAMP_TIMEOUT_S, f"the press after counter {before} to count"
                )
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; {self.where()}") from None
            if not self.board.cut:
                return self._counted(before)
            self.faults.note("power_cut_fired", during_press_after=before, writes=self._writes())
            if self._recover(before):
                return before + 1

    def _power_on(self) -> None:
        """Power back on; the Dut returns once the board is up and its counter known."""
        self.board.power_on()

    def _writes(self) -> int | None:
        return self.board.block_writes

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
        newest = int(self.board.counter)
        if newest - self.verified_through() < _BACKLOG_LIMIT:
            return
        self.observer.wait_until(
            lambda _o: self.verified_through() >= newest - _BACKLOG_LIMIT // 2,
            120.0,
            f"{self.board.device_id}'s backlog to drain below {_BACKLOG_LIMIT // 2}; "
            f"{self.where()}",
        )

    def kill_host(self, restart: bool = True) -> KillSnapshot:
        """SIGKILL the gateway and say what was in flight at that instant; then restart it."""
        wire = self.port.wire
        sent = wire.frames("EVENT", D2H, TX)
        newest_sent = max((int(f.get("counter")) for f in sent), default=self.base)
        counter = int(self.board.counter)
        at = time.monotonic()
        self.faults.host_kill(self.host, restart=False)
        # After the kill: an ACK delivered in between counts as acked (the cautious side).
        acks = [int(f.get("counter")) for f in wire.frames("ACK", H2D, RX)]
        acks += [int(f.get("acked")) for f in wire.frames("WELCOME", H2D, RX)]
        acked = max([*acks, self.history.board_acked])
        ledger = self.host.ledger_counter(self.board.device_id)
        snapshot = KillSnapshot(at, counter, ledger, newest_sent, acked)
        self.faults.note("host_killed", **snapshot.__dict__)
        if restart:
            self.host.start()
        return snapshot

    # -- faults ---------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        """Apply one fault of `kind` (one of faults.ALL_KINDS) to the right part of the rig."""
        faults = self.faults
        if kind == "power_cut_write":
            faults.power_cut_at_write(self.board)
        elif kind == "power_cut_random":
            self._cut_mid_press()
        elif kind in WIRE_KINDS:
            faults.wire(self.port, kind.removeprefix("wire_"))
        elif kind == "host_kill":
            faults.host_kill(self.host)
        elif kind == "broker_restart":
            self.restart_broker()
        elif kind == "clock_jump":
            faults.clock_jump(self.host)
        elif kind == "rtc_drift":
            faults.rtc_drift(self.board)
        else:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(ALL_KINDS)}")

    def restart_broker(self, crash: bool = False, restart: bool = True) -> None:
        """Stop (or crash) the broker, and start it again unless `restart` is False.

        Before a crash, wait for Mosquitto's next autosave: it persists sessions every
        `autosave_s`, not on SUBSCRIBE, so a crash before it would forget the observer, and
        what was published until it subscribed again would reach nobody: a loss of the test's
        eyes, not of the system's data. A clean stop saves everything first.
        """
        if crash:
            self._wait_broker_saved()
        self.faults.broker_restart(self.broker, crash=crash, restart=restart)

    def _wait_broker_saved(self, timeout_s: float = 10.0) -> None:
        log = Path(self.broker.log_path)
        seen = log.read_text(errors="replace").count(_BROKER_SAVED)
        until(
            lambda: log.read_text(errors="replace").count(_BROKER_SAVED),
            lambda count: count > seen,
            timeout_s,
            f"Mosquitto's next autosave; broker log: {log}",
        )

    def _cut_mid_press(self) -> None:
        """Cut the power at a random instant of a press: before, during or after its record."""
        if "gpio_hold" not in self.board.capabilities:
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
        link = {f"wire_{kind}" for kind in self.port.fault_kinds}
        return tuple(
            kind
            for kind in ALL_KINDS
            if needs.get(kind, "") in caps | {""} and (kind in link or kind not in WIRE_KINDS)
        )

    # -- the verdict ----------------------------------------------------------------------

    def settle(self, timeout_s: float = 180.0) -> None:
        """Wait until everything the device journaled has been verified by the observer."""
        newest = int(self.board.counter)
        self.observer.wait_until(
            lambda _o: self.verified_through() >= newest,
            timeout_s,
            f"{self.board.device_id} counters {self.base + 1}..{newest} verified by the "
            f"observer; {self.where()}",
        )

    def result(self, stamps: int) -> SoakResult:
        tally = self.observer.device(self.board.device_id)
        events = self.new_events()
        impressions = {
            counter
            for counter, event in events.items()
            if cbor2.loads(event).get(m.EV_KIND) in _IMPRESSION_KINDS
        }
        newest = max(events, default=self.base)
        missing = {c for c in range(self.base + 1, newest + 1) if c not in events}
        problems = list(self.observer.problems)
        if tally.invalid or tally.chain_breaks:
            problems.append(f"invalid={tally.invalid} chain_breaks={tally.chain_breaks}")
        return SoakResult(
            stamps=stamps,
            faults=self.faults.total,
            lost=len((self.counted - impressions) | missing),
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
