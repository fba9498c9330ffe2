"""The insider of issue 9, on the whole link: what someone holding the gateway host's files can
and cannot make the seal do (SPEC §15).

An impostor gateway with a copy of the ledger, the seals' link keys and the countersigning key
(a backup, a copied disk) serves the seal's port while the real gateway is down. It speaks the
link perfectly and stores and acknowledges every record; but its acknowledgements are signed
with an acknowledgement key the seal was never enrolled with, so the seal frees nothing (SPEC
§5.11), says so, and the real gateway gets every record when it is back.

With the acknowledgement key inside the gateway's TPM, a copy of the disk takes even its key
file, and that signs nothing on another machine: only the real gateway's TPM can.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sealink_hil.gateway import HostError, HostProcess
from sealink_hil.linkfaults import D2H, H2D
from sealink_hil.rig import Rig
from sealink_hil.waits import until
from sealink_hil.wirelog import TX, Frame, WireLog
from sealink_sim.swtpm import SwTpm

OFFLINE = 20  # two journal segments and more (8 records each): an ACK of them would free two

pytestmark = pytest.mark.requires("gpio")


def _copy_host_files(real: HostProcess, into: Path) -> None:
    """What a copy of the gateway host gives: the ledger (through SQLite's backup, as a
    consistent copy of a live file is made), the link key store and the countersigning key."""
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    with sqlite3.connect(real.ledger_path) as src, sqlite3.connect(into / "ledger.sqlite") as dst:
        src.backup(dst)
    src.close()
    dst.close()
    for name in ("link-keys", "gateway.key"):
        shutil.copy2(real.state_dir / name, into / name)


def _impostor(rig: Rig, tmp_path: Path, **options: Any) -> HostProcess:
    """A second gateway for the seal's port, holding a copy of the real host's files."""
    impostor = HostProcess(
        tmp_path / "impostor",
        broker_port=rig.broker.port,
        log_path=tmp_path / "impostor.log",
        state_dir=tmp_path / "impostor-state",
        gateway_id="gw-impostor",
        prefix="impostor",
        **options,
    )
    _copy_host_files(rig.host, impostor.state_dir)
    return impostor


def test_an_impostor_with_the_host_files_frees_nothing_on_the_seal(
    rig: Rig, tmp_path: Path
) -> None:
    device = rig.board.device_id
    for _ in range(2):
        rig.stamp()
    rig.settle()
    rig.host.stop()
    for _ in range(OFFLINE):
        rig.stamp()  # journaled; no gateway to send them to
    newest = int(rig.board.counter)

    impostor = _impostor(rig, tmp_path)
    impostor.init_keys()  # its own acknowledgement key: the real one never left the real host
    impostor.listen(rig.port.host_url)
    impostor.start()
    wire = rig.port.wire
    mark = len(wire.frames())
    try:
        wire.wait_until(
            lambda w: any(
                f.get("code") == "UNVERIFIED_ACK" for f in w.frames("ALARM", D2H, TX, mark)
            ),
            60,
            "the seal's UNVERIFIED_ACK alarm to the impostor",
        )
        # Everything the seal holds, the ALARM record of the refusal too.
        until(
            lambda: impostor.ledger_counter(device),
            lambda stored: stored > newest,
            60,
            f"the impostor to store counters past {newest}",
        )
        wire.wait_until(
            lambda w: any(int(f.get("counter")) > newest for f in w.frames("ACK", H2D, TX, mark)),
            60,
            f"the impostor's ACK past {newest}",
        )
    finally:
        impostor.stop()

    rig.host.start()
    rig.settle()  # every record reached the real gateway and the observer after all
    result = rig.result(rig.presses)
    assert result.lost == 0 and result.ok, f"{result.line}; {result.problems}; {rig.where()}"
    # And the real gateway learns of the impostor from the seal's own record of the refusal.
    alarm = until(
        lambda: rig.host.ledger_counter(device),
        lambda stored: stored > newest,
        60,
        "the seal's ALARM record at the real gateway",
    )
    assert alarm == newest + 1


def _unverified(wire: WireLog) -> list[Frame]:
    return [f for f in wire.frames("ALARM", D2H, TX) if f.get("code") == "UNVERIFIED_ACK"]


@pytest.mark.tpm
def test_an_ack_key_in_the_tpm_frees_the_seals_records_and_its_copied_file_signs_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    wire = rig.port.wire
    rig.stamp()
    rig.settle()
    status = wire.last("STATUS", D2H)
    assert status is not None, f"no STATUS from the seal; {rig.where()}"
    free = int(status.get("free"))
    rig.host.stop()
    for _ in range(OFFLINE):
        rig.stamp()
    rig.host.start()
    rig.settle()
    # A new session's STATUS says what the seal still holds: it freed what the TPM signed.
    mark = len(wire.frames())
    rig.host.stop()
    rig.host.start()
    freed = wire.wait_for("STATUS", D2H, TX, mark, 60, "the next session's STATUS")
    print(f"sealink HIL: journal free {free} before {OFFLINE} records, {freed.get('free')} after")
    assert not _unverified(wire), f"the seal refused the TPM's signature; {rig.where()}"
    assert int(freed.get("free")) > free - OFFLINE, f"the seal freed nothing; {rig.where()}"

    # A copy of every file of the gateway host, the acknowledgement key's file too, on a machine
    # with a TPM of its own.
    with SwTpm(tmp_path / "impostor-tpm") as other:
        impostor = _impostor(rig, tmp_path, ack_key_tpm=other.tcti)
        shutil.copy2(rig.host.ack_key_path, impostor.ack_key_path)
        impostor.listen(rig.port.host_url)
        with pytest.raises(HostError):
            impostor.start()
        impostor.stop()
    log = impostor.log_path.read_text()
    assert "did not make it" in log and "Traceback" not in log, log
    result = rig.result(rig.presses)
    assert result.lost == 0 and result.ok, f"{result.line}; {result.problems}; {rig.where()}"
