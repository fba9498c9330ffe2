"""The plugin itself, in throwaway pytest runs (pytester): options, skip reasons, artifacts.

Real boards do not exist here, so these runs point `--board serial:` at URLs nobody opens, or at
a pty with a stand-in board behind it that only says HELLO: what is tested is what the plugin
decides before a board is touched, and the shell commands it runs. No `-p` is given: the plugin
loads through its entry point, as it does on a bench.
"""

from __future__ import annotations

import json
import os
import threading
import tty
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from sealink_sim.simdevice import SimChip
from sealproto import auth, framing
from sealproto import messages as m

CAPABILITY_TESTS = """
import pytest

@pytest.mark.needs_power_control
def test_power(): pass

@pytest.mark.needs_flash_cut
def test_flash(): pass

@pytest.mark.requires("gpio")
def test_gpio(): pass

@pytest.mark.requires("rtc_control")
def test_rtc(): pass

def test_plain(): pass
"""


# The inner runs need no hypothesis: its plugin would be imported again for each (~1 s).
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*QUIET, "-rs", *args)


def test_the_plugin_is_an_installed_entry_point_found_from_any_folder(
    pytester: pytest.Pytester,
) -> None:
    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("sealink_hil") == "sealink_hil.plugin", found
    # A fresh interpreter in a folder with no conftest and no pytest config: a QA bench.
    result = pytester.runpytest_subprocess(*QUIET, "--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*sealink HIL:*", "*--board=emulated|serial:URL|ble:ADDRESS*"])


def test_options_live_in_one_named_group(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--help")
    text = result.stdout.str()
    group = text[text.index("sealink HIL:") :]
    for option in (
        "--board=emulated|serial:URL|ble:ADDRESS",
        "--power-cmd-off",
        "--power-cmd-on",
        "--press-cmd",
        "--soak-stamps",
        "--hil-seed",
        "--hil-results",
    ):
        assert option in group, f"{option} missing from the 'sealink HIL' group:\n{group}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("bogus", "use 'emulated', 'serial:URL'"),
        ("serial:", "use 'emulated', 'serial:URL'"),
        ("ble:not-an-address", "a BLE address is AA:BB:CC:DD:EE:FF"),
    ],
)
def test_a_bad_board_is_a_usage_error_naming_the_accepted_forms(
    pytester: pytest.Pytester, value: str, message: str
) -> None:
    result = _run(pytester, f"--board={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--board*{message}*"])


def test_power_commands_go_together(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--power-cmd-off=true")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--power-cmd-off and --power-cmd-on go together*"])


def test_soak_stamps_must_be_a_positive_number(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--soak-stamps=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--soak-stamps*'0' must be at least 1*"])


def test_emulated_board_has_every_capability(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CAPABILITY_TESTS)
    result = _run(pytester)
    result.assert_outcomes(passed=5)


def test_an_unknown_capability_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires("teleport")
        def test_beam(): pass
        """
    )
    result = _run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown capability 'teleport'; known: emulator, flash_cut*"])


def test_the_requires_fixture_skips_at_run_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_hold(requires):
            requires("gpio", "gpio_hold")
            raise AssertionError("must be skipped")
        """
    )
    result = _run(pytester, "--board=serial:/dev/ttyUSB7", "--press-cmd=true")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*lacks gpio_hold*an actuator does whole presses*"])


def test_a_serial_board_skips_what_it_lacks_and_says_why(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CAPABILITY_TESTS)
    result = _run(pytester, "--board=serial:socket://127.0.0.1:9")
    result.assert_outcomes(passed=1, skipped=4)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED*board serial:socket://127.0.0.1:9 lacks power_control*--power-cmd-off*",
            "SKIPPED*lacks flash_cut*only the emulated board*",
            "SKIPPED*lacks gpio*--press-cmd*",
            "SKIPPED*lacks rtc_control*",
        ]
    )


