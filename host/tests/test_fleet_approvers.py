"""Fleet approver keys (SPEC §11.7) end to end: a real PostgreSQL, a real Mosquitto, real
gateways. `sealink fleet approvers add` issues an approver whose requests a gateway then
accepts; `revoke` has them refused on every gateway, and an operator cannot make it active
again. Forged, rolled-back, misdirected, substituted and re-activating messages are refused
with their reason and change nothing, across a gateway's restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cbor2
import psycopg
import pytest
from conftest import GatewayFiles, gateway_toml, run, sealink, until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fleet_rig import (
    _WAIT_S,
    PREFIX,
    Alarms,
    _files,
    _fleet,
    _gateway,
    _publisher,
    _vector_key,
    _wait,
)
from sealink.approvals import (
    ACTIONS,
    ApprovalClient,
    ApproverEntry,
    ApproverKey,
    approver_topic,
    build_approver,
    open_approver,
)
from sealink.crypto.signer import GatewayKey
from sealink.fleet import FleetService, Store, load_config
from sealink.gateway.service import Gateway
from sealink.ledger.fleetapprovers import FleetApproverUpdate
from sealink.ledger.schema import SCHEMA_VERSION
from sealink.mqtt.registry import RegistryRefused
from sealink.mqtt.signed import envelope
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.postgres import PostgresCluster

SEAL = "seal-p"


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as pg:
        yield pg


@contextlib.asynccontextmanager
async def _approver(gateway: Gateway, key: ApproverKey, name: str) -> AsyncIterator[ApprovalClient]:
    async with ApprovalClient(
        gateway.config.mqtt, key, name, PREFIX, gateway.gateway_id, gateway.key.public_raw()
    ) as client:
        await client.wait_connected(_WAIT_S)
        await gateway.approvals.ready(_WAIT_S)
        yield client


async def _asked(client: ApprovalClient, action: str, **fields: Any) -> dict[str, Any]:
    """The gateway's first answer to one request: `queued` (accepted) or `refused`."""
    request = await client.request(action, SEAL, **fields)
    return await client.wait(request, {"queued", "refused", "done"}, _WAIT_S)


def _window() -> dict[str, int]:
    now = int(time.time())
    return {"count": 1, "not_before_s": now - 60, "not_after_s": now + 3600}


def _taken(gateway: Gateway, done: str, n: int = 1) -> Any:
    return lambda: gateway.fleet.approvers_taken[done] >= n


