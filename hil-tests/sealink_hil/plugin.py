"""The sealink HIL pytest plugin: options, markers, fixtures and per-test artifacts.

Installed with the project and found through its `pytest11` entry point, so a bench runs
`pytest --board serial:URL ...` from any folder. Layers, after pytest-embedded:

    app   the firmware under test (App: version, git sha, board)
    port  the byte link to the board (Port: relay + seeded fault engine + hexdump + wire log)
    dut   the device under test (Dut: press, power, clock, counter, capabilities)

Around them the real parts of the system: `broker` (Mosquitto), `host` (the gateway service
as a subprocess), `observer` (an independent subscriber that verifies every signature),
`history` (where the board's counter and the ledger stand at the test's start) and `rig`
(all of it driven as one). A test that needs what the board lacks says so with
`@pytest.mark.requires("power_control", ...)` and is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .app import App
from .artifacts import BOARD_LOG, BROKER_LOG, Artifacts
from .bleport import BleAirPort
from .boards import (
    CAPABILITIES,
    CAPABILITY_MARKERS,
    BoardSpec,
    ExternalPower,
    capabilities,
    skip_reason,
)
from .dut import Dut, EmulatedDut, SerialDut
from .faults import Faults
from .gateway import HostProcess
from .history import History, fresh_history, read_history
from .linkfaults import LinkFaults
from .port import BLE_TRANSPORTS, TRANSPORTS, Port, open_port
from .rig import Rig
from .wirelog import Hexdump, WireLog

if TYPE_CHECKING:
    from sealink_sim.broker import Mosquitto
    from sealink_sim.observer import Observer
    from sealink_sim.swtpm import SwTpm

__all__ = ["HilSettings", "record_soak_line", "settings"]

# The suite tests its own options and skip reasons in throwaway pytest runs.
pytest_plugins = ["pytester"]

GROUP = "sealink HIL"
BLE_SKIP = "BLE boards not yet supported"
EMULATED_DEVICE = "seal-hil-0001"
_SETTINGS = pytest.StashKey["HilSettings"]()
_ARTIFACTS = pytest.StashKey[Artifacts]()
_SOAK_LINES = pytest.StashKey[list[str]]()


def _default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sealink-hil"


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
        "--hil-authority-key",
        metavar="FILE",
        help="the enrolment authority key (`sealink authority init`) whose public key a real "
        "board's firmware was built with: the suite enrols the board with its gateway",
    )
    group.addoption(
        "--hil-state",
        metavar="DIR",
        help="where the gateway of a real board keeps its ledger and key between tests and "
        "runs, one folder per device (default: $XDG_STATE_HOME/sealink-hil, else "
        "~/.local/state/sealink-hil); an emulated board starts afresh in every test",
    )
    group.addoption(
        "--emulator-heap",
        default="96k",
        metavar="SIZE",
        help="the emulated board's MicroPython heap, as for `micropython -X heapsize=` "
        "(default 96k, the firmware's budget, SPEC §13)",
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
        help="folder for per-test artifacts: logs, wire hexdump and decoded wire log, faults "
        "(default: results/)",
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
    authority_key: Path | None
    emulator_heap: str
    soak_stamps: int
    seed: int | None
    results: Path
    state: Path
    capabilities: frozenset[str]


def settings(config: pytest.Config) -> HilSettings:
    return config.stash[_SETTINGS]


def _absolute(config: pytest.Config, path: str) -> Path:
    found = Path(path).expanduser()
    return found if found.is_absolute() else Path(config.rootpath) / found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*capabilities): skip unless the board has them all; known: "
        + ", ".join(sorted(CAPABILITIES)),
    )
    for marker, capability in CAPABILITY_MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: requires({capability!r})")
    config.addinivalue_line(
        "markers", "soak: long no-loss soak under mixed faults (runs only with -m soak)"
    )
    config.addinivalue_line(
        "markers",
        "slow: a test of more than about 30 s, kept out of the default run so it stays under "
        "20 minutes (runs only when -m names it: `make test-slow`, `-m 'slow or not slow'`)",
    )
    config.addinivalue_line(
        "markers", "tpm: the gateway's acknowledgement key is made inside a TPM (swtpm)"
    )
    config.addinivalue_line(
        "markers",
        "transports: run the test over each of the board's links ("
        + ", ".join(TRANSPORTS)
        + "), the `transport` fixture saying which",
    )
    off, on = config.getoption("power_cmd_off"), config.getoption("power_cmd_on")
    if bool(off) != bool(on):
        raise pytest.UsageError("--power-cmd-off and --power-cmd-on go together: give both")
    spec: BoardSpec = config.getoption("board")
    power = ExternalPower(off, on) if off and on else None
    press_cmd = config.getoption("press_cmd")
    state = config.getoption("hil_state")
    authority = config.getoption("hil_authority_key")
    config.stash[_SOAK_LINES] = []
    config.stash[_SETTINGS] = HilSettings(
        board=spec,
        power=power,
        press_cmd=press_cmd,
        device_id=config.getoption("device_id"),
        device_key_file=config.getoption("device_key_file"),
        authority_key=_absolute(config, authority) if authority else None,
        emulator_heap=config.getoption("emulator_heap"),
        soak_stamps=config.getoption("soak_stamps"),
        seed=config.getoption("hil_seed"),
        results=_absolute(config, config.getoption("hil_results")),
        state=_absolute(config, state) if state else _default_state(),
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
    app = App.from_checkout(hil.board.kind)
    return (
        f"sealink HIL: board {hil.board} capabilities {sorted(hil.capabilities)} "
        f"firmware {app.version} @ {app.sha} results {hil.results}"
    )


def needed_capabilities(item: pytest.Item) -> list[str]:
    """Every capability an item's `requires` (and legacy `needs_*`) markers ask for."""
    needed: list[str] = []
    for mark in item.iter_markers("requires"):
        needed += [str(arg) for arg in mark.args]
    needed += [cap for marker, cap in CAPABILITY_MARKERS.items() if item.get_closest_marker(marker)]
    return needed