def test_power_and_press_commands_give_a_serial_board_those_capabilities(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(CAPABILITY_TESTS)
    result = _run(
        pytester,
        "--board=serial:/dev/ttyUSB7",
        "--power-cmd-off=true",
        "--power-cmd-on=true",
        "--press-cmd=true",
    )
    result.assert_outcomes(passed=3, skipped=2)


def test_ble_board_parses_and_skips_with_a_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses_board(dut): raise AssertionError('must not run')")
    result = _run(pytester, "--board=ble:AA:BB:CC:DD:EE:FF")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*BLE boards not yet supported*"])


def test_real_board_without_identity_skips_naming_the_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses_board(dut): raise AssertionError('must not run')")
    result = _run(pytester, "--board=serial:rfc2217://bench-7:4001")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*give --device-key-file*tools/provision.py*"])


class _HelloBoard:
    """A stand-in for a real board that only says HELLO, every 50 ms, on a pty.

    Mocked because no real board exists here; what is under test is the plugin running the
    power commands and waiting for the board's HELLO after power on, not the board.
    """

    def __init__(self, device_id: str, key: bytes) -> None:
        self.fd, self._slave = os.openpty()
        tty.setraw(self.fd)
        tty.setraw(self._slave)
        os.set_blocking(self.fd, False)
        self.path = os.ttyname(self._slave)
        hello = {
            m.K_TYPE: m.HELLO,
            m.HE_VERSION: 3,
            m.HE_DEVICE: device_id,
            m.HE_NONCE: bytes(16),
            m.HE_BOOT: 3,
            m.HE_NEXT: 42,
            m.HE_FIRMWARE: "seal-0.1.0/esp32",
            m.HE_ENROLMENT: 0,
        }
        self._frame = b"\x00" + framing.encode_frame(m.encode(auth.sign(hello, key)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._say_hello, daemon=True)
        self._thread.start()

    def _say_hello(self) -> None:
        while not self._stop.wait(0.05):
            try:
                os.write(self.fd, self._frame)
            except BlockingIOError:
                continue  # nobody is reading: the pty is full, as a UART's FIFO would be

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.fd)
        os.close(self._slave)


@pytest.fixture
def hello_board() -> Iterator[_HelloBoard]:
    board = _HelloBoard("seal-bench-1", bytes.fromhex("11" * 32))
    try:
        yield board
    finally:
        board.close()


def test_real_board_power_cut_runs_the_shell_commands(
    pytester: pytest.Pytester, hello_board: _HelloBoard
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.requires("power_control")
        def test_cut(dut):
            dut.power_cut()
            dut.power_on()
            assert dut.counter == 41, "HELLO next=42: the board holds 41 records"
            assert dut.firmware == "seal-0.1.0/esp32"
        """
    )
    key_file = pytester.path / "seal.json"
    seal_key = SimChip.of(b"a bench board's chip").public.hex()
    key_file.write_text(
        json.dumps({"device_id": "seal-bench-1", "key": "11" * 32, "seal_key": seal_key})
    )
    log = pytester.path / "power.log"
    result = _run(
        pytester,
        f"--board=serial:{hello_board.path}",
        f"--device-key-file={key_file}",
        f"--power-cmd-off=sh -c 'echo off >> {log}'",
        f"--power-cmd-on=sh -c 'echo on >> {log}'",
    )
    result.assert_outcomes(passed=1)
    # start (on), the cut (off), power back (on)
    assert log.read_text().split() == ["on", "off", "on"]


def test_soak_is_deselected_unless_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.soak
        def test_long(): pass

        def test_short(): pass
        """
    )
    default = _run(pytester)
    default.assert_outcomes(passed=1, deselected=1)
    soak = _run(pytester, "-m", "soak")
    soak.assert_outcomes(passed=1, deselected=1)
    assert "test_long" not in default.stdout.str() or "deselected" in default.stdout.str()


def test_seed_is_printed_recorded_and_in_junit_with_board_and_firmware(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        def test_seeded(faults):
            assert faults.seed == 4242
            faults.record("wire_drop", amount=3)
        """
    )
    results = pytester.path / "out"
    junit = pytester.path / "junit.xml"
    result = _run(
        pytester, "-s", "--hil-seed=4242", f"--hil-results={results}", f"--junit-xml={junit}"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*sealink HIL seed=4242 (replay: --hil-seed 4242)*"])
    lines = [
        json.loads(line)
        for line in (
            results / "test_seed_is_printed_recorded_and_in_junit_with_board_and_firmware"
            ".test_seeded" / "faults.jsonl"
        )
        .read_text()
        .splitlines()
    ]
    assert lines[0]["seed"] == 4242
    assert lines[1]["fault"] == "wire_drop" and lines[1]["amount"] == 3
    properties = {prop.get("name"): prop.get("value") for prop in ET.parse(junit).iter("property")}
    assert properties["board"] == "emulated"
    assert properties["seed"] == "4242"
    assert properties["firmware_sha"] and properties["firmware_sha"] != "unknown"


def test_a_failure_names_the_device_log_and_the_wire_hexdump(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(
        """
        def test_fails(artifacts):
            assert False, "impression 3 never arrived"
        """
    )
    result = _run(pytester, f"--hil-results={tmp_path}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*sealink HIL artifacts*",
            f"*device log: {tmp_path}*board.log; wire hexdump: {tmp_path}*wire.hexdump; "
            f"decoded wire log: {tmp_path}*wire.log*",
        ]
    )


def test_slow_and_soak_tests_run_only_when_asked_for(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marks="""
        import pytest

        @pytest.mark.slow
        def test_long(): pass

        @pytest.mark.soak
        def test_soak(): pass

        def test_quick(): pass
        """
    )
    _run(pytester).assert_outcomes(passed=1, deselected=2)
    _run(pytester, "-m", "slow").assert_outcomes(passed=1, deselected=2)
    _run(pytester, "-m", "slow or not slow").assert_outcomes(passed=2, deselected=1)
    # Named by its node id, a slow test runs without -m (a developer replaying one).
    _run(pytester, "test_marks.py::test_long").assert_outcomes(passed=1)
