"""The fleet ledger's ingest (issue 14), beside its two ceilings, all in one run.

    .venv/bin/python tools/bench.py fleet

RECORDS countersigned records (SEALS simulated seals, one gateway key; sealink_sim.fleetrig)
are made once, then:

- `verify_per_s`: sealink_verify.record's check of records alone (countersignature, seal
  signature), in this process, the best of three passes: the CPU ceiling of one instance.
- `copy_rows_per_s`: a raw COPY of the same rows into the same `records` table of a fresh
  database, one transaction: the storage ceiling.
- `records_per_s` with 1 and 2 `sealink fleet run` processes: their sessions are made (the
  instances start, subscribe and stop), every record is published while they are away (the
  broker queues them in their sessions), then they start again, each paused (SIGSTOP) once
  subscribed until all are; from the moment they go on together to the moment PostgreSQL holds
  every record, fully verified and chained, the records stored in that time (an instance
  stores a few between its subscription and its pause; they are not counted).

`postgres_mb_per_million_records`: the size of `records` with its indexes (bytes per record,
which is MB per million), after the ingest.

`fraction_of_ceiling` = records_per_s / the lower ceiling, the CPU one counted once per
instance (each instance verifies on its own core where the machine has them).

`stack_cpu_us_per_record`: the CPU the whole ingest spent on a record, the instances', the
broker's and PostgreSQL's (its backends included) together (/proc). On the 2 instances' row,
`cores_allow` is how many times the 1 instance rate the machine's cores could carry at the 1
instance run's CPU per record (cores / that CPU / that rate, at most 2): where broker and
database share the instances' cores, two instances cannot double one that already keeps a
core busy. `scaling` = 2 instances' rate / 1 instance's.

`fleet_receive`: what taking a PUBLISH costs the instance, paho's own path against
sealink.mqtt.pahofast.LeanSubscriber's: the CPU (this process) per message of draining the
same queued records from a real Mosquitto with manual acknowledgement, nothing else done.

    {"bench": "fleet", "instances": 1, "records_per_s": ..., "copy_rows_per_s": ...,
     "verify_per_s": ..., "fraction_of_ceiling": ..., "records": ..., "cores": ...}
    {"bench": "fleet_receive", "paho_cpu_us_per_message": ..., "lean_cpu_us_per_message": ...}
"""

from __future__ import annotations

import os
import queue
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sealink.fleet import migrate
from sealink.mqtt.pahofast import LeanSubscriber
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.postgres import PostgresCluster
from sealink_verify.audit import seal_public_key
from sealink_verify.record import RecordVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleetrun import TIMEOUT_S, Instance, count, cpu_s, register, wait

RECORDS = int(os.environ.get("SEALINK_BENCH_FLEET_RECORDS", "12000"))
SEALS = 40
PREFIX = "bench"
_COLUMNS = (
    "device, counter, gateway, received_ms, stored_ms, stored_by, cose, record_hash, prev, "
    "kind, permit, operator, time_s, seal_verified"
)


def _records(gateway: SimGateway, seals: list[SimSeal]) -> list[tuple[str, bytes]]:
    per_seal = RECORDS // len(seals)
    return [
        (seal.device, cose) for seal in seals for _counter, cose in gateway.records(seal, per_seal)
    ]


