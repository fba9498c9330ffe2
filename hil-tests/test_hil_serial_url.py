"""`--board serial:URL`, the path QA uses on a bench: the suite, twice, against one board.

A bench exposes a board through ser2net (raw TCP or RFC 2217), presses its stamp with an
actuator and switches its supply, both driven by shell commands; the board keeps its journal
from run to run. Here the board is the emulated one (real firmware, one flash image for the
whole test) behind a small TCP bridge, and the bench commands go through a FIFO that this test
turns into the emulated board's stamp, power cut and power on. Each inner run is a fresh
`pytest` process started in a folder of its own, loading the plugin by its entry point, and
sees only what it would see on a bench: a `socket://` URL, a seal.json, three shell commands and
a state folder for its gateway's ledger (`--hil-state`), the same for both runs.

The inner runs are a subset of test_hil_faults.py (the whole suite twice over would triple the
default run's time): plain impressions, power cuts (between presses: an actuator cannot hold the
stamp), a gateway SIGKILL with events in flight, and a flash-cut test that must be skipped. The
second run starts where the first ended, dozens of counters and several boots in, and must pass
all the same; a third, whose gateway lost its ledger, must fail at once and say so. The whole
suite runs the same way by hand (README, "QA: hardware-in-the-loop").
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sealink_hil.plugin import HilSettings
from sealink_hil.tcpbridge import TcpSerialBridge
from sealink_sim.emulator import EmulatedBoard
from sealink_sim.enrolment import SIM_AUTHORITY

HIL_DIR = Path(__file__).resolve().parent
SUBSET = [
    "test_hil_faults.py::test_impressions_reach_the_observer_signed_and_in_order",
    "test_hil_faults.py::test_power_cut_at_a_random_instant_of_a_press",
    "test_hil_faults.py::test_host_sigkill_and_restart_on_the_same_ledger",
    "test_hil_faults.py::test_power_cut_at_a_flash_block_write",
]
PASSED = 3
# The flash cut (a real board has no block device to cut at), and the [ble] variants of the
# three tests marked `transports` (this suite drives no BLE adapter for a real board).
SKIPPED = 4


class _FifoActuator:
    """The bench's actuator and power switch: each line written to the FIFO is one action.

    A bench command returns once its action is done (as `uhubctl` does once the port is
    switched): it writes the action, then reads the acknowledgement from a second FIFO.
    """

    def __init__(self, folder: Path, board: EmulatedBoard) -> None:
        self.path = folder / "actuator.fifo"
        self.ack = folder / "actuator.ack"
        os.mkfifo(self.path)
        os.mkfifo(self.ack)
        self.actions: list[str] = []
        self._stop = False
        act: dict[str, Callable[[], None]] = {
            "stamp": board.stamp,
            "off": board.power_cut,
            # A switch turned on that is already on changes nothing.
            "on": lambda: None if board.running else board.start(),
        }
        self._act = act
        self._thread = threading.Thread(target=self._serve, name="fifo-actuator", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            with self.path.open() as fifo:  # blocks until a bench command opens it
                for line in fifo:
                    action = line.strip()
                    if action in self._act:
                        self.actions.append(action)
                        self._act[action]()
                    with self.ack.open("w") as ack:  # blocks until the command reads it
                        ack.write("done\n")

    def command(self, action: str) -> str:
        return f"sh -c 'echo {action} > {self.path} && read done < {self.ack}'"

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)  # wakes the reader blocked in open(); it sees EOF and stops
        self._thread.join(timeout=5)


@dataclass
class _Bench:
    board: EmulatedBoard
    bridge: TcpSerialBridge
    actuator: _FifoActuator
    key_file: Path
    state: Path
    # The enrolment authority the board's firmware trusts, kept as a bench keeps it: a file.
    authority_key: Path


@pytest.fixture
def bench(tmp_path: Path, hil: HilSettings, requires: Callable[..., None]) -> Iterator[_Bench]:
    # The board is this test's own emulated one: the run's board plays no part here.
    requires("emulator")
    key = secrets.token_bytes(32)
    board = EmulatedBoard(
        tmp_path / "board", device_id="seal-bench-1", device_key=key, heapsize=hil.emulator_heap
    )
    key_file = tmp_path / "seal-bench-1.json"  # as tools/provision.py --chip writes it
    key_file.touch(mode=0o600)
    conf = {"device_id": "seal-bench-1", "key": key.hex(), "seal_key": board.provision().hex()}
    key_file.write_text(json.dumps(conf))
    authority_key = tmp_path / "authority.key"
    SIM_AUTHORITY.save(authority_key, "authority key")
    with board:
        bridge = TcpSerialBridge(board.uart_path).start()
        actuator = _FifoActuator(tmp_path, board)
        try:
            yield _Bench(board, bridge, actuator, key_file, tmp_path / "bench-state", authority_key)
        finally:
            actuator.close()
            bridge.close()


def _run_inner(
    pytester: pytest.Pytester, bench: _Bench, name: str, tests: list[str], state: Path
) -> pytest.RunResult:
    results = pytester.path / name
    return pytester.runpytest_subprocess(
        *(str(HIL_DIR / test) for test in tests),
        "-p",
        "no:cacheprovider",
        "-p",
        "no:hypothesispytest",  # unused here, and ~1 s to import
        "-rs",
        f"--board=serial:{bench.bridge.url}",
        f"--device-key-file={bench.key_file}",
        f"--hil-authority-key={bench.authority_key}",
        f"--press-cmd={bench.actuator.command('stamp')}",
        f"--power-cmd-off={bench.actuator.command('off')}",
        f"--power-cmd-on={bench.actuator.command('on')}",
        f"--hil-state={state}",
        f"--hil-results={results}",
        f"--junit-xml={results / 'junit.xml'}",
    )


def _run_suite(pytester: pytest.Pytester, bench: _Bench, name: str) -> list[dict[str, str]]:
    """One inner run of SUBSET on the bench; the JUnit properties of each test that ran."""
    results = pytester.path / name
    junit = results / "junit.xml"
    result = _run_inner(pytester, bench, name, SUBSET, bench.state)
    assert result.ret == 0, (
        f"{name} failed; device log: {bench.board.log_path}; artifacts: {results}\n"
        f"{result.stdout.str()}"
    )
    result.assert_outcomes(passed=PASSED, skipped=SKIPPED)
    result.stdout.fnmatch_lines(["SKIPPED*lacks flash_cut*"])
    result.stdout.fnmatch_lines(["SKIPPED*over BLE only the emulated board*"])
    cases = []
    for case in ET.parse(junit).iter("testcase"):
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        if "history_counter" in props:
            cases.append({"test": case.get("name", ""), **props})
    return cases


# ~55 s (the HIL suite, twice, in pytester): `make test-slow`.
@pytest.mark.slow
def test_the_suite_passes_twice_in_a_row_on_a_board_with_history(
    pytester: pytest.Pytester, bench: _Bench
) -> None:
    first = _run_suite(pytester, bench, "run-1")
    after_first = int(bench.board.counter or 0)
    second = _run_suite(pytester, bench, "run-2")

    assert int(first[0]["history_counter"]) == 0, first
    assert after_first >= 20, f"run 1 left the board at counter {after_first}"
    # Run 2 started where run 1 ended: the board's history and the ledger that holds it.
    start = second[0]
    assert int(start["history_counter"]) == after_first, (first, second)
    assert int(start["history_ledger"]) == after_first, (first, second)
    counters = [int(c["history_counter"]) for c in first + second]
    assert counters == sorted(counters) and len(set(counters)) == len(counters), counters
    assert int(bench.board.counter or 0) > after_first
    # Three power cuts a run, each switched off and on again by the bench commands.
    assert bench.actuator.actions.count("off") == 6, bench.actuator.actions

    # The same board with its history, against a gateway whose ledger was lost: the first test
    # fails at once and says what happened and what to do, instead of 40 tests failing later.
    lost = _run_inner(pytester, bench, "run-3", SUBSET[:1], bench.state.with_name("lost-state"))
    lost.assert_outcomes(errors=1, skipped=1)  # the [ble] variant skips
    lost.stdout.fnmatch_lines(
        [
            "*the board has seen counters up to * acknowledged, but this gateway's ledger*"
            "holds only up to 0*bench state was lost*"
        ]
    )
