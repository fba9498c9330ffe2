"""Shared by the fleet tests: a fleet ledger in a fresh database of the real PostgreSQL
(`cluster`, in conftest) fed by simulated gateways, and the waits on what it stores; and the
registry's (SPEC §11.6, §11.7): real gateways on a fleet key, their signed alarms.

The names are those the tests had when these lived in test_fleet and test_fleet_e2e, kept so
that moving them here changed no test."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from conftest import GatewayFiles, running, sealink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from sealink.config import FleetLinkConfig
from sealink.crypto.signer import GatewayKey
from sealink.fleet import Batch, FleetService, Store, StoreOutcome, load_config
from sealink.gateway.service import Gateway
from sealink.mqtt.signed import MessageSigner, open_own
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.pipe import pipe_pair
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimDevice

PREFIX = "sealink-test"


@dataclass
class Rig:
    dsn: str
    config_path: Path
    gateways: list[SimGateway]
    store: Store
    service: FleetService

    def write(self, messages: list[tuple[str, bytes]]) -> StoreOutcome:
        batch = Batch()
        for topic, payload in messages:
            self.service.classify(topic, payload, batch)
        return self.store.write(batch)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return list(conn.execute(sql, params).fetchall())


def _rig(cluster: PostgresCluster, tmp_path: Path, seals: list[SimSeal] | None = None) -> Rig:
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    gateways = [SimGateway("gw-1"), SimGateway("gw-2")]
    keys = {gw.id: gw.write_public_key(tmp_path / f"{gw.id}.pem") for gw in gateways}
    config_path = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-t", port=1, prefix=PREFIX,
        gateways=keys,
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config_path)).returncode == 0
    store = Store(dsn)
    if seals:
        store.import_seal_keys([(s.device, s.chip.public) for s in seals], source="test")
    return Rig(dsn, config_path, gateways, store, FleetService(load_config(config_path), store))


def _topic(device: str) -> str:
    return f"{PREFIX}/{device}/events"


def _count(dsn: str, sql: str = "SELECT count(*) FROM records") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


_WAIT_S = 20.0


class Alarms:
    """Every alarm on the broker, opened with the gateway keys it is given (signed, §11.4)."""

    def __init__(self, port: int, keys: dict[str, GatewayKey]) -> None:
        self._keys = keys
        self.seen: list[tuple[str, str, dict[str, object]]] = []  # (gateway, topic, body)
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_connect = lambda c, *_: c.subscribe(
            [(f"{PREFIX}/+/alarms", 1), (f"{PREFIX}/gateway/+/alarms", 1)]
        )
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert subscribed.wait(_WAIT_S)

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        for name, key in self._keys.items():
            fields = open_own(bytes(msg.payload), key.public_raw())
            if fields is not None and fields["topic"] == msg.topic:
                with self._lock:
                    self.seen.append((name, msg.topic, json.loads(fields["body"])))

    def having(self, **want: object) -> list[tuple[str, str, dict[str, object]]]:
        with self._lock:
            return [a for a in self.seen if all(a[2].get(k) == v for k, v in want.items())]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _files(tmp_path: Path, name: str, seals: dict[str, bytes]) -> GatewayFiles:
    root = tmp_path / name
    root.mkdir()
    files = GatewayFiles(root, GatewayKey.generate())
    files.key.save(files.key_file)
    for device, key in seals.items():
        files.add_device(device, key)
    return files


@contextlib.asynccontextmanager
async def _gateway(
    files: GatewayFiles,
    port: int,
    fleet_key: bytes,
    attach: tuple[str, ...],
    ack_key_file: Path | None = None,
) -> AsyncIterator[tuple[Gateway, dict[str, SimDevice]]]:
    config = dataclasses.replace(
        files.config(port), gateway_id=files.root.name, fleet=FleetLinkConfig(fleet_key),
        ack_key_file=ack_key_file,
    )  # fmt: skip
    async with running(config) as gateway, contextlib.AsyncExitStack() as stack:
        await gateway.fleet.ready(_WAIT_S)
        sims = {}
        for device in attach:
            host, dev = pipe_pair(device)
            gateway.attach(host)
            sim = SimDevice(device, files.device_keys[device], dev)
            sims[device] = await stack.enter_async_context(sim)
            await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
        yield gateway, sims


async def _acked(sim: SimDevice) -> None:
    await sim.stamp(1)
    await sim.wait_acked(len(sim.journal), _WAIT_S)


def _quarantine(gateway: Gateway, device: str) -> str | None:
    state = gateway.registry.get(device)
    if state is None:
        return "(not registered)"
    return state.quarantine.reason if state.quarantine is not None else None


def _held(gateway: Gateway, device: str, reason: str | None) -> Callable[[], bool]:
    return lambda: _quarantine(gateway, device) == reason


async def _carry(seal: SimDevice, to: Gateway) -> None:
    """The seal carried to gateway `to`: a new link there, its session open."""
    host, device_end = pipe_pair(f"{seal.device_id}@{to.gateway_id}")
    to.attach(host)
    await seal.reconnect(device_end)
    await asyncio.wait_for(seal.welcomed.wait(), _WAIT_S)


def _fleet(
    tmp_path: Path,
    cluster: PostgresCluster,
    broker: Mosquitto,
    gateways: tuple[GatewayFiles, ...],
    **authority: Any,
) -> tuple[str, Path, bytes]:
    """A fleet database that pins these gateways' keys, migrated, with its registry key made
    by `sealink fleet keys init`: (dsn, fleet.toml, the registry's public key). `authority`:
    write_fleet_config's authority_key and ack_keys."""
    pems = {}
    for files in gateways:
        pems[files.root.name] = files.root / "public.pem"
        pems[files.root.name].write_bytes(files.key.public_pem())
    dsn = cluster.database("fleet")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-1",
        port=broker.port, prefix=PREFIX, gateways=pems, **authority,
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    init = sealink("fleet", "keys", "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    return dsn, config, bytes.fromhex(json.loads(init.stdout)["public_key"])


def _vector_key(label: str) -> GatewayKey:
    seed = hashlib.sha256(b"sealink vectors/" + label.encode()).digest()
    return GatewayKey(Ed25519PrivateKey.from_private_bytes(seed))


_START_S = 60.0


@dataclass
class Api:
    url: str
    token: str
    rig: Rig
    tls: ssl.SSLContext | None = None  # the client's, trusting the server's CA

    def get(self, path: str, token: str | None = None, **query: Any) -> tuple[int, Any]:
        status, body = self.get_bytes(path, token, **query)
        return status, json.loads(body)

    def get_bytes(self, path: str, token: str | None = None, **query: Any) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(query)}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.tls) as response:
                return response.status, bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, bytes(exc.read())

    def all_records(self, limit: int, **query: Any) -> tuple[list[tuple[str, int]], int]:
        """Every page's (device, counter), in order, and how many pages it took."""
        keys: list[tuple[str, int]] = []
        pages, cursor = 0, None
        while True:
            extra = {} if cursor is None else {"next": cursor}
            status, body = self.get("/v1/records", self.token, limit=limit, **query, **extra)
            assert status == 200, body
            assert len(body["items"]) <= limit
            keys += [(r["device"], r["counter"]) for r in body["items"]]
            pages += 1
            cursor = body["next"]
            if cursor is None:
                return keys, pages


