"""The seal against whoever holds its flash, and a journal with no room (SPEC §10.4, §12), on the
whole link: board -> port -> gateway -> Mosquitto -> the independent observer.

- A flash image restored from earlier takes the records made since with it, but not the seal's
  chip, which counted them: the boot after it makes a REBOOT record that says how many records
  are missing and raises ROLLBACK, and the gateway stores the record and publishes the alarm.
- Presses after the journal fills: IMPRESSIONs stop where the reserve begins (the lock shuts),
  FORCED records take the reserve, then every press is only counted and alarmed; once the
  gateway drains the journal, an UNRECORDED record says how many presses got no record.

Both need the emulated board: one copies its flash image, the other gives it a small journal.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import pytest
from sealink_hil.dut import EmulatedDut
from sealink_hil.linkfaults import D2H
from sealink_hil.rig import Rig
from sealink_hil.wirelog import TX
from sealproto import messages as m

if TYPE_CHECKING:
    from sealink_sim.emulator import EmulatedBoard

pytestmark = [pytest.mark.requires("emulator"), pytest.mark.requires("gpio")]

# A journal this small fills in a few presses: the reserve is a quarter of it (seal/app.py).
SMALL_JOURNAL = 8
RESERVE = SMALL_JOURNAL // 4
WAIT_S = 60.0


def _emulated(rig: Rig) -> EmulatedBoard:
    assert isinstance(rig.board, EmulatedDut), "needs the emulated board"
    return rig.board.board


def _record(rig: Rig, counter: int) -> dict[int, Any]:
    event: dict[int, Any] = cbor2.loads(rig.observer.device(rig.board.device_id).events[counter])
    return event


def _published(rig: Rig, counter: int) -> None:
    device = rig.board.device_id
    rig.observer.wait_until(
        lambda o: counter in o.device(device).events,
        WAIT_S,
        f"record {counter} published and verified; {rig.where()}",
    )


def _alarms(rig: Rig) -> list[dict[str, Any]]:
    return list(rig.observer.device(rig.board.device_id).alarm_log)


def _open_with_a_permit(rig: Rig, count: int) -> None:
    rig.host.issue_permit(rig.board.device_id, count)
    board = _emulated(rig)
    rig.board.wait_until(lambda _d: board.lock_open, WAIT_S, "the permit to open the lock")


def test_a_restored_flash_image_is_recorded_and_alarmed(rig: Rig, tmp_path: Path) -> None:
    board = _emulated(rig)
    _open_with_a_permit(rig, 3)
    rig.stamp()
    rig.settle()
    # F's copy of the flash, taken with the power off (as it would be, off the board).
    rig.board.power_cut()
    saved = tmp_path / "flash-copy.img"
    shutil.copyfile(board.flash_path, saved)
    rig.board.power_on()
    held = rig.board.counter
    # Offline: 3 impressions and a case opened, which the gateway never sees...
    rig.host.stop()
    offline = [rig.stamp() for _ in range(3)]
    board.open_case()
    rig.board.wait_until(lambda d: d.counter == held + 4, WAIT_S, "the TAMPER record")
    board.close_case()
    assert offline == [held + 1, held + 2, held + 3], rig.where()
    # ...then the copy is written back and the seal powered on again.
    rig.board.power_cut()
    shutil.copyfile(saved, board.flash_path)
    rig.board.power_on()
    assert m.AL_ROLLBACK in board.alarms, f"no ROLLBACK alarm at boot; {rig.where()}"
    rig.host.start()
    _published(rig, held + 1)
    reboot = _record(rig, held + 1)
    assert reboot[m.EV_KIND] == m.KIND_REBOOT, f"record {held + 1}: {reboot}; {rig.where()}"
    assert reboot[m.EV_CAUSE] == m.CA_ROLLBACK | 4 << m.CA_MISSING_SHIFT, (
        f"the REBOOT must say 4 records are missing: cause {reboot[m.EV_CAUSE]:#x}; {rig.where()}"
    )
    rig.observer.wait_until(
        lambda _o: any(
            a.get("source") == "device" and a.get("code") == m.AL_ROLLBACK and a.get("detail") == 4
            for a in _alarms(rig)
        ),
        WAIT_S,
        f"the gateway to publish ALARM ROLLBACK (detail 4); alarms {_alarms(rig)}; {rig.where()}",
    )
    assert not rig.observer.problems, f"{rig.observer.problems}; {rig.where()}"


def test_presses_after_the_journal_fills_are_recorded_then_counted(rig: Rig) -> None:
    board = _emulated(rig)
    board.journal_capacity = SMALL_JOURNAL
    rig.board.power_cut()
    rig.board.power_on()
    _open_with_a_permit(rig, 100)
    rig.settle()
    first = rig.board.counter + 1
    rig.host.stop()

    def exhausted_alarms() -> int:
        return board.alarms.count(m.AL_RESERVE_EXHAUSTED)

    # Press until a press finds no room at all (not even in the reserve), then 3 more: every
    # press is a record or an ALARM RESERVE_EXHAUSTED, which says so at once.
    presses = 0
    while not exhausted_alarms():
        assert presses < 2 * SMALL_JOURNAL, f"the journal never filled; {rig.where()}"
        before = board.counter
        board.stamp()
        presses += 1
        rig.board.wait_until(
            lambda _d, n=before: board.counter > n or exhausted_alarms() > 0,
            WAIT_S,
            f"press {presses} to be recorded or counted",
        )
    newest = board.counter
    for extra in range(1, 4):
        board.stamp()
        presses += 1
        rig.board.wait_until(
            lambda _d, n=extra: exhausted_alarms() > n, WAIT_S, "the press to be counted"
        )
    assert board.counter == newest, f"a press past the reserve was recorded; {rig.where()}"
    # The gateway back: it stores the journal and acknowledges it; the count is recorded.
    mark = rig.port.wire.mark()
    rig.host.start()
    status = rig.port.wire.wait_for("STATUS", D2H, TX, mark, WAIT_S, "the STATUS after WELCOME")
    assert int(status.get("flags")) & m.F_RESERVE_EXHAUSTED, f"{status.fields}; {rig.where()}"
    _published(rig, newest + 1)
    kinds = [_record(rig, c)[m.EV_KIND] for c in range(first, newest + 1)]
    made = [k for k in kinds if k in (m.KIND_IMPRESSION, m.KIND_FORCED)]
    # IMPRESSIONs up to the reserve, the lock shut (JOURNAL_FULL journaled), FORCED from the
    # reserve: in that order, and nothing after the reserve.
    impressions = kinds.index(m.KIND_ALARM)
    assert impressions > 0 and kinds == [m.KIND_IMPRESSION] * impressions + [m.KIND_ALARM] + [
        m.KIND_FORCED
    ] * (len(kinds) - impressions - 1), f"kinds {kinds}; {rig.where()}"
    assert 0 < len(kinds) - impressions - 1 <= RESERVE, f"kinds {kinds}; {rig.where()}"
    counted = _record(rig, newest + 1)
    # Nothing lost: every press is a record, or in the count the UNRECORDED record carries.
    assert (counted[m.EV_KIND], counted[m.EV_CAUSE]) == (m.KIND_UNRECORDED, presses - len(made)), (
        f"record {newest + 1}: {counted}, {presses} presses, {len(made)} recorded; {rig.where()}"
    )
    assert presses - len(made) >= 4, rig.where()
    # Each press past the reserve was alarmed with the count so far (the gateway was away: the
    # UNRECORDED record is what outlives the seal's RAM, and what it stored).
    details = [
        int(f.get("detail"))
        for f in rig.port.wire.frames("ALARM", D2H, TX)
        if f.get("code") == "RESERVE_EXHAUSTED"
    ]
    assert details == list(range(1, presses - len(made) + 1)), f"{details}; {rig.where()}"
    assert not rig.observer.problems, f"{rig.observer.problems}; {rig.where()}"