# Markers whose tests run only when the -m expression names them, or the test is named on
# the command line by its node id (`pytest path::test_name`).
_OPT_IN_MARKERS = ("soak", "slow")


def _named_tests(config: pytest.Config) -> set[str]:
    """The node ids (rootdir-relative, without parameters) given as arguments."""
    named = set()
    for arg in config.args:
        path, sep, name = arg.partition("::")
        if sep:
            try:
                relative = Path(path).resolve().relative_to(config.rootpath)
            except ValueError:  # outside the rootdir: not one of this project's node ids
                continue
            named.add(f"{relative.as_posix()}::{name.split('[')[0]}")
    return named


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak and slow tests run only when `-m` asks for them; missing capabilities turn into
    skips."""
    hil = settings(config)
    markexpr = config.getoption("markexpr") or ""
    named = _named_tests(config)
    for marker in _OPT_IN_MARKERS:
        if marker in markexpr:
            continue
        held = [
            item
            for item in items
            if item.get_closest_marker(marker) and item.nodeid.split("[")[0] not in named
        ]
        if held:
            config.hook.pytest_deselected(items=held)
            items[:] = [item for item in items if item not in held]
    for item in items:
        for capability in needed_capabilities(item):
            try:
                reason = skip_reason(hil.board, capability, hil.capabilities)
            except ValueError as exc:
                raise pytest.UsageError(f"{item.nodeid}: requires(): {exc}") from None
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure names its artifacts: device log, wire logs, host log, faults and seed."""
    report = yield
    artifacts = item.stash.get(_ARTIFACTS, None)
    if artifacts is not None and report.failed:
        report.sections.append(("sealink HIL artifacts", artifacts.describe()))
    return report


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def hil(request: pytest.FixtureRequest) -> HilSettings:
    """The run's settings: board spec, power and press commands, soak size, seed, results."""
    return settings(request.config)


@pytest.fixture
def requires(hil: HilSettings) -> Callable[..., None]:
    """`requires("rtc_control", ...)` inside a test or fixture: skip unless the board has it."""

    def check(*needed: str) -> None:
        for capability in needed:
            reason = skip_reason(hil.board, capability, hil.capabilities)
            if reason:
                pytest.skip(reason)

    return check


@pytest.fixture
def app(hil: HilSettings) -> App:
    """The firmware under test, as built from this checkout."""
    return App.from_checkout(hil.board.kind)


@pytest.fixture
def artifacts(request: pytest.FixtureRequest, hil: HilSettings, app: App) -> Artifacts:
    """This test's results folder; recorded as JUnit properties with the board and firmware."""
    found = Artifacts(hil.results, request.node.nodeid)
    request.node.stash[_ARTIFACTS] = found
    request.node.user_properties.append(("board", str(hil.board)))
    request.node.user_properties.append(("firmware_sha", app.sha))
    request.node.user_properties.append(("firmware_version", app.version))
    request.node.user_properties.append(("artifacts", str(found.dir)))
    return found


