"""A province's day, compressed: many seals over many gateways into two fleet instances.

    .venv/bin/python tools/bench.py province

SEALS simulated seals (default 100,000) spread over GATEWAYS gateway keys (default 1,000), each
stamping STAMPS times in the day (default 2): the stamps fall by an office day's hourly
profile (HOURLY: most between 08:00 and 18:00, peaks mid-morning and mid-afternoon), the day
compressed into DAY_S seconds (default 240). Every record is made and countersigned before
the clock starts (sealink_sim.fleetrig); then one MQTT client publishes each at its moment
(QoS 1, as a gateway's publisher would), while two `sealink fleet run` processes share them
(the deployment README "Deploying for a province" describes) into PostgreSQL.

- `lag_p50_ms`, `lag_p99_ms`, `lag_max_ms`: from a record's publish to its row's `stored_ms`
  (verified, chained, committed), over every record of the day;
- `peak_offered_per_s` and `mean_offered_per_s`: what the day asked of the fleet (the most
  records published in one second, and the average); the ingest ceiling beside them is
  `tools/bench.py fleet` (records/s with 1 and 2 instances on this machine, same `make bench`);
- `drain_s`: from the last publish to the last row stored (0 when the fleet kept up);
- `postgres_mb_per_million_records`: `records` with its indexes; `database_mb_per_million_records`
  the whole database (devices, gateways, the registry of 100,000 seal keys included);
- `import_s`: `sealink fleet devices import` of every seal's key, once.

Environment: SEALINK_BENCH_PROVINCE_SEALS, _GATEWAYS, _STAMPS, _DAY_S; SEALINK_BENCH_SEED fixes
the day (printed to stderr either way).

    {"bench": "province", "seals": ..., "gateways": ..., "records": ..., "lag_p50_ms": ...}
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.postgres import PostgresCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleetrun import TIMEOUT_S, Instance, count, register, wait

SEALS = int(os.environ.get("SEALINK_BENCH_PROVINCE_SEALS", "100000"))
GATEWAYS = int(os.environ.get("SEALINK_BENCH_PROVINCE_GATEWAYS", "1000"))
STAMPS = int(os.environ.get("SEALINK_BENCH_PROVINCE_STAMPS", "2"))
DAY_S = float(os.environ.get("SEALINK_BENCH_PROVINCE_DAY_S", "240"))
INSTANCES = 2
PREFIX = "province"
# The share of a day's stamps in each hour, 00:00 to 23:00: an office day (government and
# enterprise seals), busiest mid-morning and mid-afternoon, a little at night.
HOURLY = (
    0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 1.0, 3.0, 6.0, 8.0, 7.0,
    3.0, 4.0, 7.0, 8.0, 6.0, 3.0, 1.0, 0.6, 0.4, 0.3, 0.2, 0.2,
)  # fmt: skip
_DAY_MS = 24 * 3600 * 1000


def _day(
    rng: random.Random,
) -> tuple[list[SimGateway], list[SimSeal], list[tuple[float, str, int, bytes]]]:
    """Every record of the day as (moment in the day in [0, 1), device, counter, COSE), in
    publishing order; each seal's stamps in counter order."""
    gateways = [SimGateway(f"gw-{g:04d}") for g in range(GATEWAYS)]
    seals = [SimSeal(f"seal-{i:06d}", key=rng.randbytes(32)) for i in range(SEALS)]
    hours = range(24)
    day = []
    for index, seal in enumerate(seals):
        gateway = gateways[index % GATEWAYS]
        moments = sorted((h + rng.random()) / 24 for h in rng.choices(hours, HOURLY, k=STAMPS))
        for moment, (counter, cose) in zip(moments, gateway.records(seal, STAMPS), strict=True):
            day.append((moment, seal.device, counter, cose))
    day.sort(key=lambda record: record[0])
    return gateways, seals, day


def _publish(port: int, day: list[tuple[float, str, int, bytes]], sent_ms: list[int]) -> None:
    """Each record at its moment of the compressed day; `sent_ms[i]` the wall clock of its
    publish. Waits for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.monotonic()
    infos = []
    for i, (moment, device, _counter, cose) in enumerate(day):
        due = start + moment * DAY_S
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent_ms[i] = time.time_ns() // 1_000_000
        infos.append(client.publish(f"{PREFIX}/{device}/events", cose, qos=1))
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()


def _lags(dsn: str, day: list[tuple[float, str, int, bytes]], sent_ms: list[int]) -> list[int]:
    sent = {(device, counter): sent_ms[i] for i, (_, device, counter, _) in enumerate(day)}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT device, counter, stored_ms FROM records").fetchall()
    return sorted(
        int(stored) - sent[(str(device), int(counter))] for device, counter, stored in rows
    )


def _per_second(sent_ms: list[int]) -> tuple[int, float]:
    """(the most records published in one wall-clock second, the mean per second)."""
    seconds: dict[int, int] = {}
    for ms in sent_ms:
        seconds[ms // 1000] = seconds.get(ms // 1000, 0) + 1
    span_s = max(1.0, (max(sent_ms) - min(sent_ms)) / 1000)
    return max(seconds.values()), len(sent_ms) / span_s


def run() -> list[dict[str, Any]]:
    seed = int(os.environ.get("SEALINK_BENCH_SEED", str(random.randrange(2**32))))
    print(f"bench province: seed={seed} (replay: SEALINK_BENCH_SEED={seed})", file=sys.stderr)
    rng = random.Random(seed)
    made = time.perf_counter()
    gateways, seals, day = _day(rng)
    made_s = time.perf_counter() - made
    with (
        tempfile.TemporaryDirectory(prefix="sealink-bench-province-") as tmp,
        PostgresCluster() as pg,
        Mosquitto(Path(tmp) / "broker") as broker,
    ):
        work = Path(tmp)
        (work / "keys").mkdir()
        pems = {gw.id: gw.write_public_key(work / "keys" / f"{gw.id}.pem") for gw in gateways}
        dsn = pg.database("province")
        fleet = [
            Instance(write_fleet_config(
                work / f"fleet-{n}.toml", database=dsn, instance=f"fleet-{n}",
                port=broker.port, prefix=PREFIX, gateways=pems,
            ))
            for n in range(INSTANCES)
        ]  # fmt: skip
        import_s = register(fleet[0].config, seals)
        for instance in fleet:
            instance.start()
        sent_ms = [0] * len(day)
        _publish(broker.port, day, sent_ms)
        published = time.monotonic()
        wait(lambda: count(dsn) >= len(day), f"{len(day)} records stored")
        drain_s = time.monotonic() - published
        for instance in fleet:
            instance.stop()
        lags = _lags(dsn, day, sent_ms)
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size('records'), pg_database_size(current_database())"
            ).fetchone()
        records_bytes, database_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
    peak, mean = _per_second(sent_ms)
    return [{
        "bench": "province", "seals": SEALS, "gateways": GATEWAYS, "records": len(day),
        "instances": INSTANCES, "compressed_day_s": DAY_S,
        "compression": round(_DAY_MS / 1000 / DAY_S),
        "peak_offered_per_s": peak, "mean_offered_per_s": round(mean),
        "lag_p50_ms": statistics.median(lags),
        "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))], "lag_max_ms": lags[-1],
        "drain_s": round(drain_s, 2),
        "postgres_mb_per_million_records": round(records_bytes / len(day), 1),
        "database_mb_per_million_records": round(database_bytes / len(day), 1),
        "import_s": round(import_s, 1), "made_s": round(made_s, 1), "cores": os.cpu_count(),
    }]  # fmt: skip
