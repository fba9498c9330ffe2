"""An emulated seal: the real firmware under the MicroPython unix port, driven from Python.

    with EmulatedBoard(workdir, device_id="seal-0001", device_key=key) as board:
        serial.serial_for_url(board.uart_path)      # the device's UART, a pty
        board.stamp(); board.wait_until(lambda b: b.counter >= 1, timeout=10)
        board.power_cut(); board.start()            # reboot on the same flash image

The board is `boards/emulated`: UART = a pseudo-terminal (this object keeps it across reboots,
like a USB-serial adapter), flash = littlefs2 on `workdir/flash.img` (a block device that counts
writes and can lose power after write N), GPIO = lines on the process's stdin and `@name value`
reports on its stdout, RTC = host clock + offset, security chip = `sealink_sim.atecc.ChipModel`
on an emulated I2C bus (a socketpair; its keys and counters in `workdir/chip.state`, outside
the flash image, surviving power cuts as a chip does). The firmware runs as the .mpy build of
tools/build.py, as on a device (built once per source content, in the temp folder), from a
sealink source tree: `FirmwareSource`, an explicit input (see its docstring for the lookup).

Code lives in flash, as on a device: a board keeps its code frozen or in a ROMFS partition
(memory-mapped flash) and runs the bytecode in place, so the code takes no RAM. The
`micropython` interpreter here is an extension module inside a CPython process, so the board's
launcher (`_LAUNCHER`) is a few lines of CPython that map the build's ROMFS image
(`tools/build.py --romfs`) into memory outside MicroPython's GC heap and hand its address to
the board's main.py, which mounts it with `vfs.VfsRom` at /rom, as the port does with its ROMFS
partition. The heap (`-X heapsize=96k`, SPEC §13) then holds what a device's RAM holds. It is
still one process: SIGKILL is still a power cut.
Everything the device prints goes to `workdir/device.log`; `block_writes` and the
`power_cut_at_write` index count the flash writes (programs and erases) of the current boot.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import tty
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self

from sealink.errors import SealinkError
from sealproto import messages

from sealink_sim.atecc import ChipModel, Latency, public_key_of, serve
from sealink_sim.enrolment import SIM_AUTHORITY

if TYPE_CHECKING:
    from sealink_sim.air import Air, ChunkFilter, Radio

__all__ = [
    "HEAPSIZE",
    "LINKS",
    "RESET_CAUSES",
    "ROMFS_IMAGE",
    "SOURCE_ENV",
    "EmulatedBoard",
    "EmulatorError",
    "FirmwareSource",
    "rom_command",
]

SOURCE_ENV = "SEALINK_SOURCE"
_BLOCK_SIZE = 4096
# The MCU reset causes a boot can be given (`EmulatedBoard.reset_cause`): the REBOOT cause bits
# (SPEC §4.1) the board's hal.reset_cause() reports. Any other boot is a clean power-on.
RESET_CAUSES = {
    "watchdog": messages.CA_WATCHDOG,
    "brownout": messages.CA_BROWNOUT,
    "hard": messages.CA_HARD_RESET,
}
_BOOT_TIMEOUT_S = 30.0
# The firmware's heap budget (SPEC §13): what a board's RAM leaves MicroPython.
HEAPSIZE = "96k"
# The links a board can bring up (boards/emulated/hal.py reads SEAL_LINKS).
LINKS = ("uart", "ble")
_COMMAND_TIMEOUT_S = 10.0

# Formats the image and writes /seal.json; the secret arrives on stdin, never in argv or env.
_PROVISION = """
import json, sys, vfs
from flashdev import FileBlockDevice, filesystem, mkfs
conf = json.loads(sys.stdin.read())
dev = FileBlockDevice(conf.pop("image"))
mkfs(dev)
vfs.mount(filesystem(dev), "/flash")
with open("/flash/seal.json", "w") as f:
    f.write(json.dumps(conf))