@pytest.fixture
def faults(request: pytest.FixtureRequest, hil: HilSettings, artifacts: Artifacts) -> Faults:
    """Seeded fault injection; the seed is printed, recorded in faults.jsonl and in JUnit XML."""
    seed = hil.seed if hil.seed is not None else random.SystemRandom().randrange(2**32)
    request.node.user_properties.append(("seed", seed))
    return Faults(seed, artifacts)


@pytest.fixture
def broker(artifacts: Artifacts, tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port; `stop()`/`kill()` then `start()` reuse it."""
    from sealink_sim.broker import Mosquitto

    mosquitto = Mosquitto(tmp_path / "broker")
    try:
        mosquitto.start()
        yield mosquitto
    finally:
        mosquitto.stop()
        artifacts.collect(BROKER_LOG, mosquitto.log_path)


def _device_identity(hil: HilSettings) -> tuple[str, bytes, bytes]:
    """A real board's host-half file from tools/provision.py: device id, link key, and the
    public key its chip made ("seal_key")."""
    if not hil.device_key_file:
        pytest.skip(
            f"board {hil.board}: give --device-key-file (the seal.json tools/provision.py "
            "wrote for this board; --device-id if the file is bare hex)"
        )
    text = Path(hil.device_key_file).read_text().strip()
    device_id = hil.device_id
    seal_key = ""
    if text.startswith("{"):
        provisioned = json.loads(text)
        text = provisioned["key"]
        seal_key = provisioned.get("seal_key", "")
        device_id = device_id or provisioned["device_id"]
    if not device_id:
        pytest.skip(f"board {hil.board}: give --device-id (the key file names no device)")
    if not seal_key:
        pytest.skip(
            f'board {hil.board}: {hil.device_key_file} has no "seal_key": provision the '
            "board's chip (tools/provision.py --chip) so the gateway can check its records"
        )
    return device_id, bytes.fromhex(text), bytes.fromhex(seal_key)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("transports") and (
        "transport" in metafunc.fixturenames
    ):
        metafunc.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """How the board reaches the gateway: "serial" (its UART), or each of TRANSPORTS in turn
    for a test marked `@pytest.mark.transports`; a test may ask for one of BLE_TRANSPORTS
    (`ble-mtu23`: the central asks for no larger ATT MTU than a link starts with)."""
    return str(getattr(request, "param", "serial"))


def _make_dut(
    hil: HilSettings,
    app: App,
    faults: Faults,
    artifacts: Artifacts,
    tmp_path: Path,
    transport: str,
) -> Dut:
    """Choose the Dut by the --board kind (the one place that does), with its Port started."""
    if hil.board.kind == "ble":
        pytest.skip(BLE_SKIP)
    if transport in BLE_TRANSPORTS and hil.board.kind != "emulated":
        pytest.skip(
            f"board {hil.board}: over BLE only the emulated board (a bench needs an adapter)"
        )
    hexdump = Hexdump(artifacts.wire_hexdump)
    wire = WireLog(artifacts.wire_log)
    engine = LinkFaults(faults.stream("wire"))
    if hil.board.kind == "emulated":
        from sealink_sim.emulator import EmulatedBoard  # the emulation extra: x86_64 Linux only
        from sealink_sim.enrolment import SIM_AUTHORITY

        key = secrets.token_bytes(32)
        # The authority the emulated firmware trusts, as the bench's would be kept: a key file.
        authority = tmp_path / "authority.key"
        SIM_AUTHORITY.save(authority, "authority key")
        air = None
        if transport in BLE_TRANSPORTS:
            from sealink_sim.air import Air  # bumble: the ble extra

            air = Air()
        try:
            board = EmulatedBoard(
                tmp_path / "board",
                device_id=EMULATED_DEVICE,
                device_key=key,
                heapsize=hil.emulator_heap,
                air=air,
                links=("uart",) if air is None else ("ble",),
            )
        except BaseException:
            # The port closes the air once it owns it; until then a failed board must not
            # leave the air's controllers and thread running into the next test.
            if air is not None:
                air.close()
            raise
        port: Port
        if air is None:
            port = open_port(str(board.uart_path), tmp_path / "board.tty", engine, hexdump, wire)
        else:
            mtu = BLE_TRANSPORTS[transport]
            port = BleAirPort(board, air, engine, hexdump, wire, mtu).start()
        return EmulatedDut(app, port, board, key, authority)
    device_id, key, seal_key = _device_identity(hil)
    port = open_port(hil.board.target, tmp_path / f"{device_id}.tty", engine, hexdump, wire)
    return SerialDut(
        app,
        port,
        hil.board,
        device_id,
        key,
        seal_key,
        authority_key=hil.authority_key,
        power=hil.power,
        press_cmd=hil.press_cmd,
        log_path=artifacts.board_log,
    )


@pytest.fixture
def dut(
    hil: HilSettings,
    app: App,
    faults: Faults,
    artifacts: Artifacts,
    tmp_path: Path,
    transport: str,
) -> Iterator[Dut]:
    """The device under test, started, on its Port: EmulatedDut or SerialDut, one API."""
    made = _make_dut(hil, app, faults, artifacts, tmp_path, transport)
    port = made.port
    try:
        made.start()
        yield made
    finally:
        made.stop()
        port.close()
        port.hexdump.close()
        port.wire.close()
        if made.log_path != artifacts.board_log:
            artifacts.collect(BOARD_LOG, made.log_path)
    if port.error is not None:
        pytest.fail(
            f"the port's relay failed: {port.error!r}; wire hexdump: {port.hexdump.path}; "
            f"decoded wire log: {port.wire.path}"
        )


@pytest.fixture
def port(dut: Dut) -> Port:
    """The byte link to the board: `port.inject(WireFault(...))`, `port.wire` (decoded)."""
    return dut.port


def _state_dir(hil: HilSettings, dut: Dut, tmp_path: Path) -> Path:
    """A board that keeps its history keeps its gateway's ledger too (see sealink_hil.gateway)."""
    return hil.state / dut.device_id if dut.keeps_history else tmp_path / "host"


@pytest.fixture
def host(
    request: pytest.FixtureRequest,
    hil: HilSettings,
    broker: Mosquitto,
    dut: Dut,
    artifacts: Artifacts,
    tmp_path: Path,
) -> Iterator[HostProcess]:
    """The gateway (`sealink run --config`) as a subprocess, with the board's ledger and key;
    `@pytest.mark.tpm`: its acknowledgement key inside a TPM of its own (swtpm)."""
    tpm = _tpm(tmp_path / "tpm") if request.node.get_closest_marker("tpm") else None
    try:
        yield from _host(hil, broker, dut, artifacts, tmp_path, tpm.tcti if tpm else None)
    finally:
        if tpm is not None:
            tpm.stop()


def _tpm(state_dir: Path) -> SwTpm:
    """A software TPM, started; a machine without swtpm fails the test (never skips it)."""
    from sealink_sim.swtpm import SwTpm, SwTpmError

    try:
        return SwTpm(state_dir).start()
    except SwTpmError as exc:
        pytest.fail(str(exc))


def _host(
    hil: HilSettings,
    broker: Mosquitto,
    dut: Dut,
    artifacts: Artifacts,
    tmp_path: Path,
    ack_key_tpm: str | None,
) -> Iterator[HostProcess]:
    gateway = HostProcess(
        tmp_path / "host",
        broker_port=broker.port,
        log_path=artifacts.host_log,
        state_dir=_state_dir(hil, dut, tmp_path),
        ack_key_tpm=ack_key_tpm,
    )
    try:
        gateway.init_keys()
        gateway.add_device(dut.device_id, dut.device_key, dut.seal_key, dut.port.host_url)
        if dut.authority_key is not None:
            gateway.enrol(dut.device_id, dut.authority_key)
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def history(
    request: pytest.FixtureRequest, hil: HilSettings, dut: Dut, host: HostProcess
) -> History:
    """Where the board's counter and the ledger stand at the start (see sealink_hil.history)."""
    if dut.keeps_history or not host.fresh:
        found = read_history(dut, str(host.state_dir))
    else:
        found = fresh_history(dut)
    request.node.user_properties.extend(found.properties())
    print(f"sealink HIL history: {found}")
    return found


@pytest.fixture
def observer(broker: Mosquitto, host: HostProcess) -> Iterator[Observer]:
    """An independent subscriber: verifies every COSE signature with cwt, tallies per device.

    Its session is on the broker's disk after the broker's next autosave (or a clean stop): a
    test that crashes the broker waits for that first (`Rig.restart_broker(crash=True)`).
    """
    from sealink_sim.observer import Observer

    with Observer("127.0.0.1", broker.port, host.public_key_pem(), prefix=host.prefix) as obs:
        yield obs


@pytest.fixture
def rig(
    dut: Dut,
    host: HostProcess,
    broker: Mosquitto,
    observer: Observer,
    faults: Faults,
    artifacts: Artifacts,
    history: History,
) -> Rig:
    """The whole link as one: stamp, inject faults, settle, account (see sealink_hil.rig)."""
    return Rig(dut, host, broker, observer, faults, artifacts, history)