def test_an_approver_the_fleet_issues_is_accepted_and_once_revoked_refused_for_good(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    files = _files(tmp_path, "gw-p", {SEAL: os.urandom(32)})
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (files,))
    erp = ApproverKey.generate()

    def cli(*args: str) -> dict[str, Any]:
        done = sealink("fleet", "approvers", *args, "--config", str(config), "--by", "alice")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    issued = cli("add", "erp", "--public-key", erp.public_raw().hex(), "--actions",
                 "permit,bundle", "--reason", "ERP go-live")  # fmt: skip
    assert issued["published"] is True and issued["topic"] == approver_topic(PREFIX, "erp")

    async def body() -> None:
        async with _gateway(files, broker.port, fleet_key, ()) as (gw, _sims):
            await until(_taken(gw, "added"), _WAIT_S, "the fleet's approver added")
            async with _approver(gw, erp, "erp") as client:
                accepted = await _asked(client, "permit", **_window())
                assert accepted["state"] == "queued", accepted
                # Only the actions the fleet issued it for.
                refused = await _asked(client, "release", note="not mine to release")
                assert (refused["state"], refused["reason"]) == ("refused", "not_allowed")
                revoked = await asyncio.to_thread(cli, "revoke", "erp", "--reason", "key lost")
                assert revoked["seq"] > issued["seq"] and revoked["published"] is True
                await until(_taken(gw, "revoked"), _WAIT_S, "the fleet's revocation taken")
                refused = await _asked(client, "permit", **_window())
                assert (refused["state"], refused["reason"]) == ("refused", "unknown_approver")

    run(body(), timeout=90)
    again = sealink("fleet", "approvers", "add", "erp", "--public-key", erp.public_raw().hex(),
                    "--reason", "again", "--config", str(config))  # fmt: skip
    assert again.returncode == 2 and "already revoked" in again.stderr, again.stderr
    # The gateway's operator cannot make the fleet's revoked approver active again.
    local = sealink("approvers", "add", "erp", "--public-key", erp.public_raw().hex(),
                    "--config", str(gateway_toml(files, broker.port)))  # fmt: skip
    assert local.returncode != 0 and "revoked by the fleet" in local.stderr, local.stderr
    assert "Traceback" not in local.stderr
    listed = sealink("fleet", "approvers", "list", "--json", "--config", str(config))
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["approver"], r["state"], r["actions"], r["published"]) for r in rows] == [
        ("erp", "revoked", ["permit", "bundle"], True)
    ]
    shown = sealink("fleet", "alarms", "--json", "--config", str(config))
    said = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(a["reason"], a["detail"]["approver"], a["detail"]["by"]) for a in said] == [
        ("approver_issued", "erp", "alice"),
        ("approver_revoked", "erp", "alice"),
    ]
    with psycopg.connect(dsn) as conn:
        history = conn.execute(
            "SELECT name, state, reason, by_whom FROM approver_states ORDER BY id"
        ).fetchall()
    assert history == [
        ("erp", "active", "ERP go-live", "alice"),
        ("erp", "revoked", "key lost", "alice"),
    ]


def test_an_approver_issued_while_the_broker_is_away_is_published_by_fleet_run(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    files = _files(tmp_path, "gw-q", {SEAL: os.urandom(32)})
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (files,))
    with socket.socket() as closed:  # a port nobody listens on: the broker is "away"
        closed.bind(("127.0.0.1", 0))
        away = write_fleet_config(
            tmp_path / "away.toml", database=dsn, instance="fleet-1",
            port=closed.getsockname()[1], prefix=PREFIX, gateways={}, registry_refresh_s=1,
        )  # fmt: skip
    erp = ApproverKey.generate()
    add = sealink("fleet", "approvers", "add", "late-erp", "--public-key", erp.public_raw().hex(),
                  "--reason", "issued offline", "--config", str(away))  # fmt: skip
    assert add.returncode == 0 and "fleet run` publishes it" in add.stderr, add.stderr
    assert json.loads(add.stdout)["published"] is False
    store = Store(dsn, instance="fleet-1")
    fleet_config = dataclasses.replace(load_config(config), registry_refresh_s=1)

    async def body() -> None:
        async with _gateway(files, broker.port, fleet_key, ()) as (gw, _sims):
            service = FleetService(fleet_config, store).start()
            try:
                await until(_taken(gw, "added"), _WAIT_S, "the approver published late")
            finally:
                await asyncio.to_thread(service.stop)
            async with _approver(gw, erp, "late-erp") as client:
                accepted = await _asked(client, "permit", **_window())
                assert accepted["state"] == "queued", accepted

    try:
        run(body(), timeout=60)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT published FROM approvers").fetchall() == [(True,)]
    finally:
        store.close()


# Refusals, without a fleet: the test signs approver messages itself with a fleet key.


