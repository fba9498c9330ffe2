"""Every fault kind, one at a time, on the whole link: board -> port -> gateway -> Mosquitto.

Each test stamps, injects its fault (seeded; the seed is printed and in faults.jsonl), stamps
again, then waits until the independent observer has verified every counter the device
journaled, and checks the accounting of sealink_hil.rig: nothing the device counted is lost, no
press became two records, every impression verified. Counting starts from the board's history
at the test's start (`rig.base`), so the same tests pass on a bench board run after run.

A fault that could pass without having struck proves it struck: the gateway kill shows events
in flight at the kill, the broker outage shows the backlog it built, the clock faults show in
the times the records carry.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import cbor2
import pytest
from sealink_hil.blefaults import BLE_FAULT_KINDS
from sealink_hil.linkfaults import D2H, FAULT_KINDS, H2D
from sealink_hil.rig import Rig
from sealink_hil.waits import until
from sealink_hil.wirelog import RX, TX, Frame
from sealproto import messages as m

if TYPE_CHECKING:
    from sealink_sim.air import Radio

BEFORE = 3
AFTER = 4
IN_FLIGHT = 3
# Longer than any test: what the delay holds is let go by the test itself (port.release).
HOLD_MS = 60_000
HOUR_S = 3600.0
MONTH_S = 30 * 86400.0
# Slack between a clock and the instants a test brackets it with (the emulated board's RTC
# counts whole seconds).
CLOCK_SLACK_S = 2.0

# Every test here presses the stamp: a real board needs an actuator (--press-cmd).
pytestmark = pytest.mark.requires("gpio")


def _stamp(rig: Rig, times: int) -> list[int]:
    return [rig.stamp() for _ in range(times)]


def _verdict(rig: Rig) -> None:
    rig.settle()
    result = rig.result(len(rig.counted))
    assert result.ok, f"{result.line}; problems: {result.problems}; {rig.where()}"


def _timed_stamps(rig: Rig, times: int) -> list[tuple[int, float, float]]:
    """Stamp `times` times: (counter, wall clock before the press, wall clock once counted)."""
    found = []
    for _ in range(times):
        before = time.time()
        counter = rig.stamp()
        found.append((counter, before, time.time()))
    return found


@pytest.mark.transports
def test_impressions_reach_the_observer_signed_and_in_order(rig: Rig) -> None:
    _stamp(rig, BEFORE + AFTER)
    _verdict(rig)
    first = rig.base + 1
    assert rig.counted == set(range(first, first + BEFORE + AFTER)), rig.where()


@pytest.mark.transports
@pytest.mark.requires("flash_cut")
def test_power_cut_at_a_flash_block_write(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    for _ in range(2):
        rig.inject("power_cut_write")
        _stamp(rig, AFTER)
    _verdict(rig)
    assert rig.faults.counts["power_cut_write"] == 2
    assert rig.faults.effects["power_cut_fired"] == 2, f"an armed cut never fired; {rig.where()}"


@pytest.mark.transports
@pytest.mark.requires("power_control")
def test_power_cut_at_a_random_instant_of_a_press(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    for _ in range(3):
        rig.inject("power_cut_random")
        _stamp(rig, 2)
    _verdict(rig)
    assert rig.faults.counts["power_cut_random"] == 3


def _link_fault_twice(rig: Rig, kind: str) -> None:
    _stamp(rig, BEFORE)
    for _ in range(2):
        rig.inject(f"wire_{kind}")
        _stamp(rig, AFTER)
    _verdict(rig)
    assert rig.port.applied, f"the {kind} fault never struck; {rig.where()}"


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_serial_link_fault(rig: Rig, kind: str) -> None:
    _link_fault_twice(rig, kind)


@pytest.mark.parametrize("transport", ["ble", "ble-mtu23"], indirect=True)
@pytest.mark.parametrize("kind", BLE_FAULT_KINDS)
def test_ble_link_fault(rig: Rig, kind: str) -> None:
    # Whole ATT chunks dropped, repeated or held, both directions held, the seal dropping the
    # connection: what a broken stack or a walk out of range does (no bit flips: the link
    # layer's CRC catches those).
    _link_fault_twice(rig, kind)


def _radio(rig: Rig) -> Radio:
    radio = rig.board.board.radio  # type: ignore[attr-defined]  # the emulated board's
    assert radio is not None, "a BLE board has a radio"
    return radio


@pytest.mark.parametrize("transport", ["ble"], indirect=True)
def test_a_seal_that_vanishes_mid_transfer_loses_nothing(rig: Rig) -> None:
    # Out of range in the middle of a burst: the notifications already queued never arrive,
    # the records pressed meanwhile wait in the journal; back in range, the link ends by
    # supervision timeout on both sides and the next session sends what was not acked.
    _stamp(rig, BEFORE)
    radio = _radio(rig)
    connections = radio.connections
    rig.stamp()  # counted: its record is on its way out when the seal goes
    radio.vanish()
    _stamp(rig, AFTER)
    radio.reappear()
    radio.wait_until(lambda r: r.connections > connections, timeout=30)
    _stamp(rig, AFTER)
    _verdict(rig)


@pytest.mark.parametrize("transport", ["ble"], indirect=True)
def test_a_seal_whose_stack_stopped_advertising_is_found_again(rig: Rig) -> None:
    # A stack glitch ends advertising without a word: the firmware advertises again on its
    # own (seal/ble.py refresh, every 10 s without a central), so the gateway finds it.
    _stamp(rig, BEFORE)
    radio = _radio(rig)
    connections = radio.connections
    radio.disconnect()
    radio.wait_until(lambda r: r.advertising, timeout=10)
    radio.stop_advertising()
    _stamp(rig, AFTER)
    assert not radio.advertising and radio.connections == connections, rig.where()
    radio.wait_until(lambda r: r.connections > connections, timeout=60)
    _stamp(rig, AFTER)
    _verdict(rig)


def test_host_sigkill_and_restart_on_the_same_ledger(rig: Rig) -> None:
    """SIGKILL the gateway while events are in flight (sent, unacknowledged, not in the ledger)."""
    _stamp(rig, BEFORE)
    rig.settle()
    # Hold what the board sends, so the kill strikes while its events are on their way.
    rig.faults.wire(rig.port, "delay", direction=D2H, amount=HOLD_MS)
    burst = _stamp(rig, IN_FLIGHT)
    kill = rig.kill_host(restart=False)
    # The held events reach the dead gateway's port: nobody reads them.
    rig.port.release(D2H)
    rig.host.start()
    assert kill.in_flight >= IN_FLIGHT and kill.uncommitted >= IN_FLIGHT, (
        f"the kill caught nothing in flight: {kill}; {rig.where()}"
    )
    _stamp(rig, AFTER)
    _verdict(rig)
    # What the crash caught came again: the board resent it to the restarted gateway.
    resent = {
        int(f.get("counter")) for f in rig.port.wire.frames("EVENT", D2H, TX) if f.at > kill.at
    }
    assert set(burst) <= resent, f"events {burst} were never resent after the kill; {rig.where()}"


@pytest.mark.parametrize("crash", [False, True], ids=["stop", "crash"])
def test_broker_outage_builds_a_backlog_that_drains(rig: Rig, crash: bool) -> None:
    device = rig.board.device_id
    _stamp(rig, BEFORE)
    if crash:
        # A crash loses what Mosquitto PUBACKed but holds only in memory for an offline
        # subscriber (it saves every autosave_s): crash once the observer has everything, to
        # test what the gateway must do, resend all it has no PUBACK for.
        rig.settle()
    before_outage = rig.board.counter
    rig.restart_broker(crash=crash, restart=False)
    outage = _stamp(rig, AFTER)
    # The gateway stores and acks without the broker: the outage's events wait in its outbox.
    backlog = until(
        lambda: rig.host.unpublished(device, above=before_outage),
        lambda n: n >= len(outage),
        30.0,
        f"events {outage} stored and waiting in the outbox; {rig.where()}",
    )
    assert not set(outage) & set(rig.new_events()), "published while the broker was down?"
    rig.broker.start()
    _verdict(rig)
    until(
        lambda: rig.host.unpublished(device, above=before_outage),
        lambda n: n == 0,
        30.0,
        f"the outbox to drain after the broker came back; {rig.where()}",
    )
    assert backlog >= AFTER, rig.where()


def test_host_clock_jump(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    rig.faults.clock_jump(rig.host, MONTH_S)
    _stamp(rig, AFTER)
    rig.faults.clock_jump(rig.host, -HOUR_S)
    _stamp(rig, AFTER)
    _verdict(rig)
    # The gateway stamps what it stores with its own clock: the jump must show there.
    after_jump = rig.host.events(rig.board.device_id, since=rig.base + BEFORE + 1)
    wall_ms = time.time() * 1000
    assert after_jump and all(
        e["received_ms"] > wall_ms + (MONTH_S - 2 * HOUR_S) * 1000 for e in after_jump
    ), f"the gateway's clock never jumped: {after_jump}; {rig.where()}"


def _time_s(event: bytes) -> int:
    decoded: dict[int, Any] = cbor2.loads(event)
    return int(decoded[m.EV_TIME])


@pytest.mark.requires("rtc_control")
def test_device_rtc_drift_shows_until_the_gateway_sets_the_clock(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    wire = rig.port.wire
    # No gateway while the board boots with a drifted clock: nothing can set it.
    rig.host.stop()
    offset = rig.faults.rtc_drift(rig.board, rig.faults.rtc_offset(600.0, 7200.0))
    drifted = _timed_stamps(rig, AFTER)
    mark = wire.mark()
    rig.host.start()
    welcome = wire.wait_for("WELCOME", H2D, RX, mark, 30.0, "the restarted gateway's WELCOME")
    # The board answers a WELCOME it accepted with a STATUS, after it has set its clock.
    wire.wait_for("STATUS", D2H, TX, wire.position(welcome), 10.0, "the STATUS after WELCOME")
    corrected = _timed_stamps(rig, AFTER)
    _verdict(rig)

    # WELCOME's host_time_ms is the gateway's clock (here the machine's) when it was sent.
    assert abs(int(welcome.get("time_ms")) / 1000 - welcome.wall) < CLOCK_SLACK_S, (
        f"WELCOME carried host_time_ms {welcome.get('time_ms')} at {welcome.wall:.3f}; "
        f"{rig.where()}"
    )
    events = rig.new_events()
    for counter, start, end in drifted:
        time_s = _time_s(events[counter])
        assert start + offset - CLOCK_SLACK_S <= time_s <= end + offset + CLOCK_SLACK_S, (
            f"event {counter} time_s={time_s}: the board's clock was {offset:+.0f} s off, so "
            f"it should read {start + offset:.0f}..{end + offset:.0f}; {rig.where()}"
        )
    for counter, start, end in corrected:
        time_s = _time_s(events[counter])
        assert start - CLOCK_SLACK_S <= time_s <= end + CLOCK_SLACK_S, (
            f"event {counter} time_s={time_s} after the WELCOME set the clock, should read "
            f"{start:.0f}..{end:.0f} (the drift was {offset:+.0f} s); {rig.where()}"
        )
    # A TIME command (if the gateway sends one) sets the clock again: each must be answered OK.
    for command in wire.frames("TIME", H2D, TX, since=mark):

        def answers(command: Frame = command) -> list[Frame]:
            return [
                f
                for f in wire.frames("RESULT", D2H, TX, since=wire.position(command))
                if f.get("command_seq") == command.get("seq")
            ]

        wire.wait_until(lambda _w: bool(answers()), 10.0, f"the RESULT of TIME {command.line()}")
        assert answers()[0].get("code") == "OK", (
            f"TIME seq={command.get('seq')} answered {answers()[0].fields}; {rig.where()}"
        )
