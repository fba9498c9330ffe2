"""The fleet ledger against a real PostgreSQL (a private cluster started here): migrations,
idempotent storage in any order, forged records, forks and chain breaks, the query CLI.

Messages go through FleetService.classify (the verification the running service does on
each MQTT message) and Store.write (its transaction); MQTT itself is in test_fleet_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import cbor2
import psycopg
import pytest
from conftest import sealink
from fleet_rig import PREFIX, _rig, _topic
from sealink.crypto.signer import GatewayKey
from sealink.errors import ConfigError
from sealink.evidence.keys import history_document, keys_origin, sign_transition
from sealink.evidence.note import sign_checkpoint
from sealink.fleet import Batch, FleetService, StoreOutcome, load_config, migrate, migrations
from sealink.mqtt.signed import MessageSigner
from sealink_sim.fleetrig import SimGateway, SimSeal
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip, make_event


def test_migrations_apply_once_and_a_rerun_is_a_no_op(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    again = sealink("fleet", "migrate", "--config", str(rig.config_path))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"applied": []}
    with psycopg.connect(rig.dsn) as conn:
        assert migrate(conn) == []
    names = [r[0] for r in rig.rows("SELECT name FROM schema_migrations ORDER BY name")]
    # Every file shipped, each once (the first run applied them all; the rerun none).
    assert names == [name for name, _ in migrations()]
    assert names[:3] == ["0001_ledger.sql", "0002_key_history.sql", "0003_registry.sql"]
    pinned = rig.rows("SELECT id FROM gateways ORDER BY id")
    assert pinned == [("gw-1",), ("gw-2",)]
    rig.store.close()


def test_records_in_any_order_with_redeliveries_are_stored_once_and_chained(
    cluster: PostgresCluster, tmp_path: Path, seed: int
) -> None:
    seals = [SimSeal(f"seal-{i}") for i in range(3)]
    rig = _rig(cluster, tmp_path, seals)
    messages = [
        (_topic(seal.device), cose)
        for seal, gw in zip(seals, [rig.gateways[0], rig.gateways[1], rig.gateways[0]], strict=True)
        for _counter, cose in gw.records(seal, 20)
    ]
    rng = random.Random(seed)
    shuffled = messages + rng.sample(messages, 15)  # redeliveries
    rng.shuffle(shuffled)
    total = StoreOutcome()
    for start in range(0, len(shuffled), 7):  # batches split neighbours across transactions
        outcome = rig.write(shuffled[start : start + 7])
        total.stored += outcome.stored
        total.duplicates += outcome.duplicates
    assert (total.stored, total.duplicates) == (60, 15)
    assert rig.rows("SELECT count(*) FROM records") == [(60,)]
    assert rig.rows("SELECT count(*) FROM records WHERE chain_ok AND seal_verified") == [(60,)]
    assert rig.rows("SELECT * FROM gaps") == []
    assert rig.rows("SELECT count(*) FROM alarms") == [(0,)]
    rig.store.close()


def test_a_forged_record_is_refused_kept_and_alarmed_once(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    seal = SimSeal("seal-f")
    rig = _rig(cluster, tmp_path, [seal])
    (_, good), (_, second) = rig.gateways[0].records(seal, 2)
    tampered = good[:-1] + bytes([good[-1] ^ 1])  # the countersignature's last byte
    stranger = SimGateway("gw-1")  # claims to be gw-1, with a key nobody pinned
    counter, event = seal.next_event()
    unknown = stranger.countersign(seal.device, counter, event)
    other_chip = make_event(seal.key, 4, seal.head, chip=SimChip())  # not the seal's chip
    bad_seal = rig.gateways[0].countersign(seal.device, 4, other_chip)
    forged = [tampered, unknown, bad_seal]
    outcome = rig.write(
        [(_topic(seal.device), f) for f in forged + forged] + [(_topic(seal.device), second)]
    )
    assert (outcome.rejected, outcome.stored) == (3, 1)
    reasons = rig.rows("SELECT reason FROM rejections ORDER BY id")
    assert reasons == [("bad_countersignature",), ("unknown_key",), ("bad_seal_signature",)]
    assert rig.rows("SELECT counter FROM records") == [(2,)]
    assert rig.rows("SELECT reason, count(*) FROM alarms GROUP BY reason") == [("rejected", 3)]
    assert rig.rows("SELECT device, first, last FROM gaps") == [("seal-f", 1, 1)]
    rig.store.close()


def test_a_fork_is_kept_beside_the_held_record_and_alarmed_once(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    seal = SimSeal("seal-k")
    rig = _rig(cluster, tmp_path, [seal])
    records = rig.gateways[0].records(seal, 3)
    # The same seal, counter 2 again with other bytes (a flash restored from earlier would
    # do this): properly signed by its chip and countersigned by the other gateway.
    twin = make_event(seal.key, 2, b"\x00" * 32, time_s=1234)
    fork = rig.gateways[1].countersign(seal.device, 2, twin)
    topic = _topic(seal.device)
    assert rig.write([(topic, c) for _, c in records]).stored == 3
    outcome = rig.write([(topic, fork), (topic, fork)])
    assert (outcome.stored, outcome.forks) == (0, 1)
    assert rig.write([(topic, fork)]).forks == 0  # a redelivery is no new fork
    held = rig.rows("SELECT gateway FROM records WHERE device = 'seal-k' AND counter = 2")
    assert held == [("gw-1",)]
    assert rig.rows("SELECT gateway, counter FROM forks") == [("gw-2", 2)]
    assert rig.rows("SELECT reason, device FROM alarms") == [("fork", "seal-k")]
    shown = sealink("fleet", "forks", "--json", "--config", str(rig.config_path))
    assert shown.returncode == 0, shown.stderr
    row = json.loads(shown.stdout)
    assert (row["counter"], row["gateway"], row["held_gateway"]) == (2, "gw-2", "gw-1")
    rig.store.close()


@pytest.mark.parametrize("order", ["in_order", "reversed"])
def test_a_chain_break_is_found_whichever_record_arrives_first(
    cluster: PostgresCluster, tmp_path: Path, order: str
) -> None:
    seal = SimSeal("seal-c")
    rig = _rig(cluster, tmp_path, [seal])
    gw = rig.gateways[0]
    first = gw.records(seal, 1)[0][1]
    # Counter 2 names a previous record nobody holds (signed by the seal's chip: the chain,
    # not a signature, is what is wrong), then 3 chains onto that 2.
    bad_two = make_event(seal.key, 2, b"\x11" * 32)
    seal.counter, seal.head = 2, hashlib.sha256(bad_two).digest()
    three = gw.records(seal, 1)[0][1]
    messages = [
        (_topic(seal.device), first),
        (_topic(seal.device), gw.countersign(seal.device, 2, bad_two)),
        (_topic(seal.device), three),
    ]
    if order == "reversed":
        messages.reverse()
    for message in messages:  # one transaction each: the neighbour is always already held
        rig.write([message])
    chain = rig.rows("SELECT counter, chain_ok FROM records ORDER BY counter")
    assert chain == [(1, True), (2, False), (3, True)]
    alarms = rig.rows("SELECT reason, detail FROM alarms")
    assert alarms == [("chain_break", {"counter": 2})]
    shown = sealink(
        "fleet", "records", "--device", "seal-c", "--json", "--config", str(rig.config_path)
    )
    assert [json.loads(line)["chain_ok"] for line in shown.stdout.splitlines()] == [
        True,
        False,
        True,
    ]
    rig.store.close()


def test_fleet_devices_import_reads_a_gateways_device_list(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    seal = SimSeal("seal-i")
    listing = tmp_path / "devices.jsonl"
    listing.write_text(
        json.dumps({"device": seal.device, "seal_key": seal.chip.public.hex()}) + "\n"
    )
    done = sealink("fleet", "devices", "import", str(listing), "--config", str(rig.config_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"imported": 1}
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"device": seal.device, "seal_key": SimChip().public.hex()}))
    refused = sealink("fleet", "devices", "import", str(other), "--config", str(rig.config_path))
    assert refused.returncode == 2
    assert "another seal key" in refused.stderr
    rig.store.close()


def test_fleet_cli_errors_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text('[fleet]\ndatabase = "host=127.0.0.1 port=1 dbname=x"\ninstance = "i"\n')
    done = sealink("fleet", "gaps", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith("sealink: error: database")


def test_the_fleet_mqtt_table_takes_its_own_keys_and_refuses_the_gateways_it_has_no_use_for(
    tmp_path: Path,
) -> None:
    config = tmp_path / "fleet.toml"
    head = '[fleet]\ndatabase = "x"\ninstance = "fleet-1"\n[mqtt]\nprefix = "site/a"\n'
    config.write_text(head + 'group = "g2"\nreceive_maximum = 64\nkeepalive_s = 7\n')
    loaded = load_config(config)
    assert (loaded.group, loaded.receive_maximum, loaded.mqtt.keepalive_s) == ("g2", 64, 7)
    assert loaded.prefix == "site/a"
    for line, key, why in (
        ("inflight = 8", "mqtt.inflight", "unknown key"),
        ("json_companion = true", "mqtt.json_companion", "unknown key"),
        ('client_id = "x"', "mqtt.client_id", "[fleet] instance"),
        ("hots = 'x'", "mqtt.hots", "unknown key"),
    ):
        config.write_text(head + line + "\n")
        with pytest.raises(ConfigError, match=re.escape(key)) as error:
            load_config(config)
        assert why in str(error.value)
        if why == "unknown key":  # the keys named as known are the ones the fleet takes
            known = str(error.value).partition("known: ")[2]
            assert "group" in known and "receive_maximum" in known
            assert "inflight" not in known and "json_companion" not in known


def test_signed_alarms_are_kept_once_and_forged_ones_refused(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    signer = MessageSigner(rig.gateways[0].key, "gw-1")
    topic = f"{PREFIX}/seal-a/alarms"
    body = {"device": "seal-a", "gateway": "gw-1", "source": "gateway", "reason": "bad_mac"}
    alarm = signer.sign(topic, body)
    replayed = signer.sign(f"{PREFIX}/seal-b/alarms", body)  # signed for another topic
    other = MessageSigner(rig.gateways[1].key, "gw-2").sign(topic, {**body, "gateway": "gw-1"})
    rig.write([(topic, alarm), (topic, alarm), (topic, replayed), (topic, other)])
    kept = rig.rows("SELECT source, gateway, device, reason FROM alarms WHERE source = 'gateway'")
    assert kept == [("gateway", "gw-1", "seal-a", "bad_mac")]
    checks = rig.rows("SELECT reason FROM rejections ORDER BY id")
    assert checks == [("WrongTopic",), ("WrongGateway",)]
    rig.store.close()


def test_checkpoints_verify_and_two_roots_for_one_size_are_a_split_view(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = _rig(cluster, tmp_path)
    key = rig.gateways[0].key
    topic = f"{PREFIX}/gateway/gw-1/checkpoint"
    first = sign_checkpoint(key, "gw-1", 5, b"\x01" * 32, b"\x02" * 32, 1000).note
    split = sign_checkpoint(key, "gw-1", 5, b"\x03" * 32, b"\x02" * 32, 2000).note
    forged = sign_checkpoint(rig.gateways[1].key, "gw-1", 6, b"\x04" * 32, b"\x02" * 32, 3000)
    rig.write([(topic, n.encode()) for n in (first, first, split, forged.note)])
    assert rig.rows("SELECT size, root FROM checkpoints") == [(5, b"\x01" * 32)]
    assert rig.rows("SELECT reason, gateway FROM alarms ORDER BY reason") == [
        ("rejected", None),
        ("split_view", "gw-1"),
    ]
    assert rig.rows("SELECT reason FROM rejections") == [("bad_checkpoint",)]
    rig.store.close()


def test_importing_a_seals_key_checks_the_records_already_held(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    seal = SimSeal("seal-h")
    rig = _rig(cluster, tmp_path)  # no seal keys yet: records are held unchecked
    (_, one), (_, two) = rig.gateways[0].records(seal, 2)
    impostor = make_event(seal.key, 3, seal.head, chip=SimChip())  # not the seal's chip
    three = rig.gateways[0].countersign(seal.device, 3, impostor)
    assert rig.write([(_topic(seal.device), c) for c in (one, two, three)]).stored == 3
    assert rig.rows("SELECT count(*) FROM records WHERE seal_verified IS NULL") == [(3,)]
    assert rig.rows("SELECT id FROM devices") == [("seal-h",)]
    rig.store.import_seal_keys([(seal.device, seal.chip.public)], source="test")
    checked = rig.rows("SELECT counter, seal_verified FROM records ORDER BY counter")
    assert checked == [(1, True), (2, True), (3, False)]
    assert rig.rows("SELECT reason, detail FROM alarms") == [("bad_seal_signature", {"counter": 3})]
    rig.store.close()


def test_a_rotated_gateway_key_is_learned_from_its_history_and_held_records_taken_again(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    seal = SimSeal("seal-r")
    rig = _rig(cluster, tmp_path, [seal])
    old = rig.gateways[0].key
    rotated = SimGateway("gw-1", GatewayKey.generate())
    transition = sign_transition(old, rotated.key, keys_origin("gw-1"), 1, 10, 1000)
    history = history_document("gw-1", old.public_raw(), [transition])
    keys_topic = f"{PREFIX}/gateway/gw-1/keys"
    (_, one), (_, two) = rotated.records(seal, 2)
    # Signed by the new key before its history arrived: refused, kept, alarmed.
    assert rig.write([(_topic(seal.device), one)]).rejected == 1
    stranger = GatewayKey.generate()  # a transition the pinned key never signed
    forged = history_document(
        "gw-1",
        old.public_raw(),
        [sign_transition(stranger, rotated.key, keys_origin("gw-1"), 1, 10, 1000)],
    )
    rig.write([(keys_topic, json.dumps(forged).encode())])
    assert rig.rows("SELECT reason FROM rejections ORDER BY id") == [
        ("unknown_key",), ("bad_key_history",),
    ]  # fmt: skip
    rig.write([(keys_topic, json.dumps(history).encode())])
    assert rig.rows("SELECT counter FROM records") == [(1,)]  # taken again, now verified
    assert rig.rows("SELECT reason FROM rejections") == [("bad_key_history",)]
    assert rig.write([(_topic(seal.device), two)]).stored == 1
    # A new instance knows the history from the database.
    later = FleetService(load_config(rig.config_path), rig.store)
    assert rotated.key.public_raw() in later.gateway_keys["gw-1"]
    assert rig.rows("SELECT count(*) FROM records WHERE chain_ok") == [(2,)]
    rig.store.close()


def test_a_record_postgresql_refuses_is_kept_as_a_rejection_and_the_batch_stored(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    """A seal id with a NUL (MQTT forbids it in topics; here it stands for any row PostgreSQL
    refuses for its content): the rest of its batch is stored, it is kept as a rejection."""
    good, odd = SimSeal("seal-g"), SimSeal("seal\x00odd")
    rig = _rig(cluster, tmp_path)
    gw = rig.gateways[0]
    batch = Batch()
    for seal in (good, odd):
        for _, cose in gw.records(seal, 2):
            rig.service.classify(_topic(seal.device), cose, batch)
    rig.service._commit(batch)  # the service's own path: refused batch -> one at a time
    assert rig.rows("SELECT device, counter FROM records ORDER BY counter") == [
        ("seal-g", 1), ("seal-g", 2),
    ]  # fmt: skip
    kept = rig.rows("SELECT topic, reason FROM rejections ORDER BY id")
    assert kept == [(f"{PREFIX}/seal\\x00odd/events", "unstorable")] * 2
    rig.store.close()


def test_out_of_range_counters_and_times(cluster: PostgresCluster, tmp_path: Path) -> None:
    """A counter beyond uint32 is refused (SPEC §4); a seal clock up to 2^64 - 1 is stored."""
    seal = SimSeal("seal-t")
    rig = _rig(cluster, tmp_path)
    gw = rig.gateways[0]
    big = cbor2.dumps({0: 4, 1: 2**32, 4: 0, 5: 0, 6: 0, 7: 0, 8: bytes(32)}, canonical=True)
    late = make_event(seal.key, 1, bytes(32), time_s=2**64 - 1)
    outcome = rig.write(
        [(_topic(seal.device), gw.countersign(seal.device, 2**32, big)),
         (_topic(seal.device), gw.countersign(seal.device, 1, late))]
    )  # fmt: skip
    assert (outcome.stored, outcome.rejected) == (1, 1)
    assert rig.rows("SELECT reason FROM rejections") == [("malformed",)]
    shown = sealink("fleet", "records", "--device", "seal-t", "--json", "-c", str(rig.config_path))
    assert json.loads(shown.stdout)["time_s"] == 2**64 - 1
    rig.store.close()
