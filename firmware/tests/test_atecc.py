"""The security chip: the firmware's ATECC608 driver (firmware/seal/atecc.py) under the real
micropython, from the emulated board's ROMFS build, over its I2C bus (boards/emulated/i2cbus.py,
a socketpair), against the chip model (sealink_sim.atecc) served in this process. The chip is
the one thing that cannot exist here; the model answers at the I2C command level, so every byte
the driver sends and checks is the one a real ATECC608 would see. Signatures are checked with
`cryptography`, independently of both.
"""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mpy_runner
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from sealink_sim.atecc import ADDRESS, COUNTER_MAX, ChipModel, Device, crc16, serve
from sealink_sim.emulator import ROMFS_IMAGE, EmulatedBoard, rom_command

# Every script starts from the ROMFS image (the firmware as a board holds it) and builds the
# driver on the emulated bus, as boards/emulated/hal.py does.
PRELUDE = (
    mpy_runner.MOUNT_ROM
    + """
import gc
from i2cbus import I2C
from seal.atecc import Atecc608, ChipError
from seal.chipsetup import generate_key, provision, public_key, random, revision
chip = Atecc608(I2C())
def status(f, *args):
    try:
        f(*args)
    except ChipError as e:
        return "chip-%02x" % e.args[0]
    except OSError as e:
        return "oserror"
    return "ok"
"""
)
DIGEST = bytes(range(32))


def _seed() -> int:
    seed = int(os.environ.get("SEAL_SEED", random.randrange(2**32)))
    print(f"seed {seed} (replay: SEAL_SEED={seed})")
    return seed


def run_mp(script: str, device: Device, heapsize: str = mpy_runner.HEAPSIZE) -> list[str]:
    """Run `script` under micropython with `device` on its I2C bus; its stdout lines."""
    if not mpy_runner.MICROPYTHON.exists():
        pytest.skip("micropython not installed: pip install -e '.[emulator]'")
    image = mpy_runner.compiled() / "fw" / ROMFS_IMAGE
    host_end, board_end = socket.socketpair()
    thread = serve(host_end, device)
    env = dict(os.environ, MICROPYPATH=".frozen", SEAL_I2C_FD=str(board_end.fileno()))
    try:
        proc = subprocess.run(
            rom_command(image, "-X", f"heapsize={heapsize}", "-c", PRELUDE + script),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            pass_fds=(board_end.fileno(),),
            check=False,
        )
    finally:
        board_end.close()
    thread.join(timeout=10)
    assert proc.returncode == 0, f"micropython failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout.splitlines()


def _values(lines: list[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in lines if " " in line)


def _public_key(xy: bytes) -> ec.EllipticCurvePublicKey:
    x, y = int.from_bytes(xy[:32], "big"), int.from_bytes(xy[32:], "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def _verify(public: bytes, digest: bytes, signature: bytes) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    _public_key(public).verify(
        encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256()))
    )


@pytest.fixture
def model(tmp_path: Path) -> Iterator[ChipModel]:
    yield ChipModel(tmp_path / "chip.state", latency="none")


class Corrupting:
    """The bus between driver and chip, flipping one seeded bit in the chip's next `reads`
    command responses (read after a command, each but its count byte) or in its next `writes`
    commands, as noise on the wires would."""

    def __init__(self, chip: ChipModel, seed: int, reads: int = 0, writes: int = 0) -> None:
        self.chip = chip
        self.rng = random.Random(seed)
        self.reads = reads
        self.writes = writes
        self.flipped = 0
        self._after_command = False

    def _flip(self, data: bytes, start: int) -> bytes:
        out = bytearray(data)
        i = self.rng.randrange(start, len(out))
        out[i] ^= 1 << self.rng.randrange(8)
        self.flipped += 1
        return bytes(out)

    def write(self, addr: int, data: bytes) -> bool:
        if addr == 0:
            self._after_command = False
        elif data[:1] == b"\x03":
            self._after_command = True
            if self.writes:
                self.writes -= 1
                data = self._flip(data, 1)
        return self.chip.write(addr, data)

    def read(self, addr: int, n: int) -> bytes | None:
        out = self.chip.read(addr, n)
        if out is not None and self._after_command and n >= 3 and self.reads:
            self.reads -= 1
            out = self._flip(out, 0)
        return out


