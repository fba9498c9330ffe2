"""The soak's verdict can fail: hand-made observer tallies force each wrong outcome.

The accounting in sealink_hil.rig is arithmetic over what the device counted and what the
observer verified; the other parts are stand-ins here (no board, host or broker runs) because
only the arithmetic is under test. The end-to-end tests run it on the real link.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import cbor2
import pytest
from sealink_hil.artifacts import Artifacts
from sealink_hil.blefaults import BLE_FAULT_KINDS
from sealink_hil.faults import ALL_KINDS, Faults
from sealink_hil.history import History
from sealink_hil.linkfaults import FAULT_KINDS
from sealink_hil.rig import Rig
from sealink_sim.observer import DeviceTally
from sealproto import messages as m

DEVICE = "seal-acct-1"
KINDS = {"impression": m.KIND_IMPRESSION, "forced": m.KIND_FORCED, "reboot": m.KIND_REBOOT}


def _event(counter: int, kind: str, prev: bytes) -> bytes:
    event = {m.K_TYPE: m.EVENT, m.EV_COUNTER: counter, m.EV_KIND: KINDS[kind], m.EV_PREV: prev}
    return cbor2.dumps(event, canonical=True)


def _tally(kinds: list[str], skip: int | None = None, history: int = 0) -> DeviceTally:
    """The observer's tally of `kinds` as counters 1..; those up to `history` never arrived."""
    tally = DeviceTally(DEVICE)
    prev = bytes(32)
    for counter, kind in enumerate(kinds, start=1):
        event = _event(counter, kind, prev)
        prev = hashlib.sha256(event).digest()
        if counter == skip or counter <= history:
            continue
        tally.events[counter] = event
        tally.published += 1
        tally.verified += 1
    while tally.contiguous + 1 in tally.events:
        tally.contiguous += 1
    return tally


def _rig(tmp_path: Path, tally: DeviceTally, counted: set[int], base: int = 0) -> Rig:
    observer = SimpleNamespace(device=lambda _id: tally, problems=[])
    port = SimpleNamespace(fault_kinds=FAULT_KINDS)  # a serial link's: every wire fault
    board = SimpleNamespace(device_id=DEVICE, capabilities=frozenset({"flash_cut"}), port=port)
    faults = Faults(7, Artifacts(tmp_path, "acct"), echo=lambda _line: None)
    history = History(DEVICE, counter=base, ledger=base, board_acked=base, boot=1, firmware="?")
    rig = Rig(board, None, None, observer, faults, faults.artifacts, history)  # type: ignore[arg-type]
    rig.counted = counted
    return rig


def test_every_counted_impression_verified_is_a_pass(tmp_path: Path) -> None:
    tally = _tally(["forced", "impression", "reboot", "impression"])
    tally.published += 2  # two MQTT redeliveries of already-verified counters
    result = _rig(tmp_path, tally, {1, 2, 4}).result(3)
    assert result.ok, result.line
    assert result.line == (
        "soak: stamps=3 faults=0 lost=0 duplicates_after_dedupe=0 verified=3 "
        "mqtt_redeliveries=2 seed=7"
    )


def test_a_counted_impression_that_never_arrived_is_lost(tmp_path: Path) -> None:
    result = _rig(tmp_path, _tally(["impression"] * 3, skip=2), {1, 2, 3}).result(3)
    assert not result.ok
    assert (result.lost, result.verified) == (1, 2)


def test_a_press_that_became_two_records_is_a_duplicate(tmp_path: Path) -> None:
    result = _rig(tmp_path, _tally(["impression"] * 3), {1, 2}).result(2)
    assert not result.ok
    assert result.duplicates_after_dedupe == 1


def test_the_same_counter_with_other_bytes_is_a_duplicate(tmp_path: Path) -> None:
    tally = _tally(["impression"] * 2)
    tally.conflicts = 1
    result = _rig(tmp_path, tally, {1, 2}).result(2)
    assert not result.ok and result.duplicates_after_dedupe == 1


def test_a_board_with_history_is_counted_from_its_counter_not_from_zero(tmp_path: Path) -> None:
    # 40 records from earlier runs were published to other brokers: this test never sees them.
    tally = _tally(["reboot"] * 40 + ["impression"] * 3, history=40)
    rig = _rig(tmp_path, tally, {41, 42, 43}, base=40)
    result = rig.result(3)
    assert result.ok, result.line
    assert result.verified == 3 and result.lost == 0
    assert rig.verified_through() == 43


def test_history_does_not_hide_a_loss_after_it(tmp_path: Path) -> None:
    tally = _tally(["impression"] * 13, skip=12, history=10)
    result = _rig(tmp_path, tally, {11, 12, 13}, base=10).result(3)
    assert not result.ok
    assert (result.lost, result.verified) == (1, 2)


def test_what_came_before_the_history_is_not_this_tests_to_count(tmp_path: Path) -> None:
    # The ledger was behind the board at the start: counters up to 10 arrive during this test.
    tally = _tally(["impression"] * 12, history=6)
    result = _rig(tmp_path, tally, {11, 12}, base=10).result(2)
    assert result.ok, result.line
    assert result.duplicates_after_dedupe == 0


@pytest.mark.parametrize("stamps", [10, 300, 10_000])
def test_the_schedule_has_every_kind_and_one_fault_per_fifty_stamps(
    tmp_path: Path, stamps: int
) -> None:
    tally = _tally([])
    rig = _rig(tmp_path, tally, set())
    rig.board.capabilities = frozenset({"flash_cut", "power_control", "rtc_control", "gpio"})
    plan = rig.schedule(stamps)
    kinds = [kind for at in plan.values() for kind in at]
    assert set(kinds) == set(ALL_KINDS)
    assert len(kinds) >= stamps / 50
    assert all(1 <= at <= stamps for at in plan)
    again = _rig(tmp_path / "again", tally, set())
    again.board.capabilities = rig.board.capabilities
    assert again.schedule(stamps) == plan, "the same seed must give the same schedule"


def test_a_ble_link_is_never_scheduled_a_bit_flip(tmp_path: Path) -> None:
    rig = _rig(tmp_path, _tally([]), set())
    rig.port = SimpleNamespace(fault_kinds=BLE_FAULT_KINDS)  # type: ignore[assignment]
    kinds = {kind for at in rig.schedule(300).values() for kind in at}
    assert "wire_corrupt" not in kinds
    assert {f"wire_{kind}" for kind in BLE_FAULT_KINDS} <= kinds
