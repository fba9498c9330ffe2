"""`--board serial:URL`, the path QA uses on a bench, run here against an emulated board.

A bench exposes a board through ser2net (raw TCP or RFC 2217) and presses its stamp with an
actuator driven by a shell command. Here the board is the emulated one (real firmware), exposed
through a small TCP bridge, and the "actuator" is a shell command writing to a FIFO that this
test turns into the emulated board's stamp command. The inner pytest run sees only what it would
see on a bench: a `socket://` URL, a device id, a key file and a press command.
"""

from __future__ import annotations

import contextlib
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
def test_stamps_over_a_socket_url(rig, hil):
    assert hil.board.kind == "serial" and hil.board.target.startswith("socket://")
    for _ in range(5):
        rig.stamp()
    rig.settle()
    result = rig.result(5)
    assert result.ok, result.line + "; " + rig.where()
"""


class _FifoActuator:
    """Each line written to the FIFO presses the emulated board's stamp once."""

    def __init__(self, path: Path, board: Any) -> None:
        self.path = path
        self.board = board
        os.mkfifo(path)
        self._stop = False
        self.presses = 0
        self._thread = threading.Thread(target=self._serve, name="fifo-actuator", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            with self.path.open() as fifo:  # blocks until a press command opens it
                for line in fifo:
                    if line.strip() == "stamp":
                        self.presses += 1
                        self.board.stamp()

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
    from sealink.emulator import EmulatedBoard

    key = secrets.token_bytes(32)
    key_file = tmp_path / "seal-bench-1.key"
    key_file.touch(mode=0o600)
    key_file.write_text(key.hex())
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
        f"--board=serial:{bridge.url}",
        "--device-id=seal-bench-1",
        f"--device-key-file={key_file}",
        f"--press-cmd=sh -c 'echo stamp > {actuator.path}'",
        f"--hil-results={pytester.path / 'results'}",
    )
    assert result.ret == 0, f"inner run failed; device log: {device_log}\n{result.stdout.str()}"
    result.assert_outcomes(passed=1)
    assert actuator.presses == 5
