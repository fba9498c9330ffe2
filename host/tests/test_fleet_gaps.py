"""The gateways' gap statements at the fleet (SPEC §11.6 "Gap statements at the fleet"):
verified under the pinned keys, kept once with their COSE bytes, judged against the records
the fleet holds in whichever order the two arrive, and shown by `sealink fleet gaps` and the
JSON API.

A real PostgreSQL (`cluster`) and, where MQTT is the point, a real Mosquitto (`broker`).
Statements come from sealink_sim.fleetrig.SimGateway, built by the gateway's own
`gap_payload` and signed with its key; real gateways make them in the adopt test here
(`sealink devices adopt`) and in test_fleet_registry's move test (a placement's statement).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import gateway_toml, run, sealink, until
from fleet_rig import (
    _WAIT_S,
    PREFIX,
    Rig,
    _acked,
    _carry,
    _count,
    _files,
    _fleet,
    _gateway,
    _held,
    _publisher,
    _rig,
    _served,
    _topic,
    _wait,
)
from sealink.crypto.signer import GatewayKey
from sealink.evidence.keys import history_document, keys_origin, sign_transition
from sealink.fleet import FleetService, Store, load_config
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip

_ADOPTED_MS = 1_790_000_000_000


def _gaps_topic(device: str) -> str:
    return f"{PREFIX}/{device}/gaps"


def _named(found: list[tuple[Any, ...]]) -> dict[str, list[int]]:
    """device -> every counter its gap_declared_over_held_records alarms name, sorted."""
    named: dict[str, list[int]] = {}
    for device, _, detail in found:
        spans = detail["counters"]
        named.setdefault(device, []).extend(c for a, b in spans for c in range(a, b + 1))
    return {device: sorted(counters) for device, counters in named.items()}


def _fleet_gaps(rig: Rig, *args: str) -> list[dict[str, Any]]:
    shown = sealink("fleet", "gaps", "--json", *args, "--config", str(rig.config_path))
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


def _alarms(rig: Rig, reason: str) -> list[tuple[Any, ...]]:
    return rig.rows(
        "SELECT device, gateway, detail FROM alarms WHERE reason = %s ORDER BY id", reason
    )


def test_an_operators_statement_over_counters_the_fleet_lacks_is_kept_once_and_shown(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    seal = SimSeal("seal-d")
    rig = _rig(cluster, tmp_path, [seal])
    gw = rig.gateways[0]
    records = gw.records(seal, 10)
    held = [cose for counter, cose in records if counter in (1, 3, 8, 9, 10)]
    rig.write([(_topic(seal.device), cose) for cose in held])
    lost = gw.gap_statement(seal.device, (5, 7), "alice", "flash died", adopted_ms=_ADOPTED_MS)
    past = gw.gap_statement(seal.device, (11, 12), "bob", "never sent", adopted_ms=_ADOPTED_MS)
    topic = _gaps_topic(seal.device)
    outcome = rig.write([(topic, lost), (topic, lost), (topic, past)])
    assert outcome.gap_statements == 2 and outcome.gap_mismatches == 0
    assert rig.write([(topic, lost)]).gap_statements == 0  # delivered again: nothing new
    kept = rig.rows("SELECT gateway, first, last, operator, note, cose FROM gap_statements "
                    "ORDER BY first")  # fmt: skip
    assert kept == [("gw-1", 5, 7, "alice", "flash died", lost),
                    ("gw-1", 11, 12, "bob", "never sent", past)]  # fmt: skip
    assert rig.rows("SELECT count(*) FROM alarms") == [(0,)]
    shown = _fleet_gaps(rig, "--device", seal.device)
    spans = [(g["first"], g["last"], g["declared"]) for g in shown]
    # 2 and 4 are missing and nobody said why; 5..7 an operator declared lost; 11..12 too,
    # past the last record held.
    assert spans == [(2, 2, False), (4, 4, False), (5, 7, True), (11, 12, True)]
    declared = shown[2]["declared_by"]
    assert [(d["gateway"], d["operator"], d["note"], d["adopted_ms"], d["head"])
            for d in declared] == [("gw-1", "alice", "flash died", _ADOPTED_MS, None)]  # fmt: skip
    assert declared[0]["statement_sha256"] == hashlib.sha256(lost).hexdigest()
    text = sealink("fleet", "gaps", "--config", str(rig.config_path))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "seal-d: 2..2 missing, undeclared"
    assert lines[2].startswith("seal-d: 5..7 missing, declared by gw-1 (operator 'alice', ")
    with _served(rig) as api:
        status, body = api.get(f"/v1/devices/{seal.device}", api.token)
    assert status == 200, body
    assert [(g["first"], g["last"], g["declared"]) for g in body["gaps"]] == spans
    assert body["gaps"][2]["declared_by"] == declared
    rig.store.close()


@pytest.mark.parametrize("order", ["statement_first", "records_first"])
def test_an_operators_statement_over_held_records_is_alarmed_naming_them(
    cluster: PostgresCluster, tmp_path: Path, order: str
) -> None:
    seal = SimSeal("seal-h")
    rig = _rig(cluster, tmp_path, [seal])
    records = [(_topic(seal.device), cose) for _, cose in rig.gateways[0].records(seal, 6)]
    # Gateway 2 says 3..5 were lost: the fleet holds them (from gateway 1).
    statement = (_gaps_topic(seal.device),
                 rig.gateways[1].gap_statement(seal.device, (3, 5), "mallory", "lost"))  # fmt: skip
    if order == "statement_first":
        rig.write([statement])
        rig.write(records[:4])  # 3 and 4 in this transaction, 5 in the next
        rig.write(records[4:])
    else:
        rig.write(records)
        rig.write([statement])
    rig.write([statement, *records])  # all of it delivered again: nothing new
    found = _alarms(rig, "gap_declared_over_held_records")
    assert {(device, gateway) for device, gateway, _ in found} == {("seal-h", "gw-2")}
    assert _named(found) == {"seal-h": [3, 4, 5]}, found  # each held counter named, once
    detail = found[0][2]
    assert (detail["first"], detail["last"], detail["operator"]) == (3, 5, "mallory")
    assert rig.rows("SELECT count(*) FROM gap_statements") == [(1,)]
    assert _fleet_gaps(rig) == []  # nothing is missing: the statement covers held records
    rig.store.close()


@pytest.mark.parametrize("order", ["statement_first", "records_first"])
def test_a_moves_head_is_checked_against_the_record_the_fleet_holds(
    cluster: PostgresCluster, tmp_path: Path, order: str
) -> None:
    seal = SimSeal("seal-m")
    rig = _rig(cluster, tmp_path, [seal])
    old, new = rig.gateways
    records = [(_topic(seal.device), cose) for _, cose in old.records(seal, 4)]
    topic = _gaps_topic(seal.device)
    # The fleet moved seal-m to gw-2 at counter 4: gw-2's statement names record 4's hash.
    honest = new.gap_statement(seal.device, (1, 4), "fleet", "moved", head=seal.head)
    stated = os.urandom(32)  # an insider on gw-2 splices the seal's history after their own
    forged = new.gap_statement(seal.device, (1, 4), "fleet", "moved", head=stated)
    statements = [(topic, honest), (topic, forged)]
    if order == "statement_first":
        rig.write(statements)
        rig.write(records)
    else:
        rig.write(records)
        rig.write(statements)
    rig.write([*statements, *records])  # delivered again
    (mismatch,) = _alarms(rig, "gap_head_mismatch")
    device, gateway, detail = mismatch
    assert (device, gateway, detail["counter"]) == ("seal-m", "gw-2", 4)
    assert detail["held_sha256"] == seal.head.hex()
    assert detail["stated_sha256"] == stated.hex()
    assert detail["statement_sha256"] == hashlib.sha256(forged).hexdigest()
    # A move's statement covers records the fleet holds: that is no declaration over them.
    assert _alarms(rig, "gap_declared_over_held_records") == []
    assert rig.rows("SELECT count(*) FROM gap_statements") == [(2,)]
    rig.store.close()


def test_a_statement_signed_by_another_key_or_for_another_seal_is_refused(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    gw = rig.gateways[0]
    good = gw.gap_statement("seal-a", (1, 2), "alice", "lost")
    stranger = SimGateway("gw-1").gap_statement("seal-a", (1, 2), "alice", "lost")  # unpinned
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    record = gw.records(SimSeal("seal-a"), 1)[0][1]  # a countersigned record, not a statement
    rig.write([
        (_gaps_topic("seal-b"), good),  # gw-1's statement about seal-a, replayed for seal-b
        (_gaps_topic("seal-a"), stranger),
        (_gaps_topic("seal-a"), tampered),
        (_gaps_topic("seal-a"), record),
    ])  # fmt: skip
    reasons = rig.rows("SELECT topic, reason FROM rejections ORDER BY id")
    assert reasons == [
        (_gaps_topic("seal-b"), "WrongTopic"),
        (_gaps_topic("seal-a"), "UnknownKey"),
        (_gaps_topic("seal-a"), "BadSignature"),
        (_gaps_topic("seal-a"), "NotSigned"),
    ]
    assert rig.rows("SELECT count(*) FROM gap_statements") == [(0,)]
    assert rig.rows("SELECT reason, count(*) FROM alarms GROUP BY reason") == [("rejected", 4)]
    rig.store.close()


def test_a_statement_signed_by_a_rotated_key_is_taken_once_the_key_history_arrives(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    old = rig.gateways[0].key
    rotated = SimGateway("gw-1", GatewayKey.generate())
    transition = sign_transition(old, rotated.key, keys_origin("gw-1"), 1, 10, 1000)
    history = history_document("gw-1", old.public_raw(), [transition])
    statement = rotated.gap_statement("seal-r", (1, 2), "alice", "lost")
    rig.write([(_gaps_topic("seal-r"), statement)])
    assert rig.rows("SELECT reason FROM rejections") == [("UnknownKey",)]
    rig.write([(f"{PREFIX}/gateway/gw-1/keys", json.dumps(history).encode())])
    assert rig.rows("SELECT gateway, cose FROM gap_statements") == [("gw-1", statement)]
    assert rig.rows("SELECT count(*) FROM rejections") == [(0,)]
    rig.store.close()


def test_two_instances_storing_a_statement_and_the_records_at_once_find_the_mismatch(
    cluster: PostgresCluster, tmp_path: Path, seed: int
) -> None:
    """Each round, one instance stores the statement while the other stores the records it
    declares lost, started together in an order drawn from the seed: whichever commits second
    must find the other's row, so every round ends with one alarm naming every counter."""
    rig = _rig(cluster, tmp_path)
    store = Store(rig.dsn, instance="fleet-u")
    other = Rig(rig.dsn, rig.config_path, rig.gateways, store,
                FleetService(load_config(rig.config_path), store))  # fmt: skip
    rng = random.Random(seed)
    # A race, so not every run shows one: with the statement's seal left out of the lock,
    # 3 runs of 4 failed.
    rounds = 40
    for n in range(rounds):
        seal = SimSeal(f"seal-{n}")
        records = [(_topic(seal.device), c) for _, c in rig.gateways[0].records(seal, 3)]
        statement = rig.gateways[1].gap_statement(seal.device, (1, 3), "mallory", f"round {n}")
        jobs = [(rig, [(_gaps_topic(seal.device), statement)]), (other, records)]
        rng.shuffle(jobs)
        threads = [threading.Thread(target=by.write, args=(sent,)) for by, sent in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
    found = _alarms(rig, "gap_declared_over_held_records")
    assert _named(found) == {f"seal-{n}": [1, 2, 3] for n in range(rounds)}
    store.close()
    rig.store.close()


def test_an_operator_adopting_on_a_real_gateway_records_the_fleet_holds_is_alarmed(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    """seal-m stamps 3 records on gateway A; carried to B without a move, it is ahead of B's
    ledger, and B's operator runs `sealink devices adopt`: B signs 1..3 as lost and publishes
    that on the seal's gaps topic. The fleet holds all three from A: it alarms."""
    seals = {"seal-m": os.urandom(32)}
    gw_a, gw_b = _files(tmp_path, "gw-a", seals), _files(tmp_path, "gw-b", seals)
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (gw_a, gw_b))
    store = Store(dsn, instance="fleet-1")
    store.import_seal_keys([("seal-m", SimChip.of(seals["seal-m"]).public)], source="test")
    adopt = ["devices", "adopt", "seal-m", "--operator", "mallory", "--note", "lost"]
    found = "SELECT count(*) FROM alarms WHERE reason = 'gap_declared_over_held_records'"

    async def body() -> None:
        service = FleetService(load_config(config), store).start()
        try:
            async with (
                _gateway(gw_a, broker.port, fleet_key, ("seal-m",)) as (_, sims),
                _gateway(gw_b, broker.port, fleet_key, ()) as (b, _),
            ):
                seal = sims["seal-m"]
                for _ in range(3):
                    await _acked(seal)
                held = "SELECT count(*) FROM records WHERE device = 'seal-m'"
                await asyncio.to_thread(_wait, lambda: _count(dsn, held) == 3, "A's 3 records")
                await _carry(seal, b)
                await until(_held(b, "seal-m", "ahead_of_ledger"), _WAIT_S, "B holds it")
                toml = gateway_toml(gw_b, broker.port)
                adopted = await asyncio.to_thread(sealink, *adopt, "--config", str(toml))
                assert adopted.returncode == 0, adopted.stderr
                # Released, the seal's next record anchors; B's publisher takes the CLI's
                # outbox row (the statement) with the rows of its next commit.
                await _acked(seal)
                await asyncio.to_thread(_wait, lambda: _count(dsn, found) == 1, "the alarm")
        finally:
            await asyncio.to_thread(service.stop)

    try:
        run(body(), timeout=120)
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        alarm = conn.execute(
            "SELECT device, gateway, detail FROM alarms "
            "WHERE reason = 'gap_declared_over_held_records'"
        ).fetchone()
        kept = conn.execute("SELECT gateway, first, last, operator FROM gap_statements").fetchall()
    assert alarm is not None
    device, gateway, detail = alarm
    assert (device, gateway, detail["counters"], detail["operator"]) == (
        "seal-m", "gw-b", [[1, 3]], "mallory",
    )  # fmt: skip
    assert kept == [("gw-b", 1, 3, "mallory")]


def test_fleet_run_takes_gap_statements_from_mqtt_once(
    cluster: PostgresCluster, tmp_path: Path, broker: Mosquitto
) -> None:
    gateway = SimGateway("gw-1")
    pem = gateway.write_public_key(tmp_path / "gw-1.pem")
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-g", port=broker.port,
        prefix=PREFIX, gateways={"gw-1": pem},
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(dsn, instance="fleet-g")
    service = FleetService(load_config(config), store).start()
    publisher = _publisher(broker.port)
    statement = gateway.gap_statement("seal-q", (1, 4), "alice", "lost in transit")
    try:
        assert service.connected.wait(60)
        for _ in range(2):  # the gateway's outbox may publish it twice
            publisher.publish(_gaps_topic("seal-q"), statement, qos=1).wait_for_publish()
        publisher.publish(_gaps_topic("seal-q"), b"not a statement", qos=1).wait_for_publish()
        _wait(lambda: _count(dsn, "SELECT count(*) FROM rejections") == 1, "the garbage refused")
        _wait(lambda: _count(dsn, "SELECT count(*) FROM gap_statements") == 1, "the statement")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        service.stop()
        store.close()
    # Both copies were handled before the garbage (one subscription, in order): still one row.
    assert _count(dsn, "SELECT count(*) FROM gap_statements") == 1
    assert _count(dsn, "SELECT count(*) FROM gap_statements WHERE stored_by = 'fleet-g'") == 1
