"""The sealink HIL pytest plugin: options, markers, fixtures and per-test artifacts.

Layers, after pytest-embedded: the built firmware (App: its git sha) -> the port it talks over
(`wire`: a fault-injecting pty proxy with a hexdump) -> the device under test (`board`). Around
them the real parts of the system: `broker` (Mosquitto), `host` (the gateway service as a
subprocess), `observer` (an independent subscriber that verifies every signature).
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .artifacts import BOARD_LOG, BROKER_LOG, Artifacts
from .boards import (
    CAPABILITY_MARKERS,
    BoardSpec,
    EmulatedDut,
    ExternalPower,
    SerialDut,
    capabilities,
    skip_reason,
)
from .faults import Faults
from .rig import Rig
from .wire import Hexdump, WireProxy

__all__ = ["HilSettings"]

# The suite tests its own options and skip reasons in throwaway pytest runs.
pytest_plugins = ["pytester"]

GROUP = "sealink HIL"
REPO = Path(__file__).resolve().parents[2]
BLE_SKIP = "BLE boards not yet supported"
_SETTINGS = pytest.StashKey["HilSettings"]()
_ARTIFACTS = pytest.StashKey[Artifacts]()
_SOAK_LINES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP)
    group.addoption(
        "--board",
        type=BoardSpec.parse,
        default=BoardSpec("emulated"),
        metavar="emulated|serial:URL|ble:ADDRESS",
        help="board under test: 'emulated' (default; the real firmware under micropython), "
        "'serial:URL' (a provisioned board on any pyserial URL), 'ble:ADDRESS' (not yet)",
    )
    group.addoption(
        "--power-cmd-off",
        metavar="CMD",
        help="shell command that cuts the real board's power (power-cut tests skip without it)",
    )
    group.addoption(
        "--power-cmd-on",
        metavar="CMD",
        help="shell command that restores the real board's power",
    )
    group.addoption(
        "--press-cmd",
        metavar="CMD",
        help="shell command that presses and releases a real board's stamp once (an actuator)",
    )
    group.addoption(
        "--device-id",
        metavar="ID",
        help="a real board's device id (default: the one in --device-key-file)",
    )
    group.addoption(
        "--device-key-file",
        metavar="FILE",
        help="a real board's seal.json from tools/provision.py (or its key as 64 hex digits)",
    )
    group.addoption(
        "--emulator-heap",
        default="64k",
        metavar="SIZE",
        help="the emulated board's MicroPython heap, as for `micropython -X heapsize=` "
        "(default 64k, the firmware's budget)",
    )
    group.addoption(
        "--soak-stamps",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="impressions in the soak test (`-m soak`; default 10000)",
    )
    group.addoption(
        "--hil-seed",
        type=int,
        metavar="SEED",
        help="seed every test's fault injection with SEED (default: a fresh one, printed)",
    )
    group.addoption(
        "--hil-results",
        default="results",
        metavar="DIR",
        help="folder for per-test artifacts: logs, wire hexdump, faults (default: results/)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


@dataclass(frozen=True)
class HilSettings:
    board: BoardSpec
    power: ExternalPower | None
    press_cmd: str | None
    device_id: str | None
    device_key_file: str | None
    emulator_heap: str
    soak_stamps: int
    seed: int | None
    results: Path
    capabilities: frozenset[str]


def settings(config: pytest.Config) -> HilSettings:
    return config.stash[_SETTINGS]


def pytest_configure(config: pytest.Config) -> None:
    for marker, (_capability, what) in CAPABILITY_MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: skip unless the board can {what}")
    config.addinivalue_line(
        "markers", "soak: long no-loss soak under mixed faults (runs only with -m soak)"
    )
    off, on = config.getoption("power_cmd_off"), config.getoption("power_cmd_on")
    if bool(off) != bool(on):
        raise pytest.UsageError("--power-cmd-off and --power-cmd-on go together: give both")
    spec: BoardSpec = config.getoption("board")
    power = ExternalPower(off, on) if off and on else None
    press_cmd = config.getoption("press_cmd")
    results = Path(config.getoption("hil_results"))
    if not results.is_absolute():
        results = Path(config.rootpath) / results
    config.stash[_SOAK_LINES] = []
    config.stash[_SETTINGS] = HilSettings(
        board=spec,
        power=power,
        press_cmd=press_cmd,
        device_id=config.getoption("device_id"),
        device_key_file=config.getoption("device_key_file"),
        emulator_heap=config.getoption("emulator_heap"),
        soak_stamps=config.getoption("soak_stamps"),
        seed=config.getoption("hil_seed"),
        results=results,
        capabilities=capabilities(spec, power_cmds=power is not None, press_cmd=bool(press_cmd)),
    )


def record_soak_line(config: pytest.Config, line: str) -> None:
    """Soak verdicts are printed again at the end: a `-m soak` run ends with its soak line."""
    config.stash[_SOAK_LINES].append(line)


def _soak_run(config: pytest.Config) -> bool:
    return "soak" in (config.getoption("markexpr") or "")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    # In the default run pytest's own closing line stays last, for CI to read.
    if not _soak_run(config):
        for line in config.stash.get(_SOAK_LINES, []):
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _soak_run(config):
        for line in config.stash.get(_SOAK_LINES, []):
            print(line, flush=True)


def pytest_report_header(config: pytest.Config) -> str:
    hil = settings(config)
    return (
        f"sealink HIL: board {hil.board} capabilities {sorted(hil.capabilities)} "
        f"firmware {firmware_sha()} results {hil.results}"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when `-m` asks for them; capability markers turn into skips."""
    hil = settings(config)
    if not _soak_run(config):
        soak = [item for item in items if item.get_closest_marker("soak")]
        if soak:
            config.hook.pytest_deselected(items=soak)
            items[:] = [item for item in items if not item.get_closest_marker("soak")]
    for item in items:
        for marker in CAPABILITY_MARKERS:
            if item.get_closest_marker(marker):
                reason = skip_reason(hil.board, marker, hil.capabilities)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failure names its artifacts: device log, wire hexdump, host log, faults and seed."""
    report = yield
    artifacts = item.stash.get(_ARTIFACTS, None)
    if artifacts is not None and report.failed:
        report.sections.append(("sealink HIL artifacts", artifacts.describe()))
    return report


_SHA: list[str] = []
# What the firmware image is built from: an edit under these makes the sha "-dirty".
_FIRMWARE_SOURCES = ("firmware", "boards", "protocol/sealproto")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    # --no-optional-locks: other people work in this tree; never touch its index.
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def firmware_sha() -> str:
    """The commit the firmware was built from, `-dirty` if its sources differ from it."""
    if not _SHA:
        try:
            head = _git("rev-parse", "--short=12", "HEAD")
            changed = _git("diff", "--quiet", "HEAD", "--", *_FIRMWARE_SOURCES).returncode != 0
            untracked = _git("ls-files", "--others", "--exclude-standard", "--", *_FIRMWARE_SOURCES)
            sha = head.stdout.strip() if head.returncode == 0 else "unknown"
            if sha != "unknown" and (changed or untracked.stdout.strip()):
                sha += "-dirty"
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
        _SHA.append(sha)
    return _SHA[0]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def hil(request: pytest.FixtureRequest) -> HilSettings:
    """The run's settings: board spec, power and press commands, soak size, seed, results."""
    return settings(request.config)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, hil: HilSettings) -> Artifacts:
    """This test's results folder; recorded as JUnit properties with the board and firmware."""
    found = Artifacts(hil.results, request.node.nodeid)
    request.node.stash[_ARTIFACTS] = found
    request.node.user_properties.append(("board", str(hil.board)))
    request.node.user_properties.append(("firmware_sha", firmware_sha()))
    request.node.user_properties.append(("artifacts", str(found.dir)))
    return found


