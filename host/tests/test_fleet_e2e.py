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
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from conftest import GatewayFiles, run, running, sealink
from paho.mqtt.enums import CallbackAPIVersion
from sealink.crypto.signer import GatewayKey
from sealink.fleet import FleetService, Store, load_config
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
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


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_a_database_outage_delays_records_and_loses_none(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    gateway, seal = SimGateway("gw-1"), SimSeal("seal-o")
    pem = gateway.write_public_key(tmp_path / "gw-1.pem")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=cluster.dsn, instance="fleet-o", port=broker.port,
        prefix=PREFIX, gateways={"gw-1": pem},
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(cluster.dsn, instance="fleet-o")
    service = FleetService(load_config(config), store).start()
    publisher = _publisher(broker.port)
    try:
        assert service.connected.wait(_WAIT_S)
        records = gateway.records(seal, 30)
        for _, cose in records[:10]:
            publisher.publish(f"{PREFIX}/{seal.device}/events", cose, qos=1).wait_for_publish()
        _wait(lambda: _count(cluster.dsn) == 10, "the first 10 stored")
        cluster.stop()  # PostgreSQL goes away; the broker keeps what is not acknowledged
        for _, cose in records[10:]:
            publisher.publish(f"{PREFIX}/{seal.device}/events", cose, qos=1).wait_for_publish()
        cluster.start()  # same port and data directory
        _wait(lambda: _count(cluster.dsn) == 30, "all 30 stored once PostgreSQL is back")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        service.stop()
        store.close()
    assert _count(cluster.dsn, "SELECT count(*) FROM records WHERE chain_ok") == 30
    assert _count(cluster.dsn, "SELECT count(*) FROM gaps") == 0


def test_a_seal_imported_while_the_fleet_runs_has_every_record_signature_checked(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    gateway, seal = SimGateway("gw-1"), SimSeal("seal-late")
    pem = gateway.write_public_key(tmp_path / "gw-1.pem")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=cluster.dsn, instance="fleet-r", port=broker.port,
        prefix=PREFIX, gateways={"gw-1": pem}, registry_refresh_s=1,
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(cluster.dsn, instance="fleet-r")
    service = FleetService(load_config(config), store).start()
    publisher = _publisher(broker.port)
    topic = f"{PREFIX}/{seal.device}/events"
    try:
        assert service.connected.wait(_WAIT_S)
        (_, first), (_, second) = gateway.records(seal, 2)
        publisher.publish(topic, first, qos=1).wait_for_publish()
        _wait(lambda: _count(cluster.dsn) == 1, "the first record stored")
        store.import_seal_keys([(seal.device, seal.chip.public)], source="test")
        _wait(lambda: seal.device in service.verifier.seal_keys, "the registry refreshed")
        publisher.publish(topic, second, qos=1).wait_for_publish()
        _wait(lambda: _count(cluster.dsn) == 2, "the second record stored")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        service.stop()
        store.close()
    checked = "SELECT counter, seal_verified FROM records ORDER BY counter"
    with psycopg.connect(cluster.dsn) as conn:
        # The record held before the import was checked by the import itself.
        assert conn.execute(checked).fetchall() == [(1, True), (2, True)]


def test_mosquitto_keeps_a_killed_members_messages_in_its_session(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """What README "Fleet ledger" designs for, pinned (Mosquitto 2.0.11): messages in flight
    to a shared-subscription member that died stay in its persistent session (not handed to
    the other member), and come back, DUP set, when it reconnects under its client id."""
    script = tmp_path / "member.py"
    script.write_text(_MEMBER)
    seen: dict[str, list[tuple[str, ...]]] = {"a": [], "b": []}

    def member(name: str, ack: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(broker.port), f"member-{name}", ack],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(
            target=lambda: [seen[name].append(tuple(line.split())) for line in stdout],
            daemon=True,
        ).start()
        _wait(lambda: any(line[0] == "subscribed" for line in seen[name]), f"{name} subscribed")
        return proc

    def got(name: str) -> set[int]:
        return {int(line[0]) for line in list(seen[name]) if line[0].isdigit()}

    a, b = member("a", "noack"), member("b", "ack")
    publisher = _publisher(broker.port)
    try:
        for i in range(100):
            publisher.publish(f"share/{i % 4}", str(i), qos=1).wait_for_publish()
        _wait(lambda: len(got("a")) == 10 and len(got("b")) == 50, "A's 10 in flight, B's half")
        held = got("a")
        a.kill()
        a.wait(10)
        for i in range(100, 140):
            publisher.publish(f"share/{i % 4}", str(i), qos=1).wait_for_publish()
        _wait(lambda: len({i for i in got("b") if i >= 100}) == 20, "B's half of the new ones")
        assert not held & got("b"), "messages in flight to the dead member went to the other"
        seen["a"].clear()
        a = member("a", "ack")
        _wait(lambda: len(got("a")) == 70, "A's session: 10 in flight, 40 queued, 20 new")
        redelivered = {int(line[0]) for line in seen["a"] if line[0].isdigit() and line[1] == "1"}
        assert redelivered == held
        assert got("a") | got("b") == set(range(140)) and not got("a") & got("b")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        for proc in (a, b):
            proc.kill()
            proc.wait(10)


_MEMBER = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, client_id, ack = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "ack"
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                     manual_ack=True)

def on_message(c, userdata, msg):
    print(msg.payload.decode(), int(msg.dup), flush=True)
    if ack:
        c.ack(msg.mid, msg.qos)

client.on_message = on_message
client.on_connect = lambda c, *_: c.subscribe("$share/g/share/+", 1)
client.on_subscribe = lambda *_: print("subscribed", 0, flush=True)
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
props.ReceiveMaximum = 10
client.connect("127.0.0.1", port, clean_start=False, properties=props)
client.loop_forever()
"""
