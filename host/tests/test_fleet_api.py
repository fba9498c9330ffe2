"""`sealink fleet serve` against a real PostgreSQL, served by real uvicorn on a loopback port
and asked over real HTTP (urllib): keyset paging by device, organisation, permit and time (no
row twice, none missed), bearer tokens (none, wrong, revoked: 401), organisations imported.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import sealink
from fleet_rig import (
    _START_S,
    PREFIX,
    Api,
    _count,
    _permit_result,
    _publisher,
    _rig,
    _served,
    _token,
    _topic,
    _wait,
)
from sealink.fleet import FleetService, Store, load_config
from sealink.mqtt.signed import MessageSigner
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.postgres import PostgresCluster


@pytest.fixture
def api(cluster: PostgresCluster, tmp_path: Path) -> Iterator[Api]:
    seals = [SimSeal(f"seal-{i}") for i in range(4)]
    rig = _rig(cluster, tmp_path, seals)  # keys known to its service; the CLI re-imports them
    # coop-a by the --org flag for all four; then seal-3's own row says coop-b (a re-import
    # of the same key is no conflict).
    every, own = tmp_path / "keys.jsonl", tmp_path / "seal-3.jsonl"
    rows = [{"device": s.device, "seal_key": s.chip.public.hex()} for s in seals]
    every.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own.write_text(json.dumps({**rows[3], "org": "coop-b"}) + "\n")
    for args in ([str(every), "--org", "coop-a"], [str(own)]):
        done = sealink("fleet", "devices", "import", *args, "--config", str(rig.config_path))
        assert done.returncode == 0, done.stderr
    messages = []
    for i, seal in enumerate(seals):
        for counter in range(1, 16):
            _, event = seal.next_event(permit=100 + counter % 3)
            received_ms = 1_000_000 + counter * 1000 + i
            cose = rig.gateways[i % 2].countersign(seal.device, counter, event, received_ms)
            messages.append((_topic(seal.device), cose))
    assert rig.write(messages).stored == 60
    try:
        with _served(rig) as served:
            yield served
    finally:
        rig.store.close()


_BY_SEAL, _BY_TIME = "device, counter", "received_ms, device, counter"


@pytest.mark.parametrize(
    ("query", "where", "params", "order"),
    [
        ({"device": "seal-2"}, "device = %s", ("seal-2",), _BY_SEAL),
        ({"org": "coop-a"}, "device IN (SELECT id FROM devices WHERE org = %s)", ("coop-a",),
         _BY_SEAL),
        ({"org": "coop-b"}, "device IN (SELECT id FROM devices WHERE org = %s)", ("coop-b",),
         _BY_SEAL),
        ({"permit": 101}, "permit = %s", (101,), _BY_SEAL),
        ({"since_ms": 1_004_000, "until_ms": 1_009_002},
         "received_ms >= %s AND received_ms < %s", (1_004_000, 1_009_002), _BY_TIME),
        ({"until_ms": 1_009_002}, "received_ms < %s", (1_009_002,), _BY_TIME),
        ({"org": "coop-a", "permit": 102, "since_ms": 1_003_000},
         "device IN (SELECT id FROM devices WHERE org = 'coop-a') AND permit = %s "
         "AND received_ms >= %s", (102, 1_003_000), _BY_SEAL),
        ({}, "true", (), _BY_SEAL),
    ],
)  # fmt: skip
def test_records_are_paged_by_key_with_no_row_twice_and_none_missed(
    api: Api, query: dict[str, Any], where: str, params: tuple[Any, ...], order: str
) -> None:
    expected = [
        (str(d), int(c))
        for d, c in api.rig.rows(
            f"SELECT device, counter FROM records WHERE {where} ORDER BY {order}", *params
        )
    ]
    assert expected  # each filter selects something, and not everything but the last
    keys, pages = api.all_records(7, **query)
    assert keys == expected
    assert pages == len(expected) // 7 + 1
    whole, one_page = api.all_records(1000, **query)
    assert (whole, one_page) == (expected, 1)


def test_records_by_time_alone_come_in_the_order_received_each_once(
    cluster: PostgresCluster,
    tmp_path: Path,
    seed: int,
) -> None:
    rng = random.Random(seed)
    seals = [SimSeal(f"seal-{i}") for i in range(6)]
    rig = _rig(cluster, tmp_path, seals)
    messages, clocks = [], dict.fromkeys(range(len(seals)), 1_000_000)
    for _ in range(40):  # the seals interleaved, several received in one millisecond
        for i in rng.sample(range(len(seals)), len(seals)):
            counter, event = seals[i].next_event()
            clocks[i] += rng.choice((0, 1, 1, 2))
            cose = rig.gateways[i % 2].countersign(seals[i].device, counter, event, clocks[i])
            messages.append((_topic(seals[i].device), cose))
    try:
        assert rig.write(messages).stored == 240
        with psycopg.connect(rig.dsn) as conn:  # the planner's statistics of the rows above
            conn.execute("ANALYZE records")
        since, until = 1_000_010, 1_000_060
        expected = [
            (str(d), int(c))
            for d, c in rig.rows(
                f"SELECT device, counter FROM records WHERE received_ms >= %s "
                f"AND received_ms < %s ORDER BY {_BY_TIME}",
                since, until,
            )
        ]  # fmt: skip
        assert len(expected) > 20 and len(set(expected)) == len(expected)
        with _served(rig) as api:
            keys, pages = api.all_records(3, since_ms=since, until_ms=until)
            assert keys == expected
            assert pages == -(-len(expected) // 3)  # a full last page says it is the last
            # A by-time cursor is no by-seal one: refused, never misread.
            _, first = api.get("/v1/records", api.token, limit=1, since_ms=since)
            status, _ = api.get("/v1/records", api.token, device="seal-1", next=first["next"])
            assert status == 400
        # A page deep in the ledger is a walk of the index from the cursor, not a sort.
        plan = rig.rows(
            "EXPLAIN SELECT * FROM records r WHERE r.received_ms >= %s "
            "AND (r.received_ms, r.device, r.counter) > (%s, %s, %s) "
            "ORDER BY r.received_ms, r.device, r.counter LIMIT 4",
            since, since + 20, "seal-3", 5,
        )  # fmt: skip
        text = "\n".join(row[0] for row in plan)
        assert "Index Scan using records_received_key" in text and "Sort" not in text, text
    finally:
        rig.store.close()


def test_a_record_carries_its_cose_and_fields(api: Api) -> None:
    status, body = api.get("/v1/records", api.token, device="seal-1", limit=1)
    assert status == 200
    (record,) = body["items"]
    held = api.rig.rows(
        "SELECT encode(cose, 'base64'), encode(record_hash, 'hex'), permit, received_ms "
        "FROM records WHERE device = 'seal-1' AND counter = 1"
    )
    cose, digest, permit, received_ms = held[0]
    assert record["cose"] == cose.replace("\n", "")
    assert (record["record_sha256"], record["permit"], record["received_ms"]) == (
        digest, permit, received_ms,
    )  # fmt: skip
    assert (record["seal_verified"], record["chain_ok"], record["gateway"]) == (True, True, "gw-2")


def test_a_device_is_summarised_with_its_org_and_counter_range(api: Api) -> None:
    status, body = api.get("/v1/devices/seal-3", api.token)
    assert status == 200
    assert (body["org"], body["state"], body["first_counter"], body["last_counter"]) == (
        "coop-b", "active", 1, 15,
    )  # fmt: skip
    assert (body["records"], body["forks"], body["gaps"]) == (15, 0, [])
    assert api.get("/v1/devices/nobody", api.token)[0] == 404


def test_without_a_valid_token_every_path_is_401_and_a_revoked_token_is_refused(
    api: Api,
) -> None:
    for path in ("/v1/records", "/v1/devices/seal-1", "/v1/alarms", "/v1/nothing", "/"):
        assert api.get(path) == (401, {"error": "unauthorized"})
        assert api.get(path, "not-a-token") == (401, {"error": "unauthorized"})
    other = _token(api.rig, "audit")
    assert api.get("/v1/records", other, limit=1)[0] == 200
    config = str(api.rig.config_path)
    revoked = sealink("fleet", "tokens", "revoke", "audit", "--config", config)
    assert revoked.returncode == 0, revoked.stderr
    assert api.get("/v1/records", other, limit=1) == (401, {"error": "unauthorized"})
    assert api.get("/v1/records", api.token, limit=1)[0] == 200  # the other token still serves
    listed = sealink("fleet", "tokens", "list", "--config", config)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["revoked_ms"] is None) for r in rows] == [
        ("audit", False), ("credit", True),
    ]  # fmt: skip
    assert api.token not in listed.stdout and other not in listed.stdout
    stored = api.rig.rows("SELECT encode(token_sha256, 'hex') FROM api_tokens")
    assert all(api.token not in row[0] for row in stored)


def test_bad_paging_arguments_are_400_not_a_traceback(api: Api) -> None:
    for query in ({"limit": 1001}, {"limit": 0}, {"permit": "x"}, {"next": "garbage"}):
        status, body = api.get("/v1/records", api.token, **query)
        assert status == 400 and body["error"], (query, body)


def test_alarms_are_paged_by_id(api: Api) -> None:
    for n in range(5):
        api.rig.rows(
            "INSERT INTO alarms (time_ms, source, device, reason, detail, dedupe) "
            "VALUES (%s, 'fleet', %s, 'chain_break', '{}', %s) RETURNING id",
            1000 + n, f"seal-{n % 2}", f"t{n}",
        )  # fmt: skip
    expected = [r[0] for r in api.rig.rows("SELECT id FROM alarms WHERE device = 'seal-0' "
                                           "AND time_ms >= 1001 ORDER BY id")]  # fmt: skip
    assert len(expected) == 2
    seen, cursor = [], None
    while True:
        extra = {} if cursor is None else {"next": cursor}
        status, body = api.get("/v1/alarms", api.token, device="seal-0", since_ms=1001, limit=1,
                               **extra)  # fmt: skip
        assert status == 200, body
        seen += [a["id"] for a in body["items"]]
        if (cursor := body["next"]) is None:
            break
    assert seen == expected


def test_without_an_approver_a_bundle_not_kept_is_503_and_no_record_is_404(api: Api) -> None:
    status, body = api.get("/v1/records/seal-1/3/bundle", api.token)
    assert status == 503 and "[serve] approver" in body["error"], body
    for path in ("/v1/records/seal-1/16/bundle", f"/v1/records/seal-1/{2**64}/bundle"):
        assert api.get(path, api.token) == (404, {"error": "no such record"}), path
    assert api.get("/v1/records/seal-1/x/bundle", api.token)[0] == 404  # no such path


def test_a_bad_listen_address_is_a_clear_error(api: Api) -> None:
    done = sealink("fleet", "serve", "--config", str(api.rig.config_path), "--listen", "nowhere")
    assert done.returncode != 0
    assert "HOST:PORT" in done.stderr and "Traceback" not in done.stderr


def _result(api: Api, gateway: int, device: str, permit: int, document: str, state: str) -> Any:
    gw = api.rig.gateways[gateway]
    return _permit_result(gw.key, gw.id, device, permit, document, state)


def test_permit_results_name_the_document_and_records_are_found_by_it(api: Api) -> None:
    doc_a, doc_b, other = "aa" * 32, "bb" * 32, "cc" * 32
    queued = _result(api, 0, "seal-0", 101, doc_a, "queued")
    delivered = _result(api, 0, "seal-0", 101, doc_a, "delivered")
    # seal-2 holds its records from gw-1 too (i % 2): its permit 102 is for doc_b
    results = [
        queued,
        queued,
        delivered,
        delivered,
        _result(api, 0, "seal-2", 102, doc_b, "queued"),
    ]
    api.rig.write(results)
    held = api.rig.rows("SELECT device, permit, document_sha256, states FROM permits ORDER BY 1")
    assert held == [("seal-0", 101, doc_a, ["queued", "delivered"]),
                    ("seal-2", 102, doc_b, ["queued"])]  # fmt: skip
    # Another document for a held permit: an alarm, the document held stays.
    api.rig.write([_result(api, 0, "seal-0", 101, other, "queued")] * 2)
    assert api.rig.rows("SELECT document_sha256 FROM permits WHERE device = 'seal-0'") == [(doc_a,)]
    alarms = api.rig.rows("SELECT device, reason, detail->>'held_sha256' FROM alarms")
    assert alarms == [("seal-0", "permit_document_mismatch", doc_a)]
    # A result signed by gw-1 on gw-2's result topic is refused, not learned.
    gw1 = api.rig.gateways[0]
    topic = f"{PREFIX}/cmd/gw-2/result/approver-1"
    forged = MessageSigner(gw1.key, gw1.id).sign(
        topic, {"action": "permit", "device": "seal-1", "permit": 101, "state": "queued",
                "document_sha256": other},
    )  # fmt: skip
    api.rig.write([(topic, forged)])
    assert api.rig.rows("SELECT count(*) FROM permits WHERE device = 'seal-1'") == [(0,)]
    assert api.rig.rows("SELECT reason FROM rejections") == [("WrongGateway",)]

    expected = api.rig.rows(
        "SELECT device, counter FROM records WHERE device = 'seal-0' AND permit = 101 "
        "ORDER BY counter"
    )
    keys, pages = api.all_records(2, document_sha256=doc_a.upper())
    assert keys == [(str(d), int(c)) for d, c in expected] and pages == 3
    status, body = api.get("/v1/permits", api.token, limit=1)
    assert status == 200 and [p["device"] for p in body["items"]] == ["seal-0"]
    status, body = api.get("/v1/permits", api.token, limit=1, next=body["next"])
    assert [(p["device"], p["document_sha256"]) for p in body["items"]] == [("seal-2", doc_b)]
    assert body["next"] is None
    status, body = api.get("/v1/permits", api.token, document_sha256=doc_b)
    assert [p["permit"] for p in body["items"]] == [102]


def test_fleet_run_learns_a_permit_from_a_result_published_on_mqtt(
    cluster: PostgresCluster,
    tmp_path: Path,
    broker: Mosquitto,
) -> None:
    gateway = SimGateway("gw-1")
    pem = gateway.write_public_key(tmp_path / "gw-1.pem")
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-p", port=broker.port,
        prefix=PREFIX, gateways={"gw-1": pem},
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    store = Store(dsn, instance="fleet-p")
    service = FleetService(load_config(config), store).start()
    publisher = _publisher(broker.port)
    topic = f"{PREFIX}/cmd/gw-1/result/approver-1/permits"  # a response topic below it
    body = {"action": "permit", "device": "seal-m", "permit": 7, "state": "delivered",
            "document_sha256": "dd" * 32, "requested_by": "clerk", "count": 2}  # fmt: skip
    try:
        assert service.connected.wait(_START_S)
        signed = MessageSigner(gateway.key, "gw-1").sign(topic, body)
        publisher.publish(topic, signed, qos=1).wait_for_publish()
        held = "SELECT count(*) FROM permits"
        _wait(lambda: _count(dsn, held) == 1, "the permit learned")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        service.stop()
        store.close()
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT device, permit, document_sha256, approver, requested_by, count, states "
            "FROM permits"
        ).fetchone()
    assert row == ("seal-m", 7, "dd" * 32, "approver-1", "clerk", 2, ["delivered"])
