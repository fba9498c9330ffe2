"""The plugin itself, in throwaway pytest runs (pytester): options, skip reasons, artifacts.

Real boards do not exist here, so these runs point `--board serial:` at URLs nobody opens: what
is tested is what the plugin decides before a board is touched, and the shell commands it runs.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

PLUGIN = ("-p", "sealink_hil.plugin")

CAPABILITY_TESTS = """
import pytest

@pytest.mark.needs_power_control
def test_power(): pass

@pytest.mark.needs_flash_cut
def test_flash(): pass

@pytest.mark.needs_gpio
def test_gpio(): pass

@pytest.mark.needs_rtc_control
def test_rtc(): pass

def test_plain(): pass
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", "-rs", *args)


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
    pytester.makepyfile("def test_uses_board(board): raise AssertionError('must not run')")
    result = _run(pytester, "--board=ble:AA:BB:CC:DD:EE:FF")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*BLE boards not yet supported*"])


def test_real_board_without_identity_skips_naming_the_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses_board(board): raise AssertionError('must not run')")
    result = _run(pytester, "--board=serial:rfc2217://bench-7:4001")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*give --device-key-file*tools/provision.py*"])


def test_real_board_power_cut_runs_the_shell_commands(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.needs_power_control
        def test_cut(board):
            board.power_cut()
            board.power_on()
        """
    )
    key_file = pytester.path / "seal.json"
    key_file.write_text('{"device_id": "seal-bench-1", "key": "%s"}' % ("11" * 32))
    log = pytester.path / "power.log"
    result = _run(
        pytester,
        "--board=serial:socket://127.0.0.1:9",
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
            f"*device log: {tmp_path}*board.log; wire hexdump: {tmp_path}*wire.hexdump*",
        ]
    )
