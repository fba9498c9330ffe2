"""Shared fixtures for the gateway tests: a real Mosquitto, a real PostgreSQL, gateway files,
a pty link, a runner; the approvers, the console and the MQTT taps several modules use (their
helpers in the *_rig modules beside this one: no test module imports another).

Layers, as in pytest-embedded: the device (a simulated seal speaking sealproto, or the real
firmware on an EmulatedBoard) -> the port (a real pseudo-terminal opened through pyserial)
-> the gateway under test -> a real broker -> an independent observer (cwt).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from sealink.approvals import ACTIONS, ApproverKey
from sealink.config import Config, LedgerConfig, MqttConfig, PortConfig
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.gateway.service import Gateway
from sealink.ledger import EventRow
from sealink.ledger.sqlite import Ledger
from sealink.logs import configure_logging
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealink_sim.postgres import PostgresCluster
from sealink_sim.ptylink import PtyLink, open_pty_link
from sealink_sim.simdevice import SimChip, make_event
from sealproto import auth
from tap_rig import Tap

if TYPE_CHECKING:
    from console_rig import ConsoleRig

T = TypeVar("T")

DEVICE = "seal-t-0001"
GW = "gw-test"  # the test gateway's id
PREFIX = "sealink-test"  # its MQTT topic prefix


@pytest.fixture
def seed() -> int:
    """Every randomised test draws from this seed, printed so a failure can be replayed."""
    value = int(os.environ.get("SEALINK_TEST_SEED", random.SystemRandom().randrange(2**32)))
    print(f"seed={value} (replay: SEALINK_TEST_SEED={value})")
    return value


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as mosquitto:
        yield mosquitto


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL shared by a module's tests (a module wanting one per test defines
    its own)."""
    with PostgresCluster() as pg:
        yield pg


@dataclass
class GatewayFiles:
    root: Path
    key: GatewayKey
    device_keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def key_file(self) -> Path:
        return self.root / "gateway.key"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def link_keys(self) -> Path:
        return self.root / "link-keys"

    def add_device(
        self, device: str, key: bytes | None = None, seal_key: bytes | None = None
    ) -> bytes:
        """Register a seal: its link key (random unless given) and its chip's public key (a
        simulated seal's, SimChip.of(key), unless given: an emulated board's provision())."""
        key = key or os.urandom(32)
        # The first registration makes the test's ledger, as `sealink ledger init` would.
        ledger = self.ledger(create=True)
        try:
            ledger.add_device(device, key, seal_key or SimChip.of(key).public)
        finally:
            ledger.close()
        self.device_keys[device] = key
        return key

    def config(self, port: int, ports: tuple[PortConfig, ...] = (), **mqtt: Any) -> Config:
        return Config(
            gateway_id=GW,
            key_file=self.key_file,
            ledger_path=self.ledger_path,
            link_keys=self.link_keys,
            mqtt=replace(MqttConfig(port=port, prefix=PREFIX), **mqtt),
            ledger=LedgerConfig(),
            ports=ports,
        )

    def ledger(self, *, create: bool = False) -> Ledger:
        return Ledger(self.ledger_path, LinkKeyStore(self.link_keys), create=create)


@pytest.fixture
def files(tmp_path: Path) -> GatewayFiles:
    root = tmp_path / "gateway"
    root.mkdir()
    key = GatewayKey.generate()
    files = GatewayFiles(root, key)
    key.save(files.key_file)
    files.add_device(DEVICE)
    return files


@pytest.fixture
def conf(files: GatewayFiles, broker: Mosquitto) -> Path:
    """The test gateway's sealink.toml, on the test broker (a module may define its own)."""
    return gateway_toml(files, broker.port)


def gateway_toml(files: GatewayFiles, port: int) -> Path:
    """A gateway's sealink.toml for `files`, on the broker at `port`."""
    path = files.root / "sealink.toml"
    path.write_text(
        f"""[gateway]
id = "{GW}"
key_file = "{files.key_file}"
ledger = "{files.ledger_path}"
link_keys = "{files.link_keys}"

[mqtt]
port = {port}
prefix = "{PREFIX}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[ledger]
checkpoint_interval_s = 1
"""
    )
    return path


class Approvers:
    """The approvers a test registers: erp may do everything, viewer only fetch bundles."""

    def __init__(self, files: GatewayFiles) -> None:
        self.erp = ApproverKey.generate()
        self.viewer = ApproverKey.generate()
        ledger = files.ledger()
        try:
            ledger.add_approver("erp", self.erp.public_raw(), ACTIONS)
            ledger.add_approver("viewer", self.viewer.public_raw(), ("bundle",))
        finally:
            ledger.close()


@pytest.fixture
def approvers(files: GatewayFiles) -> Approvers:
    return Approvers(files)


