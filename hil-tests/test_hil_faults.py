"""Every fault kind, one at a time, on the whole link: board -> wire -> gateway -> Mosquitto.

Each test stamps, injects its fault (seeded; the seed is printed and in faults.jsonl), stamps
again, then waits until the independent observer has verified every counter the device
journaled, and checks the accounting of sealink_hil.rig: nothing the device counted is lost, no
press became two records, every impression verified.
"""

from __future__ import annotations

import time

import pytest
from sealink_hil.rig import Rig
from sealink_hil.wire import FAULT_KINDS

BEFORE = 3
AFTER = 4
HOUR_S = 3600.0
MONTH_S = 30 * 86400.0

# Every test here presses the stamp: a real board needs an actuator (--press-cmd).
pytestmark = pytest.mark.needs_gpio


def _stamp(rig: Rig, times: int) -> None:
    for _ in range(times):
        rig.stamp()


def _verdict(rig: Rig) -> None:
    rig.settle()
    result = rig.result(len(rig.counted))
    assert result.ok, f"{result.line}; problems: {result.problems}; {rig.where()}"


def test_impressions_reach_the_observer_signed_and_in_order(rig: Rig) -> None:
    _stamp(rig, BEFORE + AFTER)
    _verdict(rig)
    assert rig.counted == set(range(1, BEFORE + AFTER + 1)), rig.where()


@pytest.mark.needs_flash_cut
def test_power_cut_at_a_flash_block_write(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    for _ in range(2):
        rig.inject("power_cut_write")
        _stamp(rig, AFTER)
    _verdict(rig)
    assert rig.faults.counts["power_cut_write"] == 2
    assert rig.faults.effects["power_cut_fired"] == 2, f"an armed cut never fired; {rig.where()}"


@pytest.mark.needs_power_control
def test_power_cut_at_a_random_instant_of_a_press(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    for _ in range(3):
        rig.inject("power_cut_random")
        _stamp(rig, 2)
    _verdict(rig)
    assert rig.faults.counts["power_cut_random"] == 3


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_serial_link_fault(rig: Rig, kind: str) -> None:
    _stamp(rig, BEFORE)
    for _ in range(2):
        rig.inject(f"wire_{kind}")
        _stamp(rig, AFTER)
    _verdict(rig)
    assert rig.wire.applied, f"the {kind} fault never hit a byte; {rig.where()}"


def test_host_sigkill_and_restart_on_the_same_ledger(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    rig.inject("host_kill")
    _stamp(rig, AFTER)
    rig.inject("host_kill")
    _verdict(rig)


@pytest.mark.parametrize("crash", [False, True], ids=["stop", "crash"])
def test_broker_restart(rig: Rig, crash: bool) -> None:
    _stamp(rig, BEFORE)
    if crash:
        # A crash loses what Mosquitto PUBACKed but holds only in memory for an offline
        # subscriber (it saves every autosave_s): crash once the observer has everything, to
        # test what the gateway must do, resend all it has no PUBACK for.
        rig.settle()
    rig.faults.broker_restart(rig.broker, crash=crash)
    _stamp(rig, AFTER)
    _verdict(rig)


def test_host_clock_jump(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    rig.faults.clock_jump(rig.host, MONTH_S)
    _stamp(rig, AFTER)
    rig.faults.clock_jump(rig.host, -HOUR_S)
    _stamp(rig, AFTER)
    _verdict(rig)
    # The gateway stamps what it stores with its own clock: the jump must show there.
    after_jump = [e for e in rig.host.events() if e["counter"] > BEFORE]
    wall_ms = time.time() * 1000
    assert after_jump and all(
        e["received_ms"] > wall_ms + (MONTH_S - 2 * HOUR_S) * 1000 for e in after_jump
    ), f"the gateway's clock never jumped: {after_jump}; {rig.where()}"


@pytest.mark.needs_rtc_control
def test_device_rtc_drift(rig: Rig) -> None:
    _stamp(rig, BEFORE)
    rig.inject("rtc_drift")
    _stamp(rig, AFTER)
    _verdict(rig)