@pytest.fixture
def faults(request: pytest.FixtureRequest, hil: HilSettings, artifacts: Artifacts) -> Faults:
    """Seeded fault injection; the seed is printed, recorded in faults.jsonl and in JUnit XML."""
    seed = hil.seed if hil.seed is not None else random.SystemRandom().randrange(2**32)
    request.node.user_properties.append(("seed", seed))
    return Faults(seed, artifacts)


@pytest.fixture
def broker(artifacts: Artifacts, tmp_path: Path) -> Iterator[Any]:
    """A real Mosquitto on a free loopback port; `stop()`/`kill()` then `start()` reuse it."""
    from sealink_sim.broker import Mosquitto

    mosquitto = Mosquitto(tmp_path / "broker")
    try:
        mosquitto.start()
        yield mosquitto
    finally:
        mosquitto.stop()
        artifacts.collect(BROKER_LOG, mosquitto.log_path)


def _device_identity(hil: HilSettings) -> tuple[str, bytes]:
    """Emulated: a fresh identity. Real: the seal.json tools/provision.py wrote (or 64 hex)."""
    if hil.board.kind == "emulated":
        return "seal-hil-0001", secrets.token_bytes(32)
    if not hil.device_key_file:
        pytest.skip(
            f"board {hil.board}: give --device-key-file (the seal.json tools/provision.py "
            "wrote for this board; --device-id if the file is bare hex)"
        )
    text = Path(hil.device_key_file).read_text().strip()
    device_id = hil.device_id
    if text.startswith("{"):
        provisioned = json.loads(text)
        text = provisioned["key"]
        device_id = device_id or provisioned["device_id"]
    if not device_id:
        pytest.skip(f"board {hil.board}: give --device-id (the key file names no device)")
    return device_id, bytes.fromhex(text)


