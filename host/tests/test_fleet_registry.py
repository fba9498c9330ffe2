"""The fleet registry (SPEC §11.6) end to end: a real PostgreSQL, a real Mosquitto, real
gateways with simulated seals. `sealink fleet devices revoke` disables a seal on every gateway
(not acknowledged, alarmed, signed); `reinstate` lifts it. Forged, rolled-back, misdirected and
key-substituting registry messages are refused with their reason and change nothing, across a
gateway's restart too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import psycopg
import pytest
from conftest import DEVICE, GatewayFiles, gateway_toml, run, sealink, until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fleet_rig import (
    _WAIT_S,
    PREFIX,
    Alarms,
    _acked,
    _carry,
    _count,
    _files,
    _fleet,
    _gateway,
    _held,
    _publisher,
    _quarantine,
    _vector_key,
    _wait,
)
from sealink.cli.events import export_rows
from sealink.config import parse_config
from sealink.crypto.enrolment import Certificate, certify
from sealink.crypto.p256 import P256Key
from sealink.crypto.sealkey import SealKey
from sealink.crypto.signer import GatewayKey
from sealink.errors import ConfigError, DeviceError, FleetError, KeyFileError
from sealink.fleet import (
    Batch,
    FleetConfig,
    FleetService,
    RegistryChange,
    Store,
    change_state,
    enrolling,
    enrolling_if_authority,
    load_config,
)
from sealink.fleet import move as fleet_move
from sealink.gateway.checks import event_fault
from sealink.gateway.registry import DeviceRegistry
from sealink.gateway.service import Gateway
from sealink.ledger import AHEAD_OF_LEDGER, DeviceUpdate, EventRow
from sealink.ledger import Batch as LedgerBatch
from sealink.ledger.fleetreg import Standing, placement_steps
from sealink.ledger.schema import SCHEMA_VERSION
from sealink.mqtt.registry import (
    Placement,
    RegistryEntry,
    RegistryRefused,
    build_entry,
    open_entry,
    registry_topic,
)
from sealink.mqtt.signed import envelope
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import SimGateway, SimSeal, write_fleet_config
from sealink_sim.pipe import pipe_pair
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip, SimDevice, make_event
from sealink_verify import verify_export
from sealproto import auth, messages
from sealproto.messages import K_TYPE


async def _not_acked(gateway: Gateway, sim: SimDevice) -> None:
    """A stamp the gateway refuses as a quarantined seal's (counted), and never acks."""
    before = gateway.metrics.rejected["quarantined_event"]
    acked = sim.acked
    await sim.stamp(1)
    await until(
        lambda: gateway.metrics.rejected["quarantined_event"] > before,
        _WAIT_S,
        "the quarantined seal's stamp refused",
    )
    assert sim.acked == acked


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with PostgresCluster() as pg:
        yield pg


def test_a_revoked_seal_is_quarantined_on_every_gateway_and_reinstated(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    seals = {"seal-x": os.urandom(32), "seal-y": os.urandom(32)}
    # Both gateways know both seals (a seal may turn up at either); x is on A, y on B.
    gw_a, gw_b = _files(tmp_path, "gw-a", seals), _files(tmp_path, "gw-b", seals)
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (gw_a, gw_b))
    assert stat.S_IMODE((tmp_path / "fleet.key").stat().st_mode) == 0o600
    again = sealink("fleet", "keys", "init", "--config", str(config))
    assert again.returncode == 2 and again.stderr.startswith("sealink: error:"), again.stderr
    registry = tmp_path / "seals.jsonl"
    registry.write_text("".join(
        json.dumps({"device": d, "seal_key": SimChip.of(k).public.hex()}) + "\n"
        for d, k in seals.items()
    ))  # fmt: skip
    assert sealink("fleet", "devices", "import", str(registry), "-c", str(config)).returncode == 0
    alarms = Alarms(broker.port, {"gw-a": gw_a.key, "gw-b": gw_b.key})

    def cli(*args: str) -> dict[str, object]:
        done = sealink("fleet", "devices", *args, "--config", str(config), "--by", "alice")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    async def body() -> None:
        async with (
            _gateway(gw_a, broker.port, fleet_key, ("seal-x",)) as (a, sims_a),
            _gateway(gw_b, broker.port, fleet_key, ("seal-y",)) as (b, sims_b),
        ):
            x, y = sims_a["seal-x"], sims_b["seal-y"]
            await _acked(x)
            await _acked(y)
            out = await asyncio.to_thread(cli, "revoke", "seal-x", "--reason", "stolen")
            assert out["published"] is True
            seqs = [out["seq"]]
            for gw in (a, b):
                await until(_held(gw, "seal-x", "revoked_by_fleet"), _WAIT_S,
                            f"{gw.gateway_id} quarantines seal-x")  # fmt: skip
            now_s = int(time.time())
            await a.issue_permit("seal-x", 1, now_s - 60, now_s + 3600)
            await _not_acked(a, x)  # a round trip: the permit would have gone by now
            assert not [c for c in x.commands if c[K_TYPE] == messages.PERMIT], "permit sent"
            await _acked(y)  # the other seal is unaffected
            assert _quarantine(b, "seal-y") is None
            await asyncio.to_thread(
                _wait,
                lambda: (
                    {g for g, _, _ in alarms.having(reason="revoked_by_fleet")} == {"gw-a", "gw-b"}
                ),
                "a signed revoked_by_fleet alarm from each gateway",
            )
            for _, topic, alarm in alarms.having(reason="revoked_by_fleet"):
                assert topic == f"{PREFIX}/seal-x/alarms" and alarm["detail"] == "stolen"
            refused = await asyncio.to_thread(
                sealink, "fleet", "devices", "revoke", "seal-x", "--reason", "again",
                "--config", str(config),
            )  # fmt: skip
            assert refused.returncode == 2 and "revoked already" in refused.stderr
            out = await asyncio.to_thread(cli, "reinstate", "seal-x", "--reason", "found")
            seqs.append(out["seq"])
            assert isinstance(seqs[0], int) and isinstance(seqs[1], int) and seqs[1] > seqs[0]
            for gw in (a, b):
                await until(_held(gw, "seal-x", None), _WAIT_S,
                            f"{gw.gateway_id} releases seal-x")  # fmt: skip
            await x.wait_acked(len(x.journal), _WAIT_S)  # the held stamp, now stored
            await _acked(x)
            await until(lambda: any(c[K_TYPE] == messages.PERMIT for c in x.commands),
                        _WAIT_S, "the held permit delivered once reinstated")  # fmt: skip

    try:
        run(body(), timeout=90)
    finally:
        alarms.close()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT device, state, reason, by_whom FROM device_states ORDER BY id"
        ).fetchall()
    assert rows == [
        ("seal-x", "revoked", "stolen", "alice"),
        ("seal-x", "active", "found", "alice"),
    ]
    shown = sealink("fleet", "alarms", "--device", "seal-x", "--json", "--config", str(config))
    said = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(a["reason"], a["detail"]["by"]) for a in said if a["source"] == "fleet"] == [
        ("revoked", "alice"),
        ("reinstated", "alice"),
    ]