@pytest.fixture
def console(
    tmp_path: Path, files: GatewayFiles, broker: Mosquitto, request: pytest.FixtureRequest
) -> Iterator[ConsoleRig]:
    """`sealink console` started for the test, its screenshots' folder made."""
    # Imported here: console_rig imports this module, and only the console tests need Playwright.
    from console_rig import started

    # Indirect parametrisation (True) gives the console an approver key (test_console_approvals).
    approver = getattr(request, "param", False)
    with started(tmp_path, files, broker, request.node.name, approver) as rig:
        yield rig


@pytest.fixture
def observer(broker: Mosquitto, files: GatewayFiles) -> Iterator[Observer]:
    with Observer("127.0.0.1", broker.port, files.key.public_pem(), prefix=PREFIX) as obs:
        yield obs


@pytest.fixture
def pty_link() -> Iterator[PtyLink]:
    """A pseudo-terminal: the device holds the master, the gateway opens the slave by path."""
    with open_pty_link() as link:
        yield link


def sealink(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `sealink` CLI as a user runs it, in a process of its own."""
    # `-m` puts the working directory first on sys.path: run from here, so that no stray
    # build metadata in the caller's directory (a sealink.egg-info) hides the entry points.
    done = subprocess.run(
        [sys.executable, "-m", "sealink.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).parent,
    )
    assert "Traceback" not in done.stderr, done.stderr  # no Python traceback reaches a user
    return done


def provisioning_file(path: Path, device: str, mode: int = 0o600) -> bytes:
    """The host half of a provisioned seal, as tools/provision.py --chip writes it: its link
    key and its chip's public key. Returns the link key."""
    key = os.urandom(32)
    seal_key = SimChip.of(key).public.hex()
    path.write_text(json.dumps({"device_id": device, "key": key.hex(), "seal_key": seal_key}))
    os.chmod(path, mode)
    return key


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async test body with an overall timeout (no plugin needed)."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Gateway]:
    async with Gateway(config) as gateway:
        yield gateway
        # Closing drains the outbox only briefly (the rest waits for the next start), so a test
        # that checks the observer afterwards must not depend on how soon the publisher process
        # came up under load: let the outbox empty first (bounded; the test's own assertions
        # judge what arrived).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while await gateway.db(gateway.ledger.unpublished_count):
                    await asyncio.sleep(0.02)


class Feed:
    """Real events of the test seal, countersigned, submitted to the running gateway."""

    def __init__(self, files: GatewayFiles, gateway: Gateway) -> None:
        self.files, self.gateway = files, gateway
        self.counter, self.prev = 0, auth.GENESIS

    async def checkpoint(self) -> int:
        self.counter += 1
        event = make_event(self.files.device_keys[DEVICE], self.counter, self.prev)
        self.prev = auth.record_hash(event)
        cose = self.files.key.sign1(countersign_payload(DEVICE, self.counter, event, 1, "gw-test"))
        await self.gateway.committer.submit(
            event=EventRow(DEVICE, self.counter, event, self.prev, cose, 1)
        )
        made = await self.gateway.checkpoints.make()
        assert made is not None
        return made.size


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition on the event loop (the gateway runs on the same loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


class _Fd2:
    """Whatever fd 2 is when a line is written, which capfd holds during the test: pytest swaps
    sys.stderr (and fd 2) between a test's phases."""

    def write(self, text: str) -> None:
        os.write(2, text.encode())

    def flush(self) -> None:
        pass


@pytest.fixture
def gateway_log(capfd: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """The gateway's log lines, its publisher's child process included (it logs to fd 2)."""
    import logging

    root = logging.getLogger("sealink")
    saved = (root.handlers[:], root.level, root.propagate)
    configure_logging("info")
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(_Fd2())  # type: ignore[arg-type]
    lines: list[str] = []
    yield lines
    root.handlers[:], root.level, root.propagate = saved
    lines += capfd.readouterr().err.splitlines()


async def logged(
    capfd: pytest.CaptureFixture[str],
    lines: list[str],
    *texts: str,
    times: int = 1,
    timeout: float = 15,
) -> str:
    """Wait until `times` log lines (of `gateway_log`) hold every one of `texts`; the first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        lines += capfd.readouterr().err.splitlines()
        found = [line for line in lines if all(text in line for text in texts)]
        if len(found) >= times:
            return found[0]
        if loop.time() > deadline:
            raise AssertionError(
                f"not {times} log lines with {texts!r} in {timeout} s; those with the first:\n"
                + "\n".join(line for line in lines if texts[0] in line)
                + "\nthe log's end:\n"
                + "\n".join(lines[-30:])
            )
        await asyncio.sleep(0.05)


@pytest.fixture
def tap_factory() -> Iterator[Callable[[int, list[str]], Tap]]:
    taps: list[Tap] = []

    def make(port: int, filters: list[str]) -> Tap:
        taps.append(Tap(port, filters))
        return taps[-1]

    yield make
    for tap in taps:
        tap.close()