# --- the model alone --------------------------------------------------------------------------


def test_crc16_matches_cryptoauthlib() -> None:
    # The wake response 04 11 33 43 carries the CRC of 04 11; an Info (revision) command is
    # 07 30 00 00 00 + 03 5D, as CryptoAuthLib's atCRC makes it.
    assert crc16(b"\x04\x11") == b"\x33\x43"
    assert crc16(bytes.fromhex("0730000000")) == bytes.fromhex("035d")


def test_model_answers_wake_parse_and_crc_errors(model: ChipModel) -> None:
    assert model.read(ADDRESS, 4) is None, "a sleeping chip NACKs"
    assert model.write(0, b"") is False
    assert model.read(ADDRESS, 4) == b"\x04\x11\x33\x43"
    bad_crc = bytes.fromhex("0730000000035e")
    assert model.write(ADDRESS, b"\x03" + bad_crc)
    assert model.read(ADDRESS, 4) == b"\x04\xff" + crc16(b"\x04\xff")
    unknown = bytes.fromhex("0799000000")
    assert model.write(ADDRESS, b"\x03" + unknown + crc16(unknown))
    assert model.read(ADDRESS, 4) == b"\x04\x03" + crc16(b"\x04\x03")
    # Word address 0x00 rewinds the response: it can be read again.
    assert model.write(ADDRESS, b"\x00")
    assert model.read(ADDRESS, 1) == b"\x04"
    assert model.write(ADDRESS, b"\x01")
    assert not model.awake


def test_firmware_crc_equals_the_model_crc(model: ChipModel) -> None:
    rng = random.Random(_seed())
    vectors = [rng.randbytes(rng.randrange(1, 140)) for _ in range(20)]
    script = "from seal.atecc import _crc16\n" + "".join(
        f"print(_crc16({v!r}, 0, {len(v)}))\n" for v in vectors
    )
    lines = run_mp(script, model)
    assert [int(x).to_bytes(2, "little") for x in lines] == [crc16(v) for v in vectors]


# --- the driver against the model --------------------------------------------------------------


def test_provision_sign_and_verify(model: ChipModel) -> None:
    other = bytes(reversed(DIGEST))
    lines = run_mp(
        f"""
pub = provision(chip)
print("pub", pub.hex())
print("again", public_key(chip, 0).hex())
print("rev", revision(chip).hex())
print("rand", random(chip).hex(), random(chip).hex())
sig = bytearray(64)
chip.sign_digest(0, {DIGEST!r}, memoryview(sig))
print("sig", sig.hex())
print("ok", chip.verify_digest({DIGEST!r}, sig, pub))
print("other", chip.verify_digest({other!r}, sig, pub))
bad = bytearray(sig)
bad[40] ^= 1
print("bad", chip.verify_digest({DIGEST!r}, bad, pub))
""",
        model,
    )
    got = _values(lines)
    public = bytes.fromhex(got["pub"])
    assert len(public) == 64 and got["again"] == got["pub"]
    _public_key(public)  # a point on P-256
    assert got["rev"] == "00006002"
    first, second = (bytes.fromhex(r) for r in got["rand"].split())
    assert len(first) == 32 and first != second
    signature = bytes.fromhex(got["sig"])
    _verify(public, DIGEST, signature)
    with pytest.raises(InvalidSignature):
        _verify(public, bytes(reversed(DIGEST)), signature)
    assert (got["ok"], got["other"], got["bad"]) == ("True", "False", "False")


def test_provision_refuses_to_replace_the_key(model: ChipModel) -> None:
    lines = run_mp(
        """
pub = provision(chip)
print("second", status(provision, chip))
print("genkey", status(generate_key, chip, 0))
print("same", public_key(chip, 0) == pub)
print("slot1", status(public_key, chip, 1))
""",
        model,
    )
    # 0x0F: execution error, the locked slot's key stays.
    assert _values(lines) == {
        "second": "chip-0f",
        "genkey": "chip-0f",
        "same": "True",
        "slot1": "chip-0f",
    }