def test_a_revocation_made_while_the_broker_is_away_is_published_by_fleet_run(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    seals = {"seal-z": os.urandom(32)}
    files = _files(tmp_path, "gw-z", seals)
    pem = files.root / "public.pem"
    pem.write_bytes(files.key.public_pem())
    dsn = cluster.database("fleet")

    def fleet_toml(name: str, port: int) -> Path:
        return write_fleet_config(
            tmp_path / name, database=dsn, instance="fleet-z", port=port, prefix=PREFIX,
            gateways={"gw-z": pem}, registry_refresh_s=1,
        )  # fmt: skip

    config = fleet_toml("fleet.toml", broker.port)
    with socket.socket() as closed:  # a port nobody listens on: the broker is "away"
        closed.bind(("127.0.0.1", 0))
        away = fleet_toml("away.toml", closed.getsockname()[1])
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    init = sealink("fleet", "keys", "init", "--config", str(config))
    fleet_key = bytes.fromhex(json.loads(init.stdout)["public_key"])
    store = Store(dsn, instance="fleet-z")
    store.import_seal_keys([("seal-z", SimChip.of(seals["seal-z"]).public)], source="test")
    revoke = sealink("fleet", "devices", "revoke", "seal-z", "--reason", "stolen", "-c", str(away))
    assert revoke.returncode == 0 and "fleet run` publishes it" in revoke.stderr, revoke.stderr
    assert json.loads(revoke.stdout)["published"] is False

    async def body() -> None:
        async with _gateway(files, broker.port, fleet_key, ("seal-z",)) as (gw, sims):
            await _acked(sims["seal-z"])  # nothing on the broker yet
            service = FleetService(load_config(config), store).start()
            try:
                await until(_held(gw, "seal-z", "revoked_by_fleet"), _WAIT_S, "published late")
                await _not_acked(gw, sims["seal-z"])
            finally:
                await asyncio.to_thread(service.stop)

    try:
        run(body(), timeout=60)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT registry_published FROM devices").fetchone()
        assert row == (True,)
    finally:
        store.close()


# Refusals, without a fleet: the test signs registry messages itself with a fleet key.


def test_forged_rolled_back_misdirected_and_substituted_messages_change_nothing(
    tmp_path: Path, broker: Mosquitto
) -> None:
    seals = {"seal-r": os.urandom(32), "seal-s": os.urandom(32)}
    files = _files(tmp_path, "gw-r", seals)
    fleet, forger = GatewayKey.generate(), GatewayKey.generate()
    chip = {d: SimChip.of(k).public for d, k in seals.items()}
    publisher = _publisher(broker.port)
    alarms = Alarms(broker.port, {"gw-r": files.key})

    def entry(
        key: GatewayKey, device: str, state: str, seq: int, seal_key: bytes | None = None
    ) -> bytes:
        held = chip[device] if seal_key is None else seal_key
        return build_entry(
            key, PREFIX, RegistryEntry("fleet", device, state, "test", held, seq, seq, seq)
        )

    def put(device: str, payload: bytes) -> None:
        topic = registry_topic(PREFIX, device)
        publisher.publish(topic, payload, qos=1, retain=True).wait_for_publish(_WAIT_S)

    async def refused(gateway: Gateway, reason: str, n: int) -> None:
        await until(lambda: sum(r.reason == reason for r in gateway.fleet.refused) >= n,
                    _WAIT_S, f"a registry message refused for {reason}")  # fmt: skip

    def _ledger_call(name: str, *args: str) -> None:
        ledger = files.ledger()
        try:
            getattr(ledger, name)(*args)
        finally:
            ledger.close()

    async def first_run() -> None:
        async with _gateway(files, broker.port, fleet.public_raw(), ("seal-r",)) as (gw, sims):
            put("seal-r", entry(fleet, "seal-r", "revoked", 100))
            await until(lambda: _quarantine(gw, "seal-r") == "revoked_by_fleet", _WAIT_S, "revoked")
            await _not_acked(gw, sims["seal-r"])
            put("seal-r", entry(forger, "seal-r", "active", 200))
            await refused(gw, "bad_signature", 1)
            put("seal-r", entry(fleet, "seal-r", "active", 50))  # older than the floor
            await refused(gw, "rollback", 1)
            put("seal-s", entry(fleet, "seal-r", "active", 300))  # seal-r's, on seal-s's topic
            await refused(gw, "wrong_topic", 1)
            other = SimChip().public
            put("seal-r", entry(fleet, "seal-r", "active", 400, seal_key=other))
            await refused(gw, "key_substitution", 1)
            assert _quarantine(gw, "seal-r") == "revoked_by_fleet"
            assert _quarantine(gw, "seal-s") is None
            assert gw.fleet.applied == 1
            # An operator's release does not lift the fleet's revocation.
            with pytest.raises(DeviceError, match="revoked by the fleet"):
                await asyncio.to_thread(_ledger_call, "release", "seal-r", "op", "found it")
            # The fleet's `active` lifts only its own quarantine, never the gateway's.
            await asyncio.to_thread(_ledger_call, "quarantine_device", "seal-s", "op", "hold")
            await until(lambda: _quarantine(gw, "seal-s") == "operator", _WAIT_S, "held")
            put("seal-s", entry(fleet, "seal-s", "revoked", 600))
            await until(lambda: gw.fleet.taken >= 2, _WAIT_S, "seal-s's revocation taken")
            put("seal-s", entry(fleet, "seal-s", "active", 700))
            await until(lambda: gw.fleet.taken >= 3, _WAIT_S, "seal-s's reinstatement")
            assert _quarantine(gw, "seal-s") == "operator"
            # A seal the fleet revoked before it was registered here starts quarantined.
            chip["seal-new"] = SimChip.of(new_key := os.urandom(32)).public
            put("seal-new", entry(fleet, "seal-new", "revoked", 800))
            await until(lambda: gw.fleet.taken >= 4, _WAIT_S, "seal-new's floor kept")
            await asyncio.to_thread(files.add_device, "seal-new", new_key)
            await until(_held(gw, "seal-new", "revoked_by_fleet"), _WAIT_S, "seal-new revoked")

    async def second_run() -> None:
        async with _gateway(files, broker.port, fleet.public_raw(), ("seal-r",)) as (gw, sims):
            # The revocation and the floor survived; the retained substitute is refused again.
            assert _quarantine(gw, "seal-r") == "revoked_by_fleet"
            await refused(gw, "key_substitution", 1)
            put("seal-r", entry(fleet, "seal-r", "active", 99))
            await refused(gw, "rollback", 1)
            await _not_acked(gw, sims["seal-r"])
            put("seal-r", entry(fleet, "seal-r", "active", 500))
            await until(lambda: _quarantine(gw, "seal-r") is None, _WAIT_S, "reinstated")
            await _acked(sims["seal-r"])

    try:
        run(first_run(), timeout=60)
        run(second_run(), timeout=60)
        # Each refusal raised on the gateway's own topic, naming its reason.
        want = {"bad_signature", "rollback", "wrong_topic", "key_substitution"}
        _wait(lambda: {a[2]["refusal"] for a in alarms.having(reason="fleet_registry_refused")}
              >= want, "an alarm for each refusal")  # fmt: skip
        for _, topic, _ in alarms.having(reason="fleet_registry_refused"):
            assert topic == f"{PREFIX}/gateway/gw-r/alarms"
    finally:
        alarms.close()
        publisher.disconnect()
        publisher.loop_stop()
    ledger = files.ledger()
    try:
        audit = [(a.action, a.operator, a.note) for a in ledger.operator_actions(0)]
    finally:
        ledger.close()
    assert audit == [
        ("quarantine", "fleet", "test"),
        ("quarantine", "op", "hold"),
        ("quarantine", "fleet", "test"),
        ("release", "fleet", "test"),
    ]


# The wire, sans-IO: protocol/vectors/registry.json is made here.

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "registry.json"
_V_SEQ = 1_767_225_600_000_000
_V_TOPIC = "sealink/fleet/registry/seal-0001"


def _v_body(entry: RegistryEntry) -> dict[str, Any]:
    """The body as SPEC §11.6 writes it, from the text (not from `build_entry`)."""
    body: dict[str, Any] = {
        "device": entry.device,
        "state": entry.state,
        "reason": entry.reason,
        "seal_key": entry.seal_key.hex(),
        "since_ms": entry.since_ms,
    }
    if entry.placement is not None:
        body |= {
            "gateway": entry.placement.gateway,
            "counter": entry.placement.counter,
            "record_sha256": entry.placement.head.hex(),
        }
    if entry.enrolment is not None:
        cert = entry.enrolment
        message = {0: messages.ENROL, 1: cert.serial, 2: cert.gateway_key, 3: cert.signature,
                   4: cert.device}  # fmt: skip
        body["enrolment"] = cbor2.dumps(message, canonical=True).hex()
    return body


def _vector_certificate() -> Certificate:
    """protocol/vectors/enrol.json's certificate: seal-0001 enrolled by its authority key."""
    vectors = json.loads((VECTORS.parent / "enrol.json").read_text())["vectors"]
    (cert,) = [v["message"] for v in vectors if v["name"] == "certificate"]
    return Certificate(cert["4"], cert["1"], bytes.fromhex(cert["2"]["hex"]),
                       bytes.fromhex(cert["3"]["hex"]))  # fmt: skip


def _vectors() -> dict[str, Any]:
    key, other = _vector_key("registry fleet key"), _vector_key("registry other key")
    seal_key = hashlib.sha512(b"sealink vectors/registry seal key").digest()
    revoked = RegistryEntry("fleet", "seal-0001", "revoked", "stolen", seal_key,
                            _V_SEQ // 1000, _V_SEQ, _V_SEQ // 1000)  # fmt: skip
    payload = build_entry(key, "sealink", revoked)
    # The same seal moved to gateway gw-0002, where the fleet held its records 1..41.
    placement = Placement("gw-0002", 41, hashlib.sha256(b"sealink vectors/record 41").digest())
    moved = dataclasses.replace(
        revoked, state="active", reason="office moved", seq=_V_SEQ + 1, placement=placement
    )
    # Moved again, enrolled with gw-0002's acknowledgement key by the authority.
    cert = _vector_certificate()
    enrolled = dataclasses.replace(moved, seq=_V_SEQ + 2, enrolment=cert)
    enrolled_body = _v_body(enrolled)
    other_seal = dataclasses.replace(cert, device="seal-0002")
    forgeries = [
        ("signed by another key", _V_TOPIC, build_entry(other, "sealink", revoked),
         "bad_signature"),
        ("a field changed after signing", _V_TOPIC,
         payload.replace(b'"revoked"', b'"active" '), "bad_signature"),
        ("put on another seal's topic", "sealink/fleet/registry/seal-0002", payload,
         "wrong_topic"),
        ("a seal key that is not 64 bytes", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(revoked, seal_key=b"\x04" * 33)),
         "invalid"),
        ("a state that is not one", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(revoked, state="lost")), "invalid"),
        ("a placement whose record hash is not 32 bytes", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(moved, placement=dataclasses.replace(
             placement, head=placement.head[:31]))), "invalid"),
        ("a placement on a gateway id that is not one", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(moved, placement=dataclasses.replace(
             placement, gateway="gw/../other"))), "invalid"),
        ("a placement without its counter", _V_TOPIC,
         key.sign1(envelope("fleet", "fleet", _V_TOPIC, json.dumps(
             {**_v_body(moved), "counter": None}).encode(), _V_SEQ + 1, _V_SEQ // 1000)),
         "invalid"),
        ("an enrolment without a placement", _V_TOPIC,
         key.sign1(envelope("fleet", "fleet", _V_TOPIC, json.dumps(
             {**_v_body(revoked), "enrolment": enrolled_body["enrolment"]}).encode(),
             _V_SEQ + 2, _V_SEQ // 1000)), "invalid"),
        ("an enrolment of another seal", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(enrolled, enrolment=other_seal)),
         "invalid"),
        ("an enrolment revoking every gateway", _V_TOPIC,
         build_entry(key, "sealink", dataclasses.replace(enrolled, enrolment=dataclasses.replace(
             cert, gateway_key=b""))), "invalid"),
        ("an enrolment that is not an ENROL message", _V_TOPIC,
         key.sign1(envelope("fleet", "fleet", _V_TOPIC, json.dumps(
             {**enrolled_body, "enrolment": cbor2.dumps({0: 11, 1: 1}).hex()}).encode(),
             _V_SEQ + 2, _V_SEQ // 1000)), "invalid"),
    ]  # fmt: skip
    return {
        "about": "SPEC \u00a711.6: the fleet's revocation of seal-0001 (Ed25519 seed "
        "SHA-256('sealink vectors/registry fleet key')), its move, its move with an enrolment "
        "(enrol.json's certificate) and forgeries, each with the refusal a gateway gives it; "
        "rollback, key_substitution and whose enrolment it is need the gateway (tested in "
        "host/tests/test_fleet_registry.py). Regenerate with SEALINK_WRITE_VECTORS=1 pytest "
        "host/tests/test_fleet_registry.py",
        "fleet_public_key": key.public_raw().hex(),
        "kid": key.kid.hex(),
        "topic": _V_TOPIC,
        "payload": payload.hex(),
        "body": _v_body(revoked),
        "seq": _V_SEQ,
        "moved": {
            "payload": build_entry(key, "sealink", moved).hex(),
            "body": _v_body(moved),
            "seq": moved.seq,
        },
        "enrolled": {
            "payload": build_entry(key, "sealink", enrolled).hex(),
            "body": enrolled_body,
            "seq": enrolled.seq,
            "certificate": "protocol/vectors/enrol.json: certificate",
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
    payload = bytes.fromhex(vectors["payload"])
    opened = open_entry(payload, vectors["topic"], key, "sealink")
    body = vectors["body"]
    assert (opened.device, opened.state, opened.reason, opened.seal_key.hex(), opened.seq) == (
        body["device"], body["state"], body["reason"], body["seal_key"], vectors["seq"],
    )  # fmt: skip
    # By hand, from the text: the Sig_structure, the kid, the signed map and its body.
    protected, _, signed, signature = cbor2.loads(payload).value
    Ed25519PublicKey.from_public_bytes(key).verify(
        signature, cbor2.dumps(["Signature1", protected, b"", signed])
    )
    assert cbor2.loads(protected) == {1: -8, 4: bytes.fromhex(vectors["kid"])}
    fields = cbor2.loads(signed)
    assert sorted(fields) == ["body", "fleet", "seq", "time_ms", "topic"]
    assert json.loads(fields["body"]) == body and fields["topic"] == vectors["topic"]
    moved = vectors["moved"]
    opened = open_entry(bytes.fromhex(moved["payload"]), vectors["topic"], key, "sealink")
    placement = opened.placement
    assert placement is not None and opened.seq == moved["seq"]
    assert (placement.gateway, placement.counter, placement.head.hex()) == (
        moved["body"]["gateway"], moved["body"]["counter"], moved["body"]["record_sha256"],
    )  # fmt: skip
    signed = cbor2.loads(cbor2.loads(bytes.fromhex(moved["payload"])).value[2])
    assert json.loads(signed["body"]) == moved["body"]
    assert opened.enrolment is None
    enrolled = vectors["enrolled"]
    opened = open_entry(bytes.fromhex(enrolled["payload"]), vectors["topic"], key, "sealink")
    cert, enrol_keys = opened.enrolment, json.loads((VECTORS.parent / "enrol.json").read_text())
    assert cert is not None and opened.placement == placement
    # The seal's check, by hand: the authority's signature over the ENROL without its sig.
    assert cert.signed_by(bytes.fromhex(enrol_keys["vectors"][0]["authority_key"]))
    assert cbor2.loads(bytes.fromhex(enrolled["body"]["enrolment"])) == {
        0: messages.ENROL, 1: cert.serial, 2: cert.gateway_key, 3: cert.signature, 4: "seal-0001"
    }  # fmt: skip
    for case in vectors["forgeries"]:
        with pytest.raises(RegistryRefused) as refused:
            open_entry(bytes.fromhex(case["payload"]), case["topic"], key, "sealink")
        assert refused.value.reason == case["refused"], case["name"]


def test_a_seal_the_fleet_spoke_for_is_registered_with_the_fleets_key_and_no_other(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """`sealink devices add` takes the chip key from the registry message the gateway holds
    (checked again under the fleet key) and refuses another: the retained message comes
    again as the same bytes, so the gateway would never judge a substituted key against it."""
    files = _files(tmp_path, "gw-k", {})
    fleet = GatewayKey.generate()
    link_key, chip = os.urandom(32), SimChip().public
    publisher = _publisher(broker.port)
    payload = build_entry(
        fleet, PREFIX, RegistryEntry("fleet", "seal-k", "active", "issued", chip, 7, 7, 7)
    )
    publisher.publish(registry_topic(PREFIX, "seal-k"), payload, qos=1, retain=True)

    async def floor_kept() -> None:
        files.ledger(create=True).close()  # `sealink ledger init`
        async with _gateway(files, broker.port, fleet.public_raw(), ()) as (gw, _):
            await until(lambda: gw.fleet.taken >= 1, _WAIT_S, "seal-k's message taken")

    try:
        run(floor_kept(), timeout=60)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    conf = gateway_toml(files, broker.port)
    conf.write_text(f'{conf.read_text()}\n[fleet]\npublic_key = "{fleet.public_raw().hex()}"\n')
    key_file = tmp_path / "seal-k.key"
    key_file.write_text(link_key.hex())
    key_file.chmod(0o600)

    def add(*extra: str) -> subprocess.CompletedProcess[str]:
        return sealink("devices", "add", "seal-k", "--key-file", str(key_file), *extra,
                       "--config", str(conf))  # fmt: skip

    other = SimChip().public
    refused = add("--seal-key", other.hex())
    assert refused.returncode == 2, refused.stderr
    assert "key_substitution" in refused.stderr and chip.hex()[:16] in refused.stderr
    assert "Traceback" not in refused.stderr
    ledger = files.ledger()
    try:
        assert ledger.device_record("seal-k") is None  # refused: nothing registered
    finally:
        ledger.close()
    taken = add()
    assert taken.returncode == 0, taken.stderr
    assert add("--seal-key", chip.hex(), "--replace").returncode == 0  # the fleet's own: fine
    ledger = files.ledger()
    try:
        record = ledger.device_record("seal-k")
        assert record is not None and record.seal_key == chip
        # A held message that no longer verifies (the ledger edited) vouches for nothing.
        ledger._db.execute(
            "UPDATE fleet_registry SET payload = ? WHERE device = 'seal-k'",
            (build_entry(GatewayKey.generate(), PREFIX,
                         RegistryEntry("fleet", "seal-k", "active", "x", other, 8, 8, 8)),),
        )  # fmt: skip
    finally:
        ledger.close()
    forged = add("--replace")
    assert forged.returncode == 2 and "does not verify" in forged.stderr, forged.stderr


def test_the_gateway_config_takes_the_fleet_key_in_hex_and_names_a_bad_one() -> None:
    base = {"gateway": {"id": "gw-1", "key_file": "gw.key", "ledger": "ledger.sqlite"}}
    key = GatewayKey.generate().public_raw()
    config = parse_config({**base, "fleet": {"public_key": key.hex()}}, check_key_file=False)
    assert config.fleet.public_key == key
    assert parse_config(base, check_key_file=False).fleet.public_key is None
    for bad in ("00" * 31, "zz" * 32, 7):
        with pytest.raises(ConfigError) as error:
            parse_config({**base, "fleet": {"public_key": bad}}, check_key_file=False)
        assert "fleet.public_key" in str(error.value)


# A placement (`sealink fleet devices move`) as the ledger takes it, sans broker.


def _placed(
    files: GatewayFiles, to: str, counter: int, head: bytes, seq: int, state: str = "active"
) -> tuple[str, str]:
    standing = Standing(to, counter, head, seq)
    ledger = files.ledger()
    try:
        return ledger.apply_fleet_state(
            DEVICE, seq, state, "moved", b"message %d" % seq,
            (standing, "gw-test", files.key.sign1, f"{PREFIX}/{DEVICE}/gaps"),
        )  # fmt: skip
    finally:
        ledger.close()


def _event_row(counter: int) -> EventRow:
    return EventRow(DEVICE, counter, os.urandom(40), os.urandom(32), b"cose", counter)


def test_a_placement_here_records_the_fleets_counters_as_a_gap_the_next_event_chains_to(
    files: GatewayFiles,
) -> None:
    head = hashlib.sha256(b"record 5 as the fleet holds it").digest()
    with contextlib.closing(files.ledger()) as ledger:
        events = [_event_row(n) for n in (1, 2)]
        ahead = DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, "ahead"), ahead_acked=7)
        ledger.commit(LedgerBatch(events=events, devices=[ahead]))
    # The fleet held 1..5; the seal says it compacted up to 7: still held.
    assert _placed(files, "gw-test", 5, head, 10) == ("anchored", "unchanged")
    with contextlib.closing(files.ledger()) as ledger:
        record = ledger.device_record(DEVICE)
        assert record is not None and (record.stored, record.stored_hash) == (5, head)
        assert record.quarantine is not None and record.quarantine.reason == AHEAD_OF_LEDGER
        (gap,) = ledger.gaps(DEVICE)
        assert (gap.first, gap.last, gap.operator) == (3, 5, "fleet")
        assert gap.head == head
        protected, _, signed, signature = cbor2.loads(gap.cose).value
        public = Ed25519PublicKey.from_public_bytes(files.key.public_raw())
        public.verify(signature, cbor2.dumps(["Signature1", protected, b"", signed]))
        statement = cbor2.loads(signed)
        assert (statement["first"], statement["operator"], statement["head"]) == (3, "fleet", head)
    # Taken again: nothing more. Placed at 7, the fleet covers the seal's claim: released,
    # and 6..7 chained on.
    assert _placed(files, "gw-test", 5, head, 10) == ("unchanged", "unchanged")
    head7 = hashlib.sha256(b"record 7").digest()
    assert _placed(files, "gw-test", 7, head7, 11) == ("anchored", "unchanged")
    with contextlib.closing(files.ledger()) as ledger:
        record = ledger.device_record(DEVICE)
        assert record is not None and (record.stored, record.stored_hash) == (7, head7)
        assert record.quarantine is None
        assert [(g.first, g.last) for g in ledger.gaps(DEVICE)] == [(3, 5), (6, 7)]
        actions = [(a.action, a.operator) for a in ledger.operator_actions(0)]
    # The gateway checks the seal's next record against the head the fleet vouched for.
    state = DeviceRegistry().load(record, files.device_keys[DEVICE], 0)
    key = files.device_keys[DEVICE]
    for prev, fault in ((head7, None), (hashlib.sha256(b"not record 7").digest(), "chain_break")):
        payload = make_event(key, 8, prev, chip=SimChip.of(key))
        found = event_fault(state, messages.decode(payload), payload, 1)
        assert (found[0] if found else None) == fault
    assert actions == [
        ("quarantine", "gateway"),  # the seal's claim, as the gateway would have held it
        ("adopt", "fleet"),
        ("adopt", "fleet"),
        ("release", "fleet"),
    ]


def test_a_seal_judged_ahead_while_its_placement_is_taken_is_not_held_once_covered(
    files: GatewayFiles,
) -> None:
    """The link judged the seal's STATUS against L = 0 while the placement committed: the hold
    reaches the ledger after it, and must not stand for a claim the ledger now covers."""
    head = hashlib.sha256(b"record 4").digest()
    assert _placed(files, "gw-test", 4, head, 10) == ("anchored", "unchanged")
    with contextlib.closing(files.ledger()) as ledger:
        for claimed, held in ((4, None), (5, AHEAD_OF_LEDGER)):
            update = DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, "late"), ahead_acked=claimed)
            ledger.commit(LedgerBatch(devices=[update]))
            record = ledger.device_record(DEVICE)
            assert record is not None
            assert (record.quarantine.reason if record.quarantine else None) == held, claimed


def test_a_placement_elsewhere_holds_the_seal_and_only_a_move_back_releases_it(
    files: GatewayFiles,
) -> None:
    head = hashlib.sha256(b"record 2").digest()
    with contextlib.closing(files.ledger()) as ledger:
        ledger.commit(LedgerBatch(events=[_event_row(n) for n in (1, 2)]))
    assert _placed(files, "gw-other", 2, head, 10) == ("moved_away", "unchanged")
    with contextlib.closing(files.ledger()) as ledger:
        record = ledger.device_record(DEVICE)
        assert record is not None and record.quarantine is not None
        assert record.quarantine.reason == "moved_by_fleet"
        with pytest.raises(DeviceError, match="moved to another gateway"):
            ledger.release(DEVICE, "op", "it is here")
    # Revoked while away: the move's hold stays first; moved back, the revocation holds it.
    assert _placed(files, "gw-other", 2, head, 11, "revoked") == ("unchanged", "unchanged")
    assert _placed(files, "gw-test", 2, head, 12, "revoked") == ("released", "quarantined")
    with contextlib.closing(files.ledger()) as ledger:
        record = ledger.device_record(DEVICE)
        assert record is not None and record.quarantine is not None
        assert record.quarantine.reason == "revoked_by_fleet"
        assert record.stored == 2 and ledger.gaps(DEVICE) == []


def test_what_a_placement_has_left_is_exactly_what_taking_it_does(files: GatewayFiles) -> None:
    """The gateway's desk takes a placement applied already again only when `placement_steps`
    says something is left (the seal was registered since): each taken twice, the steps say
    something is left exactly when `place` did something."""
    head = hashlib.sha256(b"record 7").digest()
    with contextlib.closing(files.ledger()) as ledger:
        ahead = DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, "ahead"), ahead_acked=7)
        ledger.commit(LedgerBatch(events=[_event_row(n) for n in (1, 2)], devices=[ahead]))
    # Here short of the seal's claim, here covering it, elsewhere, back here.
    for to, counter, seq in (("gw-test", 5, 10), ("gw-test", 7, 11), ("gw-other", 7, 12),
                             ("gw-test", 7, 13)):  # fmt: skip
        for _ in range(2):
            with contextlib.closing(files.ledger()) as ledger:
                record = ledger.device_record(DEVICE)
            assert record is not None
            reason = record.quarantine.reason if record.quarantine is not None else None
            standing = Standing(to, counter, head, seq)
            steps = placement_steps(standing, "gw-test", reason, record.ahead_acked, record.stored)
            moved, _ = _placed(files, to, counter, head, seq)
            assert steps.left == (moved != "unchanged"), (to, counter, seq, moved, steps)


def test_a_ledger_of_schema_11_gains_the_gap_head_and_keeps_its_gaps(
    files: GatewayFiles,
) -> None:
    with contextlib.closing(files.ledger()) as ledger:
        ahead = DeviceUpdate(DEVICE, quarantine=(AHEAD_OF_LEDGER, "x"), ahead_acked=3)
        ledger.commit(LedgerBatch(devices=[ahead]))
        ledger.adopt(DEVICE, "op", "moved by hand", files.key.sign1, "p/gaps")
    with contextlib.closing(sqlite3.connect(files.ledger_path, isolation_level=None)) as db:
        # gaps as schema 11 made it: no head.
        db.executescript(
            """
            BEGIN;
            ALTER TABLE gaps DROP COLUMN head;
            UPDATE meta SET value = '11' WHERE key = 'schema';
            COMMIT;
            """
        )
    with contextlib.closing(files.ledger()) as ledger:
        record = ledger.device_record(DEVICE)
        assert record is not None and (record.stored, record.stored_hash) == (3, None)
    with contextlib.closing(sqlite3.connect(files.ledger_path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert db.execute("SELECT first, last, head FROM gaps").fetchall() == [(1, 3, None)]


# A move as the fleet signs it: only for a record it holds whole.


def test_a_move_vouches_only_for_a_record_the_fleet_holds_whole(
    tmp_path: Path, cluster: PostgresCluster
) -> None:
    seal, fresh = SimSeal("seal-m"), SimSeal("seal-n")
    gw_1, gw_2 = SimGateway("gw-1"), SimGateway("gw-2")
    dsn = cluster.database("fleet")
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-m", port=1, prefix=PREFIX,
        gateways={g.id: g.write_public_key(tmp_path / f"{g.id}.pem") for g in (gw_1, gw_2)},
    )  # fmt: skip
    assert sealink("fleet", "migrate", "--config", str(config)).returncode == 0
    key = GatewayKey.generate()
    with Store(dsn, instance="fleet-m") as store:
        store.import_seal_keys([(s.device, s.chip.public) for s in (seal, fresh)], source="t")
        service = FleetService(load_config(config), store)

        def write(records: list[tuple[int, bytes]]) -> None:
            batch = Batch()
            for _, cose in records:
                service.classify(f"{PREFIX}/{seal.device}/events", cose, batch)
            assert store.write(batch).stored == len(records)

        def moved(device: str, to: str) -> RegistryChange:
            return fleet_move(store, key, "fleet", PREFIX, device, to, "office moved", "qa")

        records = gw_1.records(seal, 4)
        write(records[:2] + records[3:])
        with pytest.raises(FleetError, match=r"1 of counters 1\.\.4 missing"):
            moved("seal-m", "gw-2")
        write(records[2:3])
        with pytest.raises(FleetError, match="gw-9: not a gateway of this fleet"):
            moved("seal-m", "gw-9")
        with pytest.raises(FleetError, match="a reason is required"):
            fleet_move(store, key, "fleet", PREFIX, "seal-m", "gw-2", " ", "qa")
        change = moved("seal-m", "gw-2")
        assert change.placement == Placement("gw-2", 4, seal.head)
        opened = open_entry(change.message, change.topic, key.public_raw(), PREFIX)
        assert (opened.state, opened.placement) == ("active", change.placement)
        # Every later message of the seal carries where it was placed.
        revoked = change_state(store, key, "fleet", PREFIX, "seal-m", "revoked", "stolen", "qa")
        opened = open_entry(revoked.message, revoked.topic, key.public_raw(), PREFIX)
        assert (opened.state, opened.placement, opened.seq > change.seq) == (
            "revoked", change.placement, True,
        )  # fmt: skip
        # A seal the fleet holds nothing of is placed at its start.
        assert moved("seal-n", "gw-1").placement == Placement("gw-1", 0, bytes(32))
    with psycopg.connect(dsn) as conn:
        states = conn.execute(
            "SELECT device, state, gateway, counter FROM device_states ORDER BY id"
        ).fetchall()
        alarm = conn.execute(
            "SELECT gateway, detail FROM alarms WHERE reason = 'moved' AND device = 'seal-m'"
        ).fetchone()
    assert states == [
        ("seal-m", "active", "gw-2", 4),
        ("seal-m", "revoked", "gw-2", 4),
        ("seal-n", "active", "gw-1", 0),
    ]
    assert alarm is not None and alarm[0] == "gw-2"
    assert {k: alarm[1][k] for k in ("to", "from", "counter", "by")} == {
        "to": "gw-2", "from": "gw-1", "counter": 4, "by": "qa",
    }  # fmt: skip


def test_a_seal_moved_to_another_gateway_keeps_its_chain_and_the_old_one_holds_it(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    """seal-m is registered on the new gateway (`devices add`) and carried there: the new
    gateway holds it as ahead of its ledger until `sealink fleet devices move` tells it where
    the seal stands in the fleet's record; then its records flow on, chained to the old
    gateway's, and the old gateway holds it. seal-n is moved first and registered after: the
    placement waits for its registration, and the seal is served as soon as it arrives."""
    seals = {"seal-m": os.urandom(32), "seal-n": os.urandom(32)}
    gw_a = _files(tmp_path, "gw-a", seals)
    gw_b = _files(tmp_path, "gw-b", {"seal-m": seals["seal-m"]})
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (gw_a, gw_b))
    store = Store(dsn, instance="fleet-1")
    store.import_seal_keys([(d, SimChip.of(k).public) for d, k in seals.items()], source="test")
    alarms = Alarms(broker.port, {"gw-a": gw_a.key, "gw-b": gw_b.key})

    def held_by_fleet(device: str) -> list[tuple[int, str, bool]]:
        return _held_by_fleet(dsn, device)

    async def holds(device: str, count: int) -> None:
        await asyncio.to_thread(_wait, lambda: len(held_by_fleet(device)) == count,
                                f"the fleet holds {count} records of {device}")  # fmt: skip

    def move(device: str, *args: str) -> subprocess.CompletedProcess[str]:
        return sealink("fleet", "devices", "move", device, *args, "--config", str(config))

    placed_at: dict[str, Any] = {}  # what `fleet devices move` said

    async def body() -> None:
        service = FleetService(load_config(config), store).start()
        try:
            async with (
                _gateway(gw_a, broker.port, fleet_key, ("seal-m", "seal-n")) as (a, sims),
                _gateway(gw_b, broker.port, fleet_key, ()) as (b, _),
            ):
                seal, other = sims["seal-m"], sims["seal-n"]
                for _ in range(3):
                    await _acked(seal)
                await _acked(other)
                await holds("seal-m", 3)
                refused = await asyncio.to_thread(move, "seal-m", "--to", "gw-z", "--reason", "x")
                assert refused.returncode == 2 and "gw-z: not a gateway" in refused.stderr
                # Carried to gateway B, whose ledger has nothing of it.
                await _carry(seal, b)
                await until(_held(b, "seal-m", "ahead_of_ledger"), _WAIT_S, "B holds it")
                await _not_acked(b, seal)  # record 4, kept by the seal
                done = await asyncio.to_thread(move, "seal-m", "--to", "gw-b", "--reason", "moved")
                assert done.returncode == 0, done.stderr
                said = json.loads(done.stdout)
                placed_at.update(said)
                assert (said["gateway"], said["counter"], said["published"]) == ("gw-b", 3, True)
                assert said["record_sha256"] == hashlib.sha256(seal.journal[2]).hexdigest()
                await until(_held(b, "seal-m", None), _WAIT_S, "B takes up the seal's chain")
                await until(_held(a, "seal-m", "moved_by_fleet"), _WAIT_S, "A holds it")
                await seal.wait_acked(4, _WAIT_S)
                await _acked(seal)
                state = b.registry.get("seal-m")
                assert state is not None and state.stored == 5
                with pytest.raises(DeviceError, match="moved to another gateway"):
                    await asyncio.to_thread(_release, gw_a, "seal-m")
                # seal-n: moved before B knows it, registered there after.
                await holds("seal-n", 1)
                done = await asyncio.to_thread(move, "seal-n", "--to", "gw-b", "--reason", "moved")
                assert done.returncode == 0, done.stderr
                await until(_held(a, "seal-n", "moved_by_fleet"), _WAIT_S, "A holds seal-n")
                assert _quarantine(b, "seal-n") == "(not registered)"
                await asyncio.to_thread(gw_b.add_device, "seal-n", seals["seal-n"])
                await until(lambda: (s := b.registry.get("seal-n")) is not None and s.stored == 1,
                            _WAIT_S, "B takes seal-n's placement once registered")  # fmt: skip
                await _carry(other, b)
                assert _quarantine(b, "seal-n") is None
                await _acked(other)
                await holds("seal-m", 5)
                await holds("seal-n", 2)
                await asyncio.to_thread(
                    _wait,
                    lambda: (
                        len(alarms.having(reason="placed_by_fleet")) >= 2
                        and len(alarms.having(reason="moved_by_fleet")) >= 2
                    ),
                    "each gateway's signed alarms of the moves",
                )
                # B's statements of the placements, published on the seals' gaps topics.
                statements = "SELECT count(*) FROM gap_statements WHERE gateway = 'gw-b'"
                await asyncio.to_thread(_wait, lambda: _count(dsn, statements) == 2,
                                        "the fleet keeps B's gap statements")  # fmt: skip
        finally:
            await asyncio.to_thread(service.stop)

    try:
        run(body(), timeout=120)
    finally:
        alarms.close()
        store.close()
    assert held_by_fleet("seal-m") == [
        (1, "gw-a", True), (2, "gw-a", True), (3, "gw-a", True),
        (4, "gw-b", True), (5, "gw-b", True),
    ]  # fmt: skip
    assert held_by_fleet("seal-n") == [(1, "gw-a", True), (2, "gw-b", True)]
    assert {g for g, _, _ in alarms.having(reason="placed_by_fleet")} == {"gw-b"}
    assert {g for g, _, _ in alarms.having(reason="moved_by_fleet")} == {"gw-a"}
    with contextlib.closing(gw_b.ledger()) as ledger:
        (gap,) = ledger.gaps("seal-m")
        assert (gap.first, gap.last, gap.operator) == (1, 3, "fleet")
        assert [e["counter"] for e in ledger.events("seal-m")] == [4, 5]
        exported = [json.dumps(row) for row in export_rows(ledger, "seal-m", 0)]
    # The auditor, from B's export alone: record 4 chains to the record 3 the fleet vouched for.
    seal_keys = {"seal-m": SimChip.of(seals["seal-m"]).public}
    (audit,) = verify_export(exported, gw_b.key.public_pem(), seal_keys)
    assert audit.problems == [] and [g.head for g in audit.gaps] == [gap.head]
    assert gap.head is not None and gap.head.hex() == placed_at["record_sha256"]
    # The fleet checked B's statement of the move against the record 3 it holds: it matches.
    with psycopg.connect(dsn) as conn:
        kept = conn.execute(
            "SELECT device, first, last, operator, head, cose FROM gap_statements ORDER BY device"
        ).fetchall()
        checked = conn.execute("SELECT reason FROM alarms WHERE reason LIKE 'gap%'").fetchall()
    assert kept[0] == ("seal-m", 1, 3, "fleet", gap.head, gap.cose)
    assert [row[:4] for row in kept[1:]] == [("seal-n", 1, 1, "fleet")]
    assert checked == []
    shown = sealink("fleet", "alarms", "--device", "seal-m", "--json", "--config", str(config))
    fleet_said = [json.loads(line) for line in shown.stdout.splitlines()]
    (moved,) = [a for a in fleet_said if a["reason"] == "moved"]
    assert (moved["detail"]["from"], moved["detail"]["to"]) == ("gw-a", "gw-b")


def test_a_seal_moved_by_a_fleet_with_the_authority_is_enrolled_with_its_new_gateway(
    tmp_path: Path, broker: Mosquitto, cluster: PostgresCluster
) -> None:
    """With fleet.toml [authority], `sealink fleet devices move` signs seal-m's certificate
    for gateway B's acknowledgement key (pinned in fleet.toml): B keeps it and hands it to the
    seal at its next session (ENROL after TIME), and B's acknowledgements are signed with the
    key it enrols; A, which the placement does not name, keeps nothing. Before that, a
    fleet-signed placement on B whose enrolment is for another key is refused by B as
    `invalid` and changes nothing there. The simulated seal does not check signatures (its
    chip is simulated): the test checks them as the seal's chip does, under the authority's
    key and under the enrolled key."""
    seals = {"seal-m": os.urandom(32)}
    gw_a, gw_b = _files(tmp_path, "gw-a", seals), _files(tmp_path, "gw-b", seals)
    ack_b, ack_b_file = P256Key.generate(), gw_b.root / "gateway.ack.key"
    ack_b.save(ack_b_file, "acknowledgement key")
    authority_file = tmp_path / "authority.key"
    made = sealink("authority", "init", "--key", str(authority_file))
    assert made.returncode == 0, made.stderr
    authority = bytes.fromhex(made.stdout.strip())
    dsn, config, fleet_key = _fleet(tmp_path, cluster, broker, (gw_a, gw_b),
                                    authority_key=authority_file,
                                    ack_keys={"gw-a": P256Key.generate().public,
                                              "gw-b": ack_b.public})  # fmt: skip
    store = Store(dsn, instance="fleet-1")
    store.import_seal_keys([(d, SimChip.of(k).public) for d, k in seals.items()], source="test")
    publisher = _publisher(broker.port)

    def fleet_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return sealink("fleet", "devices", *args, "--config", str(config))

    def enrolment(files: GatewayFiles) -> str | None:
        with contextlib.closing(files.ledger()) as ledger:
            record = ledger.device_record("seal-m")
        assert record is not None
        return record.enrolment

    said: dict[str, Any] = {}

    async def body() -> None:
        service = FleetService(load_config(config), store).start()
        try:
            async with (
                _gateway(gw_a, broker.port, fleet_key, ("seal-m",)) as (a, sims),
                _gateway(gw_b, broker.port, fleet_key, (), ack_b_file) as (b, _),
            ):
                seal = sims["seal-m"]
                for _ in range(3):
                    await _acked(seal)
                await asyncio.to_thread(_wait, lambda: len(_held_by_fleet(dsn, "seal-m")) == 3,
                                        "the fleet holds seal-m's 3 records")  # fmt: skip
                # Carried to B, which holds it (ahead of its ledger) in a session that stays
                # open: the certificate must reach the seal in it.
                host, device_end = pipe_pair("seal-m@gw-b")
                b.attach(host)
                await seal.reconnect(device_end)
                await asyncio.wait_for(seal.welcomed.wait(), _WAIT_S)
                await until(_held(b, "seal-m", AHEAD_OF_LEDGER), _WAIT_S, "B holds seal-m")
                # Signed by the fleet's key, but enrolling a key that is not B's.
                stranger = certify(P256Key.generate(), "seal-m", P256Key.generate().public)
                head = hashlib.sha256(seal.journal[2]).digest()
                wrong = RegistryEntry("fleet", "seal-m", "active", "forged", SimChip.of(
                    seals["seal-m"]).public, 1, time.time_ns() // 1000, 1,
                    Placement("gw-b", 3, head), stranger)  # fmt: skip
                payload = build_entry(GatewayKey.load(tmp_path / "fleet.key"), PREFIX, wrong)
                topic = registry_topic(PREFIX, "seal-m")
                publisher.publish(topic, payload, qos=1, retain=True).wait_for_publish(_WAIT_S)
                await until(lambda: [r.reason for r in b.fleet.refused] == ["invalid"],
                            _WAIT_S, "B refuses the enrolment of another key")  # fmt: skip
                state = b.registry.get("seal-m")
                assert state is not None and (state.stored, state.enrolment) == (0, None)
                # A is not named: the placement holds the seal there, the certificate is B's.
                await until(_held(a, "seal-m", "moved_by_fleet"), _WAIT_S, "A holds seal-m")
                done = await asyncio.to_thread(fleet_cli, "move", "seal-m", "--to", "gw-b",
                                               "--reason", "office moved")  # fmt: skip
                assert done.returncode == 0, done.stderr
                said.update(json.loads(done.stdout))
                await until(_held(b, "seal-m", None), _WAIT_S, "B takes up the seal's chain")
                await until(lambda: seal.enrolment == said["serial"], _WAIT_S,
                            "B hands the seal its certificate in the open session")  # fmt: skip
                await _acked(seal)
                (enrol,) = [c for c in seal.commands if c[K_TYPE] == messages.ENROL]
                cert = Certificate(enrol[messages.EN_DEVICE], enrol[messages.EN_SERIAL],
                                   enrol[messages.EN_GATEWAY], enrol[messages.EN_SIG])  # fmt: skip
                assert (cert.device, cert.gateway_key) == ("seal-m", ack_b.public)
                assert cert.signed_by(authority)
                digest = auth.stored_digest("seal-m", 4, hashlib.sha256(seal.journal[3]).digest())
                assert SealKey(ack_b.public).verify(digest, seal.proofs[4])
                assert enrolment(gw_a) is None
        finally:
            await asyncio.to_thread(service.stop)

    try:
        run(body(), timeout=120)
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        store.close()
    assert said["gateway"] == "gw-b" and said["counter"] == 3
    held = enrolment(gw_b)
    assert held is not None and Certificate.from_json(held, "b").serial == said["serial"]
    with psycopg.connect(dsn) as conn:
        issued = conn.execute(
            "SELECT serial, gateway, gateway_key, reason FROM enrolments WHERE device = 'seal-m'"
        ).fetchall()
    assert issued == [(said["serial"], "gw-b", ack_b.public, "office moved")]
    # Enrolled again where it is placed: a higher serial, the placement unchanged.
    again = fleet_cli("enrol", "seal-m", "--gateway", "gw-b", "--reason", "key replaced")
    assert again.returncode == 0, again.stderr
    renewed = json.loads(again.stdout)
    assert renewed["serial"] > said["serial"] and renewed["counter"] == 3
    elsewhere = fleet_cli("enrol", "seal-m", "--gateway", "gw-a", "--reason", "x")
    assert elsewhere.returncode == 2 and "placed on gw-b, not gw-a" in elsewhere.stderr


def test_fleet_toml_pins_the_authority_and_gateways_acknowledgement_keys(tmp_path: Path) -> None:
    gw = SimGateway("gw-1")
    ack = P256Key.generate()
    authority = tmp_path / "authority.key"
    P256Key.generate().save(authority, "authority key")

    def load(**authority_args: Any) -> FleetConfig:
        path = write_fleet_config(
            tmp_path / "fleet.toml", database="postgresql://x", instance="i", port=1,
            prefix=PREFIX, gateways={"gw-1": gw.write_public_key(tmp_path / "gw-1.pem")},
            **authority_args,
        )  # fmt: skip
        return load_config(path)

    plain = load()
    assert plain.authority_key_file is None
    assert enrolling_if_authority(plain, "gw-1") is None
    with pytest.raises(FleetError, match=r"no enrolment authority"):
        enrolling(plain, "gw-1")
    config = load(authority_key=authority, ack_keys={"gw-1": ack.public})
    assert config.ack_key("gw-1") == ack.public
    assert enrolling(config, "gw-1").gateway_key == ack.public
    found = enrolling_if_authority(config, "gw-1")
    assert found is not None and (found.gateway, found.gateway_key) == ("gw-1", ack.public)
    for find in (enrolling, enrolling_if_authority):
        with pytest.raises(FleetError, match=r"gw-2: no acknowledgement key in fleet.toml"):
            find(config, "gw-2")
    authority.chmod(0o644)  # a key file others can read is refused, as every key file is
    with pytest.raises(KeyFileError, match="mode 0644 lets others read it"):
        enrolling_if_authority(config, "gw-1")
    for ack_keys, where in (({"gw-9": ack.public}, "not a gateway of"),
                            ({"gw-1": bytes(64)}, "gw-1")):  # fmt: skip
        with pytest.raises(ConfigError, match=where) as error:
            load(authority_key=authority, ack_keys=ack_keys)
        assert "authority.ack_keys" in str(error.value)
    keyless = tmp_path / "keyless.toml"
    keyless.write_text('[fleet]\ndatabase = "x"\ninstance = "i"\n[authority.ack_keys]\n')
    with pytest.raises(ConfigError, match=r"authority\.key_file"):
        load_config(keyless)


def _held_by_fleet(dsn: str, device: str) -> list[tuple[int, str, bool]]:
    """(counter, gateway, chain_ok) of each of `device`'s records in the fleet's PostgreSQL."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT counter, gateway, chain_ok FROM records WHERE device = %s ORDER BY counter",
            (device,),
        ).fetchall()
    return [(int(c), str(g), bool(ok)) for c, g, ok in rows]


def _release(files: GatewayFiles, device: str) -> None:
    with contextlib.closing(files.ledger()) as ledger:
        ledger.release(device, "op", "it is back")
