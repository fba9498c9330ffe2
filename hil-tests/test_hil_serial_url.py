"""`--board serial:URL`, the path QA uses on a bench, run here against an emulated board.

A bench exposes a board through ser2net (raw TCP or RFC 2217), presses its stamp with an
actuator and switches its supply, both driven by shell commands. Here the board is the emulated
one (real firmware) behind a small TCP bridge, and the bench commands write to a FIFO that this
test turns into the emulated board's stamp, power cut and power on. The inner pytest run sees
only what it would see on a bench: a `socket://` URL, a seal.json, and three shell commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sealink_hil.plugin import HilSettings
from sealink_hil.tcpbridge import TcpSerialBridge

INNER_TEST = """
import pytest

@pytest.mark.needs_gpio
@pytest.mark.needs_power_control
def test_stamps_over_a_socket_url(rig, hil):
    assert hil.board.kind == "serial" and hil.board.target.startswith("socket://")
    for _ in range(3):
        rig.stamp()
    rig.inject("power_cut_random")
    for _ in range(2):
        rig.stamp()
    rig.settle()
    result = rig.result(5)
    assert result.ok, result.line + "; " + rig.where()

@pytest.mark.needs_flash_cut
def test_flash_cut_is_skipped_on_a_real_board(rig):
    raise AssertionError("must be skipped")
"""


class _FifoActuator:
    """The bench's actuator and power switch: each line written to the FIFO is one action."""

    def __init__(self, path: Path, board: Any) -> None:
        self.path = path
        self.board = board
        os.mkfifo(path)
        self._stop = False
        self.actions: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="fifo-actuator", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        act = {"stamp": self.board.stamp, "off": self.board.power_cut, "on": self.board.start}
        while not self._stop:
            with self.path.open() as fifo:  # blocks until a bench command opens it
                for line in fifo:
                    action = line.strip()
                    if action in act:
                        self.actions.append(action)
                        act[action]()

    def command(self, action: str) -> str:
        return f"sh -c 'echo {action} > {self.path}'"

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)  # wakes the reader blocked in open(); it sees EOF and stops
        self._thread.join(timeout=5)


@pytest.fixture
def bench(
    tmp_path: Path, hil: HilSettings
) -> Iterator[tuple[TcpSerialBridge, _FifoActuator, Path, str]]:
    if hil.board.kind != "emulated":
        pytest.skip(
            "self-test of the serial:URL path on an emulated board; this run has a real one"
        )
    from sealink_sim.emulator import EmulatedBoard

    key = secrets.token_bytes(32)
    key_file = tmp_path / "seal-bench-1.json"  # as tools/provision.py writes it
    key_file.touch(mode=0o600)
    key_file.write_text(json.dumps({"device_id": "seal-bench-1", "key": key.hex()}))
    with EmulatedBoard(
        tmp_path / "board", device_id="seal-bench-1", device_key=key, heapsize=hil.emulator_heap
    ) as board:
        bridge = TcpSerialBridge(board.uart_path).start()
        actuator = _FifoActuator(tmp_path / "actuator.fifo", board)
        try:
            yield bridge, actuator, key_file, str(board.log_path)
        finally:
            actuator.close()
            bridge.close()


def test_a_board_on_a_socket_url_runs_the_suite(
    pytester: pytest.Pytester, bench: tuple[TcpSerialBridge, _FifoActuator, Path, str]
) -> None:
    bridge, actuator, key_file, device_log = bench
    pytester.makepyfile(INNER_TEST)
    result = pytester.runpytest(
        "-p",
        "sealink_hil.plugin",
        "-p",
        "no:cacheprovider",
        "-rs",
        f"--board=serial:{bridge.url}",
        f"--device-key-file={key_file}",
        f"--press-cmd={actuator.command('stamp')}",
        f"--power-cmd-off={actuator.command('off')}",
        f"--power-cmd-on={actuator.command('on')}",
        f"--hil-results={pytester.path / 'results'}",
    )
    assert result.ret == 0, f"inner run failed; device log: {device_log}\n{result.stdout.str()}"
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*lacks flash_cut*"])
    assert actuator.actions.count("stamp") == 5
    assert actuator.actions.count("off") == 1