@pytest.fixture
def board(hil: HilSettings, artifacts: Artifacts, tmp_path: Path) -> Iterator[Any]:
    """The device under test, started: EmulatedDut or SerialDut behind one API."""
    if hil.board.kind == "ble":
        pytest.skip(BLE_SKIP)
    device_id, key = _device_identity(hil)
    dut: Any
    if hil.board.kind == "emulated":
        dut = EmulatedDut(tmp_path / "board", device_id, key, heapsize=hil.emulator_heap)
    else:
        dut = SerialDut(
            hil.board,
            device_id,
            key,
            power=hil.power,
            press_cmd=hil.press_cmd,
            log_path=artifacts.board_log,
        )
    try:
        dut.start()
        yield dut
    finally:
        dut.stop()
        if dut.log_path != artifacts.board_log:
            artifacts.collect(BOARD_LOG, dut.log_path)


@pytest.fixture
def wire(board: Any, artifacts: Artifacts, faults: Faults, tmp_path: Path) -> Iterator[WireProxy]:
    """The port: board UART <-> fault proxy <-> a pty the host opens; every byte is dumped."""
    hexdump = Hexdump(artifacts.wire_hexdump)
    proxy = WireProxy(
        board.port_url,
        tmp_path / f"{board.device_id}.tty",
        hexdump,
        rng=random.Random(faults.rng.getrandbits(64)),
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
        hexdump.close()
    if proxy.error is not None:
        pytest.fail(f"the wire proxy failed: {proxy.error!r}; wire hexdump: {hexdump.path}")


@pytest.fixture
def host(
    broker: Any, board: Any, wire: WireProxy, artifacts: Artifacts, tmp_path: Path
) -> Iterator[Any]:
    """The gateway (`sealink run --config`) as a subprocess, with its own ledger and keys."""
    from .gateway import HostProcess

    gateway = HostProcess(tmp_path / "host", broker_port=broker.port, log_path=artifacts.host_log)
    try:
        gateway.init_keys()
        gateway.add_device(board.device_id, board.device_key, str(wire.link_path))
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def observer(broker: Any, host: Any) -> Iterator[Any]:
    """An independent subscriber: verifies every COSE signature with cwt, tallies per device."""
    from sealink_sim.observer import Observer

    with Observer("127.0.0.1", broker.port, host.public_key_pem(), prefix=host.prefix) as obs:
        _wait_broker_saved(broker)
        yield obs


_BROKER_SAVED = "Saving in-memory database"


def _wait_broker_saved(broker: Any, timeout_s: float = 10.0) -> None:
    """Wait for Mosquitto's next autosave, so the observer's subscription is on disk.

    Mosquitto persists sessions every `autosave_s`, not on SUBSCRIBE: a broker crash in the
    first second would forget the observer, and everything published before it subscribes
    again would be delivered to nobody: a loss of the test's eyes, not of the system's data.
    """
    seen = broker.log_path.read_text(errors="replace").count(_BROKER_SAVED)
    deadline = time.monotonic() + timeout_s
    while broker.log_path.read_text(errors="replace").count(_BROKER_SAVED) <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Mosquitto never autosaved; broker log: {broker.log_path}")
        time.sleep(0.05)


@pytest.fixture
def rig(
    board: Any,
    wire: WireProxy,
    host: Any,
    broker: Any,
    observer: Any,
    faults: Faults,
    artifacts: Artifacts,
) -> Rig:
    """The whole link as one: stamp, inject faults, settle, account (see sealink_hil.rig)."""
    if isinstance(board, SerialDut):
        board.attach(observer)
    return Rig(board, wire, host, broker, observer, faults, artifacts)
