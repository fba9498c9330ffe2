"""Shared by the fleet tests: a fleet ledger in a fresh database of the real PostgreSQL
(`cluster`, in conftest) fed by simulated gateways, and the waits on what it stores.

The names are those the tests had when these lived in test_fleet and test_fleet_e2e, kept so
that moving them here changed no test."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from conftest import sealink
from paho.mqtt.enums import CallbackAPIVersion
from sealink.fleet import Batch, FleetService, Store, StoreOutcome, load_config
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.postgres import PostgresCluster

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
