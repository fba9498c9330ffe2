"""Operator identity at the seal (SPEC §5.7) on the whole link: the real firmware on the emulated
board -> port -> gateway -> Mosquitto -> the independent observer.

`sealink operators set` gives operators 1 and 2 a PIN; a permit names operator 2. A press before
anyone identified is FORCED; operator 1's PIN does not open it; operator 2's does, and the
impressions then record operator 2. Three wrong PINs raise PIN_LOCKOUT, journaled and published
on MQTT, and during the lockout operator 2's right PIN is refused.

The keypad is emulated (the board's control channel presses each key, held and let go longer
than the firmware's debounce, as a finger does): this machine has no GPIO, and the firmware's
own scanner, not the emulation, decides what a key is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
import pytest
from sealink_hil.dut import EmulatedDut
from sealink_hil.rig import Rig
from sealproto import messages as m
from sealproto import timers

if TYPE_CHECKING:
    from sealink_sim.emulator import EmulatedBoard

pytestmark = [pytest.mark.requires("emulator"), pytest.mark.requires("gpio")]

WAIT_S = 60.0


def _emulated(rig: Rig) -> EmulatedBoard:
    assert isinstance(rig.board, EmulatedDut), "needs the emulated board (its keypad)"
    return rig.board.board


def _record(rig: Rig, counter: int) -> dict[int, Any]:
    device = rig.board.device_id
    rig.observer.wait_until(
        lambda o: counter in o.device(device).events, WAIT_S, f"record {counter} published"
    )
    event: dict[int, Any] = cbor2.loads(rig.observer.device(device).events[counter])
    return event


def _identified(board: EmulatedBoard, pin: str) -> int:
    """Type `pin` and '#'; the operator the seal reports ("@ident", -1 while locked out)."""
    seen = sum(1 for name, _ in board.reports if name == "ident")
    board.pin(pin)
    board.wait_until(lambda b: sum(1 for name, _ in b.reports if name == "ident") > seen, WAIT_S)
    return int([value for name, value in board.reports if name == "ident"][-1])


def _pin_file(tmp_path: Path, name: str, pin: str) -> str:
    path = tmp_path / name
    path.write_text(pin + "\n")
    path.chmod(0o600)
    return str(path)


def _delivered(rig: Rig, kind: str, count: int) -> None:
    # The gateway answers each command with the seal's RESULT; wait for all of `kind` done.
    def done() -> bool:
        rows = [json.loads(line) for line in rig.host.cli("permits", "list").splitlines()]
        mine = [r for r in rows if r["kind"] == kind]
        return len(mine) == count and all(r["state"] == "done" for r in mine)

    rig.observer.wait_until(lambda _o: done(), WAIT_S, f"{count} {kind} commands done")


def test_an_operator_identifies_at_the_seal_and_wrong_pins_lock_out(
    rig: Rig, tmp_path: Path
) -> None:
    board = _emulated(rig)
    device = rig.board.device_id
    rig.host.cli(
        "operators", "set", device, "--id", "1", "--pin-file", _pin_file(tmp_path, "a", "1111")
    )
    rig.host.cli(
        "operators",
        "set",
        device,
        "--id",
        "2",
        "--pin-file",
        _pin_file(tmp_path, "b", "4711"),
        "--card-uid",
        "04a22b91",
    )
    _delivered(rig, "operator", 2)
    rig.host.cli("permits", "issue", device, "--count", "5", "--operators", "2")
    _delivered(rig, "permit", 1)
    assert not board.lock_open, "a permit naming operators stays shut until one identifies"

    forced = rig.stamp()
    assert _record(rig, forced)[m.EV_KIND] == m.KIND_FORCED, rig.where()
    assert _identified(board, "1111") == 1
    assert not board.lock_open, "operator 1 is not named by the permit"

    assert _identified(board, "4711") == 2
    board.wait_until(lambda b: b.lock_open, WAIT_S)
    for _ in range(2):
        record = _record(rig, rig.stamp())
        assert (record[m.EV_KIND], record[m.EV_OPERATOR]) == (m.KIND_IMPRESSION, 2), record

    for _ in range(timers.PIN_FAILURES):
        assert _identified(board, "0000") == 0
    rig.observer.wait_until(
        lambda o: any(a.get("code") == m.AL_PIN_LOCKOUT for a in o.device(device).alarm_log),
        WAIT_S,
        f"PIN_LOCKOUT on MQTT; {rig.where()}",
    )
    alarm = next(
        a for a in rig.observer.device(device).alarm_log if a.get("code") == m.AL_PIN_LOCKOUT
    )
    assert alarm["code_name"] == "pin_lockout"
    assert _identified(board, "4711") == -1, "refused during the lockout, the right PIN too"
    rig.settle()
    result = rig.result(len(rig.counted))
    assert result.ok, f"{result.line}; problems: {result.problems}; {rig.where()}"