vfs.umount("/flash")
print("provisioned")
"""


# Runs `micropython` (an extension module: micropython_run) in this CPython process with the
# ROMFS image argv[1] mapped outside its heap; the rest of argv is micropython's command line.
# The buffer lives as long as the process, as flash does: the interpreter reads code from it.
_LAUNCHER = """
import ctypes, os, sys
import micropython_run
with open(sys.argv[1], "rb") as f:
    image = f.read()
flash = ctypes.create_string_buffer(image, len(image))
os.environ["SEAL_ROM"] = "%d:%d" % (ctypes.addressof(flash), len(image))
sys.exit(micropython_run.run_main(["micropython", *sys.argv[2:]]))
"""
ROMFS_IMAGE = "rom.img"

# Makes the seal's key inside the chip with the firmware's own driver (seal.atecc.provision)
# over the emulated bus; only the public key comes out. The code runs from the ROMFS image,
# mounted as boards/emulated/main.py mounts it.
_PROVISION_CHIP = """
import os, sys, uctypes, vfs
_a, _n = os.getenv("SEAL_ROM").split(":")
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(_a), int(_n))), "/rom")
sys.path.insert(0, "/rom")
from i2cbus import I2C
from seal.atecc import Atecc608
from seal.chipsetup import provision
print("@pubkey", provision(Atecc608(I2C()), 0).hex())
"""


class EmulatorError(SealinkError):
    """The emulated board could not be built, provisioned or started."""


@dataclass(frozen=True)
class FirmwareSource:
    """The sealink source tree the emulated board's firmware is built from.

    `FirmwareSource.find()` takes, in this order: the `root` given; `$SEALINK_SOURCE`; the
    checkout the importable `tools` package (tools/build.py) belongs to; the folder this package
    was installed from in editable mode (its PEP 610 `direct_url.json`). A wheel installed
    without a checkout has none of them: EmulatorError then says to set SEALINK_SOURCE.
    """

    root: Path

    # What the emulated board's build reads (tools/build.py and the manifests it follows).
    _INPUTS = (
        "firmware/manifest.py",
        "firmware/manifests",
        "firmware/seal",
        "protocol/sealproto",
        "boards/emulated",
        "tools/build.py",
    )

    @classmethod
    def find(cls, root: str | os.PathLike[str] | None = None) -> FirmwareSource:
        if root is not None:
            return cls._checked(Path(root), "the source tree given")
        if os.environ.get(SOURCE_ENV):
            return cls._checked(Path(os.environ[SOURCE_ENV]), f"${SOURCE_ENV}")
        for found, how in (
            (_tools_checkout(), "the tools package"),
            (_editable_checkout(), "the editable install of sealink"),
        ):
            if found is not None:
                return cls._checked(found, how)
        raise EmulatorError(
            "no sealink source tree to build the emulated board's firmware from: set "
            f"{SOURCE_ENV} to a checkout (the folder with tools/build.py, firmware/, boards/)"
        )

    @classmethod
    def _checked(cls, root: Path, how: str) -> FirmwareSource:
        root = root.resolve()
        missing = [name for name in cls._INPUTS if not (root / name).exists()]
        if missing:
            raise EmulatorError(
                f"{root} ({how}) is not a sealink source tree: no {', '.join(missing)}; "
                f"set {SOURCE_ENV} to a checkout"
            )
        return cls(root)

    def files(self) -> list[Path]:
        """Every file the emulated board's build reads, in a stable order."""
        out: list[Path] = []
        for name in self._INPUTS:
            path = self.root / name
            out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
        return out

    def build_dir(self) -> Path:
        """Where the build of the current sources lives (one build per source content)."""
        digest = hashlib.sha256()
        for src in self.files():
            digest.update(str(src.relative_to(self.root)).encode() + b"\0" + src.read_bytes())
        # This module too: how it builds and boots the firmware is part of what the cache holds.
        digest.update(Path(__file__).read_bytes())
        return Path(tempfile.gettempdir()) / f"sealink-fw-{digest.hexdigest()[:16]}"

    def board_data(self) -> dict[str, object]:
        """The emulated board's board.py: constants only, so it is read, not executed."""
        tree = ast.parse((self.root / "boards" / "emulated" / "board.py").read_text())
        data: dict[str, object] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                data[node.targets[0].id] = ast.literal_eval(node.value)
        return data