def _verify_per_s(
    gateway: SimGateway, seals: list[SimSeal], records: list[tuple[str, bytes]]
) -> float:
    verifier = RecordVerifier(
        {gateway.id: [gateway.key.public_raw()]},
        {s.device: seal_public_key(s.chip.public) for s in seals},
    )
    # The best of three passes over a third of the records: this machine is shared, and a
    # ceiling measured in a slow moment would flatter the ingest beside it.
    sample = records[: max(1, len(records) // 3)]
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for device, cose in sample:
            verifier.open(device, cose)
        best = max(best, len(sample) / (time.perf_counter() - start))
    return best


def _copy_rows_per_s(
    dsn: str, gateway: SimGateway, seals: list[SimSeal], records: list[tuple[str, bytes]]
) -> float:
    verifier = RecordVerifier({gateway.id: [gateway.key.public_raw()]})
    rows = []
    for device, cose in records:
        r = verifier.open(device, cose)
        rows.append((r.device, r.counter, r.gateway, r.received_ms, 0, "copy", cose, r.record_hash,
                     r.prev, r.field_int("kind"), r.field_int("permit"), r.field_int("operator"),
                     r.field_int("time_s"), True))  # fmt: skip
    with psycopg.connect(dsn) as conn:
        migrate(conn)
        start = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor() as cur,
            cur.copy(f"COPY records ({_COLUMNS}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        elapsed = time.perf_counter() - start
    return len(rows) / elapsed


def _publish(port: int, records: list[tuple[str, bytes]], prefix: str = PREFIX) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"{prefix}/{d}/events", cose, qos=1) for d, cose in records]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()


def _instances(
    work: Path, dsn: str, port: int, gateway: SimGateway, how_many: int
) -> list[Instance]:
    pem = gateway.write_public_key(work / "gw.pem")
    return [
        Instance(
            write_fleet_config(
                work / f"fleet-{how_many}-{n}.toml",
                database=dsn,
                instance=f"fleet-{how_many}-{n}",
                port=port,
                prefix=PREFIX,
                gateways={gateway.id: pem},
                group=f"bench-{how_many}",
            )
        )
        for n in range(how_many)
    ]


def _ingest(
    work: Path,
    pg: PostgresCluster,
    broker: Mosquitto,
    gateway: SimGateway,
    seals: list[SimSeal],
    records: list[tuple[str, bytes]],
    instances: int,
) -> tuple[float, float, float]:
    """(records/s, bytes of `records` with its indexes per record, CPU µs per record of the
    instances, the broker and PostgreSQL together)."""
    dsn = pg.database(f"ingest_{instances}")
    fleet = _instances(work, dsn, broker.port, gateway, instances)
    register(fleet[0].config, seals)
    for instance in fleet:  # make the sessions, then leave: the broker queues for them
        instance.start()
        instance.stop()
    _publish(broker.port, records)
    for instance in fleet:  # the first must not drain alone while the second one boots
        instance.start()
        instance.pause()
    stack = [p for p in (broker.pid, pg.pid, *(i.proc.pid for i in fleet if i.proc)) if p]
    before = count(dsn)
    start, cpu_start = time.perf_counter(), cpu_s(stack)
    for instance in fleet:
        instance.resume()
    wait(lambda: count(dsn) >= len(records), f"{len(records)} records stored")
    elapsed, cpu = time.perf_counter() - start, cpu_s(stack) - cpu_start
    for instance in fleet:
        instance.stop()
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_total_relation_size('records')").fetchone()
    size = int(row[0]) if row else 0
    stored = len(records) - before
    return stored / elapsed, size / len(records), cpu / stored * 1e6


def _receive_cpu_us(port: int, records: list[tuple[str, bytes]], lean: bool) -> float:
    """CPU µs per message of draining `records`, queued in a fresh session, acknowledged in
    batches as the fleet's writer does, and nothing else."""
    name = f"receive-{'lean' if lean else 'paho'}"
    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = 600

    def new_client() -> mqtt.Client:
        kind = LeanSubscriber if lean else mqtt.Client
        return kind(CallbackAPIVersion.VERSION2, name, protocol=mqtt.MQTTv5, manual_ack=True)

    client = new_client()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port, clean_start=False, properties=connect)
    client.subscribe(f"{name}/+/events", 1)
    client.loop_start()
    subscribed.wait(TIMEOUT_S)
    client.disconnect()
    client.loop_stop()
    _publish(port, records, prefix=name)

    inbox: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    client = new_client()
    if isinstance(client, LeanSubscriber):
        client.on_publish_raw = lambda mid, qos, topic, payload: inbox.put((mid, qos))
    else:
        client.on_message = lambda c, u, m: inbox.put((m.mid, m.qos))
    drained = threading.Event()

    def acknowledge() -> None:
        left = len(records)
        while left > 0:
            batch = [inbox.get()]
            while len(batch) < 500 and not inbox.empty():
                batch.append(inbox.get())
            left -= len(batch)
            if isinstance(client, LeanSubscriber):
                client.ack_all(mid for mid, _ in batch)
            else:
                for mid, qos in batch:
                    client.ack(mid, qos)
        drained.set()

    threading.Thread(target=acknowledge, daemon=True).start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    client.connect("127.0.0.1", port, clean_start=False, properties=connect)
    client.loop_start()
    if not drained.wait(TIMEOUT_S):
        raise TimeoutError(f"bench fleet: {name} did not drain")
    after = resource.getrusage(resource.RUSAGE_SELF)
    client.disconnect()
    client.loop_stop()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu / len(records) * 1e6


def run() -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory(prefix="sealink-bench-fleet-") as tmp,
        PostgresCluster() as pg,
        Mosquitto(Path(tmp) / "broker") as broker,
    ):
        work = Path(tmp)
        gateway = SimGateway("gw-bench")
        seals = [SimSeal(f"seal-{i:04d}") for i in range(SEALS)]
        records = _records(gateway, seals)
        verify = _verify_per_s(gateway, seals, records)
        copy = _copy_rows_per_s(pg.database("copy"), gateway, seals, records)
        results: list[dict[str, Any]] = []
        cores = os.cpu_count() or 1
        for instances in (1, 2):
            rate, per_record, cpu_us = _ingest(work, pg, broker, gateway, seals, records, instances)
            ceiling = min(copy, verify * min(instances, cores))
            results.append({
                "bench": "fleet", "instances": instances, "records_per_s": round(rate),
                "copy_rows_per_s": round(copy), "verify_per_s": round(verify),
                "fraction_of_ceiling": round(rate / ceiling, 3), "records": len(records),
                "cores": cores, "stack_cpu_us_per_record": round(cpu_us, 1),
                "postgres_mb_per_million_records": round(per_record, 1),
            })  # fmt: skip
        one, two = results
        one_rate, one_cpu_s = one["records_per_s"], one["stack_cpu_us_per_record"] / 1e6
        two["scaling"] = round(two["records_per_s"] / one_rate, 3)
        two["cores_allow"] = round(min(2.0, cores / one_cpu_s / one_rate), 3)
        paho, lean = (_receive_cpu_us(broker.port, records, lean) for lean in (False, True))
        results.append({
            "bench": "fleet_receive", "messages": len(records),
            "paho_cpu_us_per_message": round(paho, 1), "lean_cpu_us_per_message": round(lean, 1),
            "lean_fraction_of_paho": round(lean / paho, 3),
        })  # fmt: skip
        return results