def _token(rig: Rig, name: str) -> str:
    added = sealink("fleet", "tokens", "add", name, "--config", str(rig.config_path))
    assert added.returncode == 0, added.stderr
    return str(json.loads(added.stdout)["token"])


@contextlib.contextmanager
def _served(rig: Rig, tls: ssl.SSLContext | None = None) -> Iterator[Api]:
    """`sealink fleet serve` of the rig's config, on a free loopback port, with a token."""
    server = subprocess.Popen(
        [sys.executable, "-m", "sealink.cli", "fleet", "serve", "--config", str(rig.config_path),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        line = server.stdout.readline()  # printed once the socket is bound
        assert line, "fleet serve exited before listening"
        yield Api(json.loads(line)["listening"], _token(rig, "credit"), rig, tls)
    finally:
        server.terminate()
        server.wait(timeout=_START_S)


def _tls_config(rig: Rig, name: str, **files: Path) -> Path:
    """A copy of the rig's fleet.toml with a [serve] table of these keys."""
    lines = "".join(f'{key} = "{path}"\n' for key, path in files.items())
    config = rig.config_path.with_name(f"{name}.toml")
    config.write_text(f"{rig.config_path.read_text(encoding='utf-8')}\n[serve]\n{lines}")
    return config


def _permit_result(
    key: GatewayKey, gateway: str, device: str, permit: int, document: str, state: str
) -> tuple[str, bytes]:
    """A gateway's signed result of a permit request for `document` (SPEC §11.5), on the
    result topic the fleet learns permits from: (topic, payload)."""
    topic = f"{PREFIX}/cmd/{gateway}/result/approver-1"
    body = {"request": f"r-{device}-{permit}", "action": "permit", "device": device,
            "permit": permit, "state": state, "document_sha256": document,
            "requested_by": "clerk", "count": 3}  # fmt: skip
    return topic, MessageSigner(key, gateway).sign(topic, body)