def test_forged_rolled_back_misdirected_substituted_and_reactivating_messages_change_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    files = _files(tmp_path, "gw-r", {SEAL: os.urandom(32)})
    fleet, forger = GatewayKey.generate(), GatewayKey.generate()
    erp, local, other = ApproverKey.generate(), ApproverKey.generate(), ApproverKey.generate()
    ledger = files.ledger()
    try:  # the operator's own approver, registered before the fleet says anything of it
        ledger.add_approver("local", local.public_raw(), ("bundle",))
    finally:
        ledger.close()
    publisher = _publisher(broker.port)
    alarms = Alarms(broker.port, {"gw-r": files.key})
    sent: dict[tuple[str, int], bytes] = {}

    def message(key: GatewayKey, name: str, state: str, seq: int, **changed: Any) -> bytes:
        public = (local if name == "local" else erp).public_raw()
        entry = ApproverEntry("fleet", name, state, public, ("permit",), "test", seq, seq, seq)
        payload = build_approver(key, PREFIX, dataclasses.replace(entry, **changed))
        sent[(name, seq)] = payload
        return payload

    def put(name: str, payload: bytes) -> None:
        topic = approver_topic(PREFIX, name)
        publisher.publish(topic, payload, qos=1, retain=True).wait_for_publish(_WAIT_S)

    def held(name: str) -> tuple[bytes, str, bool] | None:
        with contextlib.closing(sqlite3.connect(files.ledger_path)) as db:
            row = db.execute(
                "SELECT public_key, actions, revoked_ms FROM approvers WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (bytes(row[0]), str(row[1]), row[2] is not None)

    async def refused(gateway: Gateway, reason: str, n: int = 1) -> None:
        await until(lambda: sum(r.reason == reason for r in gateway.fleet.refused) >= n,
                    _WAIT_S, f"an approver message refused for {reason}")  # fmt: skip

    async def first_run() -> None:
        async with _gateway(files, broker.port, fleet.public_raw(), ()) as (gw, _sims):
            put("erp", message(fleet, "erp", "active", 100))
            await until(_taken(gw, "added"), _WAIT_S, "erp added")
            assert held("erp") == (erp.public_raw(), "permit", False)
            put("erp", message(forger, "erp", "revoked", 200))
            await refused(gw, "bad_signature")
            put("erp", message(fleet, "erp", "revoked", 50))  # older than the floor
            await refused(gw, "rollback")
            put("other", message(fleet, "erp", "revoked", 300))  # erp's, on other's topic
            await refused(gw, "wrong_topic")
            put("erp", message(fleet, "erp", "revoked", 310, actions=("fly",)))
            await refused(gw, "invalid")
            assert held("erp") == (erp.public_raw(), "permit", False)
            # The operator's approver: another key is refused, the same one is adopted.
            put("local", message(fleet, "local", "active", 10, public_key=other.public_raw()))
            await refused(gw, "key_substitution")
            assert held("local") == (local.public_raw(), "bundle", False)
            put("local", message(fleet, "local", "active", 20))
            await until(_taken(gw, "adopted"), _WAIT_S, "local adopted")
            assert held("local") == (local.public_raw(), "permit", False)
            put("erp", message(fleet, "erp", "revoked", 400))
            await until(_taken(gw, "revoked"), _WAIT_S, "erp revoked")
            put("erp", message(fleet, "erp", "active", 500))
            await refused(gw, "revoked_for_good")
            assert held("erp") == (erp.public_raw(), "permit", True)
            # A name the fleet revoked before this gateway held it is registered revoked.
            put("gone", message(fleet, "gone", "revoked", 600))
            await until(_taken(gw, "revoked", 2), _WAIT_S, "gone registered revoked")
            assert held("gone") == (erp.public_raw(), "permit", True)

    async def second_run() -> None:
        async with _gateway(files, broker.port, fleet.public_raw(), ()) as (gw, _sims):
            # The floor survived the restart: the retained re-activation is refused again.
            await refused(gw, "revoked_for_good")
            put("erp", message(fleet, "erp", "revoked", 399))
            await refused(gw, "rollback")
            # The same bytes again (local's and gone's retained at the connection, then gone's
            # put once more): nothing, and no refusal besides the three retained or put here.
            put("gone", sent[("gone", 600)])
            await until(_taken(gw, "same", 3), _WAIT_S, "the same bytes taken again")
            assert held("erp") == (erp.public_raw(), "permit", True)
            reasons = {r.reason for r in gw.fleet.refused}
            assert reasons == {"revoked_for_good", "wrong_topic", "rollback"}, reasons

    try:
        run(first_run(), timeout=60)
        run(second_run(), timeout=60)
        want = {"bad_signature", "rollback", "wrong_topic", "invalid", "key_substitution",
                "revoked_for_good"}  # fmt: skip
        _wait(lambda: {a[2]["refusal"] for a in alarms.having(reason="fleet_registry_refused")}
              >= want, "an alarm for each refusal")  # fmt: skip
        for _, topic, alarm in alarms.having(reason="fleet_registry_refused"):
            assert topic == f"{PREFIX}/gateway/gw-r/alarms"
            assert str(alarm["topic"]).startswith(f"{PREFIX}/fleet/approvers/")
    finally:
        alarms.close()
        publisher.disconnect()
        publisher.loop_stop()
    with contextlib.closing(sqlite3.connect(files.ledger_path)) as db:
        audit = db.execute(
            "SELECT approver, action, operator, note FROM approver_actions ORDER BY id"
        ).fetchall()
    assert audit == [
        ("erp", "added", "fleet", "test"),
        ("local", "adopted", "fleet", "test"),
        ("erp", "revoked", "fleet", "test"),
        ("gone", "revoked", "fleet", "test"),
    ]


def test_a_ledger_of_schema_12_gains_the_fleet_floor_and_keeps_its_approvers(
    files: GatewayFiles,
) -> None:
    erp = ApproverKey.generate()
    with contextlib.closing(files.ledger()) as ledger:
        ledger.add_approver("erp", erp.public_raw(), ACTIONS)
    with contextlib.closing(sqlite3.connect(files.ledger_path, isolation_level=None)) as db:
        # As schema 12 was: no fleet approvers.
        db.executescript(
            """
            BEGIN;
            DROP TABLE fleet_approvers;
            DROP TABLE approver_actions;
            UPDATE meta SET value = '12' WHERE key = 'schema';
            COMMIT;
            """
        )
    update = FleetApproverUpdate("erp", 7, "revoked", erp.public_raw(), ACTIONS, "lost", b"m")
    with contextlib.closing(files.ledger()) as ledger:
        assert [a.name for a in ledger.approvers() if a.revoked_ms is None] == ["erp"]
        assert ledger.fleet_approver_floor("erp") is None
        assert ledger.apply_fleet_approver(update) == "revoked"
        assert ledger.fleet_approver_floor("erp") == (7, b"m")
    with contextlib.closing(sqlite3.connect(files.ledger_path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )


# The wire, sans-IO: protocol/vectors/approvers.json is made here.

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "approvers.json"
_V_SEQ = 1_767_225_600_000_000
_V_TOPIC = "sealink/fleet/approvers/erp-0001"


def _v_body(entry: ApproverEntry) -> dict[str, Any]:
    """The body as SPEC §11.7 writes it, from the text (not from `build_approver`)."""
    return {
        "name": entry.name,
        "state": entry.state,
        "reason": entry.reason,
        "public_key": entry.public_key.hex(),
        "actions": list(entry.actions),
        "since_ms": entry.since_ms,
    }


def _vectors() -> dict[str, Any]:
    key, other = _vector_key("registry fleet key"), _vector_key("registry other key")
    approver = _vector_key("approver erp-0001").public_raw()
    issued = ApproverEntry("fleet", "erp-0001", "active", approver, ("permit", "bundle"),
                           "ERP go-live", _V_SEQ // 1000, _V_SEQ, _V_SEQ // 1000)  # fmt: skip
    payload = build_approver(key, "sealink", issued)
    revoked = dataclasses.replace(issued, state="revoked", reason="key lost", seq=_V_SEQ + 1)
    forgeries = [
        ("signed by another key", _V_TOPIC, build_approver(other, "sealink", issued),
         "bad_signature"),
        ("a field changed after signing", _V_TOPIC,
         payload.replace(b'"active"', b'"revoke"'), "bad_signature"),
        ("put on another approver's topic", "sealink/fleet/approvers/erp-0002", payload,
         "wrong_topic"),
        ("a public key that is not 32 bytes", _V_TOPIC,
         build_approver(key, "sealink", dataclasses.replace(issued, public_key=approver[:31])),
         "invalid"),
        ("an action that is not one", _V_TOPIC,
         build_approver(key, "sealink", dataclasses.replace(issued, actions=("permit", "fly"))),
         "invalid"),
        ("no actions", _V_TOPIC,
         build_approver(key, "sealink", dataclasses.replace(issued, actions=())), "invalid"),
        ("a state that is not one", _V_TOPIC,
         build_approver(key, "sealink", dataclasses.replace(issued, state="lost")), "invalid"),
        ("a body without since_ms", _V_TOPIC,
         key.sign1(envelope("fleet", "fleet", _V_TOPIC, json.dumps(
             {k: v for k, v in _v_body(issued).items() if k != "since_ms"}).encode(), _V_SEQ,
             _V_SEQ // 1000)), "invalid"),
    ]  # fmt: skip
    return {
        "about": "SPEC \u00a711.7: the fleet's issue of approver erp-0001 (fleet key: Ed25519 "
        "seed SHA-256('sealink vectors/registry fleet key'), as registry.json), its revocation, "
        "and forgeries, each with the refusal a gateway gives it; rollback, key_substitution "
        "and revoked_for_good need the gateway's ledger (tested in "
        "host/tests/test_fleet_approvers.py). Regenerate with SEALINK_WRITE_VECTORS=1 pytest "
        "host/tests/test_fleet_approvers.py",
        "fleet_public_key": key.public_raw().hex(),
        "kid": key.kid.hex(),
        "topic": _V_TOPIC,
        "issued": {"payload": payload.hex(), "body": _v_body(issued), "seq": issued.seq},
        "revoked": {
            "payload": build_approver(key, "sealink", revoked).hex(),
            "body": _v_body(revoked),
            "seq": revoked.seq,
        },
        "forgeries": [
            {"name": name, "topic": t, "payload": p.hex(), "refused": reason}
            for name, t, p, reason in forgeries
        ],
    }


def test_vector_file_is_current_and_each_forgery_gets_its_refusal() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, "regenerate: SEALINK_WRITE_VECTORS=1 pytest " + __file__
    key = bytes.fromhex(vectors["fleet_public_key"])
    for said in (vectors["issued"], vectors["revoked"]):
        payload = bytes.fromhex(said["payload"])
        opened = open_approver(payload, vectors["topic"], key, "sealink")
        body = said["body"]
        assert (opened.name, opened.state, opened.public_key.hex(), list(opened.actions),
                opened.reason, opened.seq) == (body["name"], body["state"], body["public_key"],
                body["actions"], body["reason"], said["seq"])  # fmt: skip
        # By hand, from the text: the Sig_structure, the kid, the signed map and its body.
        protected, _, signed, signature = cbor2.loads(payload).value
        Ed25519PublicKey.from_public_bytes(key).verify(
            signature, cbor2.dumps(["Signature1", protected, b"", signed])
        )
        assert cbor2.loads(protected) == {1: -8, 4: bytes.fromhex(vectors["kid"])}
        fields = cbor2.loads(signed)
        assert sorted(fields) == ["body", "fleet", "seq", "time_ms", "topic"]
        assert json.loads(fields["body"]) == body and fields["topic"] == vectors["topic"]
    for case in vectors["forgeries"]:
        with pytest.raises(RegistryRefused) as refused:
            open_approver(bytes.fromhex(case["payload"]), case["topic"], key, "sealink")
        assert refused.value.reason == case["refused"], case["name"]
    assert set(ACTIONS) >= set(vectors["issued"]["body"]["actions"])