def test_counters_persist_and_never_decrease(tmp_path: Path) -> None:
    state = tmp_path / "chip.state"
    first = _values(
        run_mp(
            """
print("c0", chip.counter(0))
print("inc", [chip.increment_counter(0) for _ in range(3)])
print("c1", chip.increment_counter(1))
print("bad", status(chip.counter, 2))
""",
            ChipModel(state, latency="none"),
        )
    )
    assert first == {"c0": "0", "inc": "[1, 2, 3]", "c1": "1", "bad": "chip-03"}
    # A new power-up of the same chip: the counters are where they were.
    second = _values(
        run_mp('print("c", chip.counter(0), chip.counter(1))', ChipModel(state, "none"))
    )
    assert second == {"c": "3 1"}
    # 2,097,151 increments take too long here: the state file is set to one below the top.
    data = json.loads(state.read_text())
    data["counters"][0] = COUNTER_MAX - 1
    state.write_text(json.dumps(data))
    top = _values(
        run_mp(
            """
print("last", chip.increment_counter(0))
print("past", status(chip.increment_counter, 0))
print("still", chip.counter(0))
""",
            ChipModel(state, "none"),
        )
    )
    assert top == {"last": str(COUNTER_MAX), "past": "chip-0f", "still": str(COUNTER_MAX)}


def test_a_corrupted_response_is_read_again_not_rerun(model: ChipModel) -> None:
    bus = Corrupting(model, _seed(), reads=1)
    got = _values(run_mp('print("inc", chip.increment_counter(0))', bus))
    assert bus.flipped == 1
    # Read again, not run again: the counter went up by exactly one.
    assert got == {"inc": "1"}
    assert json.loads(model._state.path.read_text())["counters"][0] == 1
    bus = Corrupting(model, _seed(), reads=1)
    got = _values(
        run_mp(
            f"""
pub = provision(chip)
sig = bytearray(64)
chip.sign_digest(0, {DIGEST!r}, sig)
print("pub", pub.hex())
print("sig", sig.hex())
""",
            bus,
        )
    )
    assert bus.flipped == 1
    _verify(bytes.fromhex(got["pub"]), DIGEST, bytes.fromhex(got["sig"]))


def test_a_corrupted_command_is_sent_again(model: ChipModel) -> None:
    bus = Corrupting(model, _seed(), writes=1)
    got = _values(run_mp('print("inc", chip.increment_counter(1))', bus))
    assert got == {"inc": "1"}
    # The chip saw the bad CRC (0xFF, nothing run), then the command again.
    assert [s for _, s in model.commands] == [0xFF, 0x00]


def test_repeated_corruption_raises_a_chip_error(model: ChipModel) -> None:
    bus = Corrupting(model, _seed(), reads=1000)
    got = _values(
        run_mp(
            """
try:
    chip.increment_counter(0)
    print("result none")
except ChipError as e:
    print("result", "%02x" % e.args[0], isinstance(e, OSError))
""",
            bus,
        )
    )
    assert got == {"result": "ff True"}
    bus = Corrupting(model, _seed(), writes=1000)
    got = _values(run_mp('print("result", status(chip.counter, 0))', bus))
    assert got == {"result": "chip-ff"}


@pytest.mark.parametrize("latency", ["typical", "max"])
def test_busy_chip_is_polled(tmp_path: Path, latency: str) -> None:
    model = ChipModel(tmp_path / "chip.state", latency=latency)  # type: ignore[arg-type]
    got = _values(
        run_mp(
            f"""
pub = provision(chip)
sig = bytearray(64)
chip.sign_digest(0, {DIGEST!r}, sig)
print("ok", chip.verify_digest({DIGEST!r}, sig, pub), chip.increment_counter(0))
""",
            model,
        )
    )
    assert got == {"ok": "True 1"}
    if latency == "max":
        # Busy past the typical time the driver sleeps first: it got NACKs, polled, and read
        # each response only once the chip had finished.
        assert model.busy_nacks > 0