def _tools_checkout() -> Path | None:
    try:
        spec = importlib.util.find_spec("tools")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    tools = Path(next(iter(spec.submodule_search_locations)))
    return tools.parent if (tools / "build.py").exists() else None


def _editable_checkout() -> Path | None:
    try:
        record = importlib.metadata.distribution("sealink").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not record:
        return None
    url = json.loads(record)
    if not url.get("dir_info", {}).get("editable") or not url["url"].startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url["url"]).path))


def rom_command(image: str | os.PathLike[str], *args: str) -> list[str]:
    """The command line that runs `micropython *args` with the ROMFS `image` mapped as flash.

    MICROPYPATH must not name the same modules as files, or they load into the heap again.
    """
    _tool("micropython")  # the launcher needs the same extension module
    return [sys.executable, "-c", _LAUNCHER, str(image), *args]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    raise EmulatorError(
        f"{name} not found next to {sys.executable}: pip install -e '.[emulator,tools]'"
    )


class EmulatedBoard:
    """One emulated seal device; see the module docstring.

    What the board reported in its current (or last) boot: `counter` (newest event counter,
    None until the firmware reported it), `counted_at_us` (counter -> board wall-clock time
    when it counted), `lock_open`, `led`, `alarms` (codes, in order),
    `reports` (every `(name, value)`), `block_writes`, `powercut` (it lost power), `exited`,
    `heap_peak` (live heap bytes, with `heap_probe_ms` only).
    GPIO levels set while the board is off (`press()`, `open_case()`) hold at its next boot.
    `journal_capacity` makes the journal smaller than boards/emulated/board.py's (tests that
    fill it); `reset_cause` (a key of RESET_CAUSES) is the MCU reset the next boot reports.
    `links` are the firmware's links ("uart", "ble"); "ble" needs an `air`: each boot gets a
    fresh Radio on it (`radio`, the current or last boot's; a power cut or stop() takes it off
    the air, as a powered-off seal leaves it), always at the same static address.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        device_id: str,
        device_key: bytes,
        heapsize: str = HEAPSIZE,
        rtc_offset_s: float | None = 0.0,
        power_cut_at_write: int | None = None,
        battery_mv: int = 3700,
        heap_probe_ms: int | None = None,
        source: FirmwareSource | None = None,
        chip_latency: Latency = "none",
        chip_state: str | os.PathLike[str] | None = None,
        authority_key: bytes | None = SIM_AUTHORITY.public,
        journal_capacity: int | None = None,
        air: Air | None = None,
        links: tuple[str, ...] = ("uart",),
    ) -> None:
        if len(device_key) != 32:
            raise ValueError("device_key must be 32 bytes")
        unknown = [link for link in links if link not in LINKS]
        if unknown or not links:
            raise ValueError(f"links: one or more of {', '.join(LINKS)}, got {links!r}")
        if "ble" in links and air is None:
            raise ValueError('links with "ble" need an air (sealink_sim.air.Air)')
        self.air = air
        self.links = links
        self.radio: Radio | None = None
        # Given to every boot's Radio (the HIL BLE port's fault engine and taps).
        self.chunk_filter: ChunkFilter | None = None
        if journal_capacity is not None and journal_capacity < 1:
            raise ValueError("journal_capacity must be at least 1")
        self.journal_capacity = journal_capacity
        # Armed for the next start() only, as power_cut_at_write is.
        self.reset_cause: str | None = None
        # The firmware's source tree, resolved now so that a missing one fails at once.
        self.source = source or FirmwareSource.find()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self._key = device_key
        self.heapsize = heapsize
        self.rtc_offset_s = rtc_offset_s
        # Benchmarks only: the board samples its live heap this often and reports each peak.
        self.heap_probe_ms = heap_probe_ms
        # Armed for the next start() only: the boot that loses power at this block write.
        self.power_cut_at_write = power_cut_at_write
        self.flash_path = self.workdir / "flash.img"
        self.log_path = self.workdir / "device.log"
        # The security chip's non-volatile memory: outside the flash image, kept across boots.
        self._chip_state = Path(chip_state) if chip_state else self.workdir / "chip.state"
        # "none" for tests; "typical" makes the chip as slow as the datasheet's figures.
        self.chip_latency: Latency = chip_latency
        self.chip: ChipModel | None = None
        self._chip_bus: socket.socket | None = None
        # The enrolment authority's public key, which a real seal has in its firmware image
        # (SPEC §5.11): the board's HAL gets it outside the flash. None: a build without one.
        self.authority_key = authority_key
        self.build_dir = self.source.build_dir()
        self._pressed = False
        self._case_open = False
        self._battery_mv = battery_mv
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self._boots = 0
        self._sent = 0
        self._reset_state()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # The device side is the pty master, non-blocking; the host opens the slave by path.
        os.set_blocking(self._master, False)
        self.uart_path = os.ttyname(self._slave)

    # --- state the board reported --------------------------------------------------------

    def _reset_state(self) -> None:
        self.lock_open = False
        self.led = False
        self.counter: int | None = None
        # counter -> the board's wall-clock time (us) when that impression counted.
        self.counted_at_us: dict[int, int] = {}
        self.alarms: list[int] = []
        self.reports: list[tuple[str, str]] = []
        self.block_writes = 0
        self.heap_peak: int | None = None
        self.powercut = False
        self.exited = False
        self._done = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and not self.powercut

    @property
    def chip_state(self) -> Path:
        """The security chip's state file (its keys, counters, slot locks), mode 0600."""
        return self._chip_state

    def chip_public_key(self, slot: int = 0) -> bytes | None:
        """The chip's public key (X||Y, 64 bytes) in `slot`, read from its state file; None
        before provision_chip()."""
        return public_key_of(self._chip_state, slot)

    @property
    def boots(self) -> int:
        """How many times this object has started the board."""
        return self._boots

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_build(self) -> None:
        if (self.build_dir / ROMFS_IMAGE).exists():
            return
        tmp = Path(tempfile.mkdtemp(prefix=self.build_dir.name + ".", dir=self.build_dir.parent))
        proc = subprocess.run(
            [sys.executable, "-m", "tools.build", "emulated", "--romfs", "--out", str(tmp)],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.source.root,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EmulatorError(f"firmware build failed:\n{proc.stdout}{proc.stderr}")
        try:
            # Boards started in parallel share the build: the first complete one wins.
            tmp.rename(self.build_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # ".frozen" keeps the interpreter's built-in modules (asyncio) importable.
        env["MICROPYPATH"] = f".frozen:{self.build_dir}"
        env["SEAL_FLASH"] = str(self.flash_path)
        return env

    def provision(self) -> bytes:
        """What a provisioning station does to a new seal, once: the flash image with the
        seal's id and link key, and the seal key made inside its chip. Returns the chip's
        public key (X || Y), the half `sealink devices add` registers."""
        self._ensure_build()
        self._ensure_flash()
        public = self.chip_public_key()
        if public is None:
            public = self.provision_chip()
        return public

    def _ensure_flash(self) -> None:
        if self.flash_path.exists():
            return
        blocks = self.source.board_data().get("FLASH_BLOCKS")
        if not isinstance(blocks, int):
            raise EmulatorError("boards/emulated/board.py: FLASH_BLOCKS must be an int")
        tmp = self.flash_path.with_suffix(".new")
        # The image holds the device key: owner-only, like any key file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\xff" * (blocks * _BLOCK_SIZE))
        conf = {"image": str(tmp), "device_id": self.device_id, "key": self._key.hex()}
        proc = subprocess.run(
            [_tool("micropython"), "-c", _PROVISION],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=self._env(),
            cwd=self.workdir,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0 or "provisioned" not in proc.stdout:
            tmp.unlink(missing_ok=True)
            raise EmulatorError(f"provisioning the flash image failed:\n{proc.stdout}{proc.stderr}")
        tmp.rename(self.flash_path)

    def start(self) -> None:
        """Power the board on (boot from the flash image) and wait until the firmware is up.

        Returns once the firmware reported its counter, or lost power during boot (a cut armed
        with `power_cut_at_write`). Raises EmulatorError if the firmware exits instead.
        """
        if self._proc is not None:
            self.stop()
        self.provision()
        self._drain_uart()
        env = self._env()
        env["SEAL_UART_FD"] = str(self._master)
        env["SEAL_STAMP"] = "1" if self._pressed else "0"
        env["SEAL_TAMPER"] = "1" if self._case_open else "0"
        env["SEAL_BATTERY_MV"] = str(self._battery_mv)
        env["SEAL_RTC_OFFSET_S"] = "none" if self.rtc_offset_s is None else repr(self.rtc_offset_s)
        if self.heap_probe_ms:
            env["SEAL_HEAP_PROBE_MS"] = str(self.heap_probe_ms)
        if self.journal_capacity is not None:
            env["SEAL_JOURNAL_CAPACITY"] = str(self.journal_capacity)
        if self.reset_cause is not None:
            if self.reset_cause not in RESET_CAUSES:
                raise ValueError(
                    f"reset_cause {self.reset_cause!r}: one of {', '.join(RESET_CAUSES)}"
                )
            env["SEAL_RESET_CAUSE"] = str(RESET_CAUSES[self.reset_cause])
        self.reset_cause = None
        board_end = self._connect_chip()
        env["SEAL_I2C_FD"] = str(board_end.fileno())
        env["SEAL_LINKS"] = ",".join(self.links)
        board_fds = [self._master, board_end.fileno()]
        try:
            radio_end = self._connect_radio()
        except BaseException:
            board_end.close()
            raise
        if radio_end is not None:
            env["SEAL_BLE_FD"] = str(radio_end.fileno())
            board_fds.append(radio_end.fileno())
        if self.authority_key is not None:
            env["SEAL_AUTHORITY"] = self.authority_key.hex()
        if self.power_cut_at_write:
            env["SEAL_CUT_AT"] = str(self.power_cut_at_write)
        self.power_cut_at_write = None
        with self._cond:
            self._reset_state()
            self._sent = 0
            self._boots += 1
        # Closed by the reader thread when the process's output ends.
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self._log.write(
            f"=== boot {self._boots} (heapsize {self.heapsize}"
            f"{', cut at write ' + env['SEAL_CUT_AT'] if 'SEAL_CUT_AT' in env else ''})"
            f" ===\n".encode()
        )
        self._log.flush()
        # The code comes from the ROMFS image only; ".frozen" = the interpreter's own (asyncio).
        env["MICROPYPATH"] = ".frozen"
        try:
            self._proc = subprocess.Popen(
                rom_command(
                    self.build_dir / ROMFS_IMAGE,
                    "-X",
                    f"heapsize={self.heapsize}",
                    str(self.build_dir / "main.py"),
                ),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                pass_fds=tuple(board_fds),
            )
        finally:
            # The board holds its end now; the chip's thread ends when the board's closes.
            board_end.close()
            if radio_end is not None:
                radio_end.close()
        self._reader = threading.Thread(
            target=self._read_output,
            args=(self._proc, self._log),
            daemon=True,
            name=f"emulator-{self.device_id}",
        )
        self._reader.start()
        self._wait(
            lambda b: b.counter is not None or b.powercut or b.exited,
            _BOOT_TIMEOUT_S,
            "the firmware to boot",
        )
        if self.exited and not self.powercut:
            raise EmulatorError(f"the firmware exited during boot; device log: {self.log_path}")

    def _connect_chip(self) -> socket.socket:
        # The chip shares the board's power: a new model per boot (TempKey, wake state gone),
        # the same state file (keys, counters). Returns the board's end of the bus.
        self._disconnect_chip()
        host_end, board_end = socket.socketpair()
        self.chip = ChipModel(self._chip_state, latency=self.chip_latency)
        self._chip_bus = host_end
        serve(host_end, self.chip, name=f"chip-{self.device_id}")
        return board_end

    def _connect_radio(self) -> socket.socket | None:
        # The radio shares the board's power too: a fresh Device on the air each boot.
        if "ble" not in self.links or self.air is None:
            return None
        host_end, board_end = socket.socketpair()
        board_end.setblocking(False)
        try:
            self.radio = self.air.peripheral(self.device_id, host_end)
            self.radio.chunk_filter = self.chunk_filter
        except BaseException:
            host_end.close()
            board_end.close()
            raise
        return board_end

    def ble_url(self, air_hci: str) -> str:
        """The gateway's port URL for this board over `air_hci` (Air.central_hci())."""
        return f"ble://{self.device_id}?backend=bumble&hci={air_hci}"

    def _disconnect_chip(self) -> None:
        if self._chip_bus is not None:
            with contextlib.suppress(OSError):
                self._chip_bus.shutdown(socket.SHUT_RDWR)
            self._chip_bus = None

    def provision_chip(self) -> bytes:
        """Make the seal's key inside its chip with the firmware's driver; return the public key.

        Runs `seal.atecc.provision` under micropython (the board's ROMFS build) over the
        emulated bus, as a provisioning station runs it over a real one: the private key never
        leaves the chip model. The slot is locked after, so a second call fails.
        """
        if self.running:
            raise EmulatorError("provision the chip with the board off")
        self._ensure_build()
        host_end, board_end = socket.socketpair()
        model = ChipModel(self._chip_state, latency=self.chip_latency)
        thread = serve(host_end, model, name=f"chip-provision-{self.device_id}")
        env = dict(os.environ, MICROPYPATH=".frozen", SEAL_I2C_FD=str(board_end.fileno()))
        try:
            proc = subprocess.run(
                rom_command(
                    self.build_dir / ROMFS_IMAGE,
                    "-X",
                    f"heapsize={self.heapsize}",
                    "-c",
                    _PROVISION_CHIP,
                ),
                capture_output=True,
                text=True,
                env=env,
                cwd=self.workdir,
                pass_fds=(board_end.fileno(),),
                timeout=60,
                check=False,
            )
        finally:
            board_end.close()
        thread.join(timeout=10)
        for line in proc.stdout.splitlines():
            if line.startswith("@pubkey "):
                public = bytes.fromhex(line.split()[1])
                if len(public) == 64:
                    return public
        raise EmulatorError(f"provisioning the chip failed:\n{proc.stdout}{proc.stderr}")

    def _drain_uart(self) -> None:
        # Bytes the host sent while the board was off are lost, as in a real UART's FIFO.
        with contextlib.suppress(BlockingIOError):
            while os.read(self._master, 4096):
                pass

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.stdin:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._disconnect_chip()
        if self.radio is not None:
            self.radio.close()
        self._proc = None
        self._reader = None

    def power_cut(self) -> None:
        """Lose power now: SIGKILL; the flash image keeps exactly the writes done so far."""
        with self._cond:
            self.powercut = True
        self._kill()

    def arm_power_cut(self, writes_from_now: int) -> None:
        """Lose power at the `writes_from_now`-th flash block write of the running boot from
        now on (`power_cut_at_write` arms one for the next boot, counted from its start)."""
        if writes_from_now < 1:
            raise ValueError("writes_from_now must be at least 1")
        self._command(f"cut {writes_from_now}")

    def stop(self) -> None:
        """Power the board off. A device has no clean shutdown: this is a power cut too."""
        self._kill()

    def restart(self) -> None:
        """Reboot on the same flash image."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    # --- the device's output ---------------------------------------------------------------

    def _read_output(self, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                if raw.startswith(b"@"):
                    self._on_report(proc, raw.decode(errors="replace").strip())
        finally:
            log.close()
            with self._cond:
                self.exited = True
                self._cond.notify_all()

    def _on_report(self, proc: subprocess.Popen[bytes], line: str) -> None:
        name, _, rest = line[1:].partition(" ")
        value, _, at_us = rest.partition(" ")
        if name == "powercut":
            # The board hangs after the cut write; nothing more may reach the flash.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        with self._cond:
            self.reports.append((name, value))
            if name == "writes":
                self.block_writes = int(value)
            elif name == "powercut":
                self.block_writes = int(value)
                self.powercut = True
            elif name == "lock":
                self.lock_open = value == "1"
            elif name == "led":
                self.led = value == "1"
            elif name == "counter":
                self.counter = int(value)
                self.counted_at_us[self.counter] = int(at_us or 0)
            elif name == "alarm":
                self.alarms.append(int(value))
            elif name == "heap":
                self.heap_peak = int(value)
            elif name == "done":
                self._done = int(value)
            self._cond.notify_all()

    def wait_until(self, condition: Callable[[EmulatedBoard], bool], timeout: float = 10.0) -> None:
        """Wait until `condition(board)` holds; TimeoutError names the device log."""
        self._wait(condition, timeout, "the condition")

    def _wait(self, condition: Callable[[EmulatedBoard], bool], timeout: float, what: str) -> None:
        with self._cond:
            if self._cond.wait_for(lambda: condition(self), timeout):
                return
        raise TimeoutError(
            f"timed out after {timeout:g} s waiting for {what} on "
            f"{self.device_id}; device log: {self.log_path}"
        )

    # --- GPIO ------------------------------------------------------------------------------

    def _command(self, line: str) -> None:
        # Waits until the board has applied the command, so what a test does next follows it.
        proc = self._proc
        if not self.running or proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            return
        self._sent += 1
        sent = self._sent
        self._wait(
            lambda b: b._done >= sent or not b.running,
            _COMMAND_TIMEOUT_S,
            f"the board to apply {line!r}",
        )

    def press(self) -> None:
        self._pressed = True
        self._command("press")

    def release(self) -> None:
        self._pressed = False
        self._command("release")

    def stamp(self) -> None:
        """One impression: press, hold, release, hold (timed on the device's clock)."""
        self._command("stamp")

    def open_case(self) -> None:
        self._case_open = True
        self._command("open")

    def close_case(self) -> None:
        self._case_open = False
        self._command("close")

    def keys(self, keys: str) -> None:
        """Type on the seal's keypad (digits, '*' clears, '#' ends an entry, SPEC §5.7): each
        key held and let go as a finger does, longer than the keypad's debounce."""
        if not keys or any(k not in "0123456789*#" for k in keys):
            raise ValueError(f"keys: digits, '*' and '#' only, got {keys!r}")
        self._command(f"keys {keys}")

    def pin(self, pin: str) -> None:
        """Type a PIN and '#'."""
        self.keys(pin + "#")

    def card(self, uid: bytes) -> None:
        """Hold an NFC card with this UID to the seal's reader, then take it away."""
        if not uid:
            raise ValueError("card: a UID of at least one byte")
        self._command(f"card {uid.hex()}")

    def set_battery_mv(self, mv: int) -> None:
        self._battery_mv = mv
        self._command(f"battery {int(mv)}")
