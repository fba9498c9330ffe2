"""The fleet end to end: 2 real gateways x 4 simulated seals publish to a real Mosquitto; 2
`sealink fleet run` processes share the records through an MQTT 5 shared subscription into a
real PostgreSQL; one is SIGKILLed mid-stream and restarted under the same client id. What
PostgreSQL holds must equal exactly what an independent subscriber (sealink_sim.observer, one
per gateway key) verified: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import GatewayFiles, run, running, sealink
from sealink.crypto.signer import GatewayKey
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.observer import Observer
from sealink_sim.pipe import pipe_pair
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip, SimDevice

PREFIX = "sealink-test"
SEALS = 4
ROUNDS = (8, 8, 8)  # stamps per seal: before the kill, while killed, after the restart
_WAIT_S = 40.0


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as pg:
        yield pg


def _gateway(tmp_path: Path, name: str) -> GatewayFiles:
    root = tmp_path / name
    root.mkdir()
    files = GatewayFiles(root, GatewayKey.generate())
    files.key.save(files.key_file)
    for i in range(SEALS):
        files.add_device(f"{name}-seal-{i}")
    return files


def _count(dsn: str, sql: str = "SELECT count(*) FROM records") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _wait(predicate: Callable[[], bool], what: str, timeout: float = _WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclasses.dataclass
class FleetProcess:
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until it subscribed: before that the broker keeps nothing for it
        (its session is made at its first connect)."""
        seen = self.log.read_text().count("fleet: subscribed") if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sealink.cli", "fleet", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parent,
            )
        _wait(lambda: self.log.read_text().count("fleet: subscribed") > seen, f"{self.config}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
            self.proc.kill()
        return self.proc.wait()


@contextlib.asynccontextmanager
async def _seals(files: GatewayFiles, port: int) -> AsyncIterator[list[SimDevice]]:
    config = dataclasses.replace(files.config(port), gateway_id=files.root.name)
    async with running(config) as gateway, contextlib.AsyncExitStack() as stack:
        sims = []
        for device, key in files.device_keys.items():
            host, dev = pipe_pair(device)
            gateway.attach(host)
            sims.append(await stack.enter_async_context(SimDevice(device, key, dev)))
        for sim in sims:
            await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
        yield sims


def test_two_instances_one_killed_mid_stream_store_exactly_what_was_verified(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster, seed: int
) -> None:
    rng = random.Random(seed)
    gateways = [_gateway(tmp_path, "gw-a"), _gateway(tmp_path, "gw-b")]
    pems = {}
    for files in gateways:
        pems[files.root.name] = files.root / "public.pem"
        pems[files.root.name].write_bytes(files.key.public_pem())
    dsn = cluster.database("fleet")
    fleets = []
    for n in (1, 2):
        config = write_fleet_config(
            tmp_path / f"fleet-{n}.toml", database=dsn, instance=f"fleet-{n}", port=broker.port,
            prefix=PREFIX, gateways=pems, batch_max=50,
        )  # fmt: skip
        fleets.append(FleetProcess(config, tmp_path / f"fleet-{n}.log"))
    assert sealink("fleet", "migrate", "--config", str(fleets[0].config)).returncode == 0
    registry = tmp_path / "seals.jsonl"
    registry.write_text(
        "".join(
            json.dumps({"device": d, "seal_key": SimChip.of(k).public.hex()}) + "\n"
            for files in gateways
            for d, k in files.device_keys.items()
        )
    )
    imported = sealink(
        "fleet", "devices", "import", str(registry), "--config", str(fleets[0].config)
    )
    assert imported.returncode == 0, imported.stderr
    observers = [
        Observer("127.0.0.1", broker.port, f.key.public_pem(), prefix=PREFIX).start()
        for f in gateways
    ]
    for fleet in fleets:
        fleet.start()
    total = SEALS * len(gateways) * sum(ROUNDS)
    kill_at = rng.randrange(5, SEALS * len(gateways) * ROUNDS[0])
    print(f"killing fleet-1 once {kill_at} records are stored")

    async def body() -> None:
        async with _seals(gateways[0], broker.port) as a, _seals(gateways[1], broker.port) as b:
            sims = a + b
            for number, stamps in enumerate(ROUNDS):
                await asyncio.gather(*(sim.stamp(stamps) for sim in sims))
                if number == 0:
                    await asyncio.to_thread(
                        _wait, lambda: _count(dsn) >= kill_at, f"{kill_at} records stored"
                    )
                    fleets[0].kill()
                elif number == 1:
                    fleets[0].start()
            await asyncio.to_thread(_wait, lambda: _count(dsn) >= total, f"{total} stored")

    def state() -> str:
        """What each side holds, for a failure's message."""
        tables = ("records", "rejections", "alarms", "checkpoints")
        counts = {t: _count(dsn, f"SELECT count(*) FROM {t}") for t in tables}
        return f"postgres: {counts}; observers: {[o.summary() for o in observers]}"

    try:
        try:
            run(body(), timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {state()}") from None
        for obs, files in zip(observers, gateways, strict=True):
            for device in files.device_keys:
                obs.wait_for(device, sum(ROUNDS), _WAIT_S)
    finally:
        for obs in observers:
            obs.stop()
        codes = [fleet.stop() for fleet in fleets]
    logs = "\n".join(f.log.read_text(errors="replace")[-2000:] for f in fleets)
    verified = sum(
        obs.device(d).verified
        for obs, files in zip(observers, gateways, strict=True)
        for d in files.device_keys
    )
    assert verified == total
    assert _count(dsn) == total, logs
    assert _count(dsn, "SELECT count(DISTINCT (device, counter)) FROM records") == total
    checked = "SELECT count(*) FROM records WHERE chain_ok AND seal_verified"
    assert _count(dsn, checked) == total, logs
    for table in ("forks", "rejections", "alarms WHERE source = 'fleet'", "gaps"):
        assert _count(dsn, f"SELECT count(*) FROM {table}") == 0, (table, logs)
    by_instance = _count(dsn, "SELECT count(DISTINCT stored_by) FROM records")
    assert by_instance == 2, "both instances took a share of the records"
    assert codes[1] == 0, logs