def test_watchdog_sleep_loses_tempkey_idle_keeps_it(model: ChipModel) -> None:
    got = _values(
        run_mp(
            f"""
import time
provision(chip)
out = bytearray(64)
chip.wake()
chip.nonce({DIGEST!r})
time.sleep_ms(1500)  # past the 1.3 s watchdog: the chip went to sleep
chip.wake()
print("slept", status(chip.sign, 0, out))
chip.idle()
chip.wake()
chip.nonce({DIGEST!r})
chip.idle()
time.sleep_ms(1500)  # idle: no watchdog, TempKey kept
chip.wake()
print("idled", status(chip.sign, 0, out))
print("used", status(chip.sign, 0, out))
chip.idle()
""",
            model,
        )
    )
    # Sign consumes TempKey: a second one without a fresh nonce is refused too.
    assert got == {"slept": "chip-0f", "idled": "ok", "used": "chip-0f"}


def test_hal_chip_and_heap_cost(model: ChipModel) -> None:
    # The prelude built a driver already (modules imported): hal.chip() costs the second one.
    got = _values(
        run_mp(
            f"""
import hal
gc.collect()
before = gc.mem_alloc()
c = hal.chip()
gc.collect()
print("driver", gc.mem_alloc() - before)
print("same", hal.chip() is c)
pub = provision(c)
digest = {DIGEST!r}
out = memoryview(bytearray(64))
def pulse():
    try:
        c._i2c.writeto(0, b"")
    except OSError:
        pass
def cost(f, *args):
    f(*args)
    gc.collect()
    gc.disable()
    start = gc.mem_alloc()
    for _ in range(10):
        f(*args)
    used = gc.mem_alloc() - start
    gc.enable()
    return used // 10
print("sign", cost(c.sign_digest, 0, digest, out))
print("pulse", cost(pulse))
view = memoryview(bytearray(8))
print("view", cost(lambda: view[1:4]))
""",
            model,
        )
    )
    print(
        f"hal.chip(): {got['driver']} bytes of heap kept; sign_digest: {got['sign']} bytes of "
        f"garbage a call: the OSError of the wake pulse's NACK ({got['pulse']}) and views of "
        f"the driver's buffers ({got['view']} each)"
    )
    assert got["same"] == "True"
    # Two buffers, a view of each, the bus's socket: 800 bytes measured on this 64-bit port (a
    # 32-bit board's objects are half the size). Views made per transfer instead of kept in
    # dicts give the firmware's 64 KB heap 500 bytes back.
    assert int(got["driver"]) < 1024
    # machine.I2C raises OSError on the NACK that answers the wake pulse (nobody is at 0x00);
    # besides, a wake and two commands take at most 9 short-lived views: no buffer is copied.
    budget = int(got["pulse"]) + 9 * int(got["view"])
    assert int(got["sign"]) <= budget, "sign_digest allocated more than views on the record path"


def test_board_chip_state_is_private_and_outside_the_flash(tmp_path: Path) -> None:
    board = EmulatedBoard(tmp_path, device_id="seal-0001", device_key=bytes(range(1, 33)))
    try:
        public = board.provision_chip()
        assert board.chip_public_key() == public
        board.start()
        board.stamp()
        board.wait_until(lambda b: b.counter == 1)
        board.power_cut()
        board.start()
        board.stop()
    finally:
        board.close()
    assert stat.S_IMODE(board.chip_state.stat().st_mode) == 0o600
    # The chip survived the power cut and the reboots: same key.
    assert board.chip_public_key() == public
    scalar = int(json.loads(board.chip_state.read_text())["keys"]["0"], 16)
    image = board.flash_path.read_bytes()
    for form in (
        scalar.to_bytes(32, "big"),
        scalar.to_bytes(32, "little"),
        f"{scalar:064x}".encode(),
    ):
        assert form not in image
    with pytest.raises(Exception, match="provisioning the chip failed"):
        board.provision_chip()
