"""The fleet as a checker of consistency (SPEC §14.6, issue 14): `sealink fleet run` proves
each gateway's checkpoints extend one another, asking the gateway for the consistency proofs
over a real Mosquitto, into a real PostgreSQL.

A real gateway answers in the first test. The others answer from a real ledger (evidence_rig's
Rig) with the gateway's own reply code (consistency_reply), as test_witness.py does: a test
cannot make a real gateway rewrite its log, go silent on cue, or sign a rollback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from conftest import Feed, GatewayFiles, run, running, sealink, until
from evidence_rig import GATEWAY, ORIGIN, Rig
from fleet_rig import _wait
from sealink.config import LedgerConfig
from sealink.evidence import heads_hash, sign_checkpoint
from sealink.fleet import FleetService, Store, load_config, migrate, migrations
from sealink.gateway.witnesses import consistency_reply
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.postgres import PostgresCluster
from tap_rig import Tap

PREFIX = "sealink-test"
_WAIT_S = 30.0


@dataclasses.dataclass
class Fleet:
    """Fleet instances on one database, and what it holds."""

    dsn: str
    config: Path
    services: list[FleetService]
    started: list[FleetService]  # every one started, for the teardown

    def restart(self, n: int) -> None:
        """Stop instance n and start it again (its client id, its session, the database)."""
        old = self.services[n]
        old.stop()
        self.services[n] = FleetService(old.config, old.store).start()
        self.started.append(self.services[n])
        assert self.services[n].connected.wait(_WAIT_S), "fleet: not subscribed again"

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return list(conn.execute(sql, params).fetchall())

    def states(self) -> list[tuple[int, str]]:
        return [(int(s), str(t)) for s, t in self.rows(
            "SELECT size, state FROM checkpoints ORDER BY size")]  # fmt: skip

    def listed(self, *args: str) -> list[dict[str, Any]]:
        done = sealink("fleet", "checkpoints", "--config", str(self.config), "--json", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def fleet_factory(
    cluster: PostgresCluster, broker: Mosquitto, tmp_path: Path
) -> Iterator[Callable[..., Fleet]]:
    started: list[FleetService] = []
    stores: list[Store] = []

    def make(
        gateway: str, public_pem: bytes, instances: int = 1, proof_timeout_s: float = 10.0
    ) -> Fleet:
        dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
        pem = tmp_path / f"{gateway}.pem"
        pem.write_bytes(public_pem)
        services = []
        for n in range(1, instances + 1):
            path = write_fleet_config(
                tmp_path / f"fleet-{n}.toml", database=dsn, instance=f"fleet-{n}",
                port=broker.port, prefix=PREFIX, gateways={gateway: pem},
            )  # fmt: skip
            if n == 1:
                done = sealink("fleet", "migrate", "--config", str(path))
                assert done.returncode == 0, done.stderr
            # A short retry: the offline test sees one in a second, not in 30.
            config = dataclasses.replace(
                load_config(path), proof_timeout_s=proof_timeout_s, proof_retry_s=1
            )
            store = Store(dsn, instance=config.instance)
            stores.append(store)
            service = FleetService(config, store).start()
            started.append(service)
            assert service.connected.wait(_WAIT_S), "fleet: not subscribed"
            services.append(service)
        return Fleet(dsn, tmp_path / "fleet-1.toml", services, started)

    yield make
    for service in started:
        service.stop()
    for store in stores:
        store.close()


class StandIn:
    """Answers proof requests for GATEWAY from a real ledger, with the gateway's reply code;
    `online` False: it hears them and says nothing (a gateway away)."""

    def __init__(self, port: int, rig: Rig) -> None:
        self.ledger = SimpleNamespace(ledger=rig.ledger)
        self.online = True
        self.requests: list[tuple[int, int]] = []
        self.checkpoints = f"{PREFIX}/gateway/{GATEWAY}/checkpoint"
        self.tap = Tap(port, [f"{PREFIX}/gateway/{GATEWAY}/proof/request"])
        self.tap.on_message = self._answer

    def _answer(self, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        self.requests.append((body["old_size"], body["new_size"]))
        if not self.online:
            return
        reply = consistency_reply(self.ledger, bytes(msg.payload))  # type: ignore[arg-type]
        threading.Thread(
            target=self.tap.publish,
            args=(msg.properties.ResponseTopic, json.dumps(reply).encode()),
            kwargs={"CorrelationData": msg.properties.CorrelationData},
        ).start()

    def publish(self, note: str) -> None:
        self.tap.publish(self.checkpoints, note.encode(), retain=True)


@pytest.fixture
def stand_in_factory(broker: Mosquitto) -> Iterator[Callable[[Rig], StandIn]]:
    made: list[StandIn] = []

    def make(rig: Rig) -> StandIn:
        made.append(StandIn(broker.port, rig))
        return made[-1]

    yield make
    for stand_in in made:
        stand_in.tap.close()


def _grown(rig: Rig, *counts: int) -> list[Any]:
    """A checkpoint after each batch of events."""
    made = []
    for count in counts:
        rig.add("seal-a", count)
        made.append(rig.checkpoint())
    return made


def test_a_real_gateways_growing_log_is_proved_checkpoint_by_checkpoint(
    files: GatewayFiles, broker: Mosquitto, fleet_factory: Any
) -> None:
    fleet = fleet_factory("gw-test", files.key.public_pem())
    config = dataclasses.replace(
        files.config(broker.port), ledger=LedgerConfig(checkpoint_interval_s=3600)
    )

    async def body() -> None:
        async with running(config) as gateway:
            feed = Feed(files, gateway)
            for n in (1, 2, 3):
                assert await feed.checkpoint() == n
                judged = list(range(1, n + 1))
                # A quick query polled on the loop: the gateway answers the proof meanwhile.
                await until(lambda judged=judged: [s for s, t in fleet.states() if t != "unproved"]
                            == judged, _WAIT_S, f"checkpoint {n} judged")  # fmt: skip

    run(body())
    assert fleet.states() == [(1, "first"), (2, "proved"), (3, "proved")]
    assert fleet.rows("SELECT size, proved_from, proof->>'type', checked_by FROM checkpoints "
                      "WHERE state = 'proved' ORDER BY size") == [
        (2, 1, "consistency", "fleet-1"), (3, 2, "consistency", "fleet-1")]  # fmt: skip
    assert fleet.rows("SELECT reason FROM alarms WHERE source = 'fleet'") == []
    listed = fleet.listed("--gateway", "gw-test")
    assert [(c["size"], c["state"], c["proved_from"]) for c in listed] == [
        (1, "first", None), (2, "proved", 1), (3, "proved", 2)]  # fmt: skip
    assert all(isinstance(c["time_ms"], int) and len(c["root"]) == 64 for c in listed)
    assert fleet.listed("--gateway", "gw-other") == []
    text = sealink("fleet", "checkpoints", "--config", str(fleet.config))
    assert text.returncode == 0 and "proved" in text.stdout and "from 2" in text.stdout


def test_a_rewritten_log_is_bad_proof_and_a_second_root_a_split_view_with_the_evidence(
    tmp_path: Path, fleet_factory: Any, stand_in_factory: Any
) -> None:
    honest = Rig(tmp_path / "honest")
    (three,) = _grown(honest, 3)
    # The same gateway key over a log whose second record was rewritten, then grown: its
    # checkpoint of size 6 verifies under the key but does not extend the honest size 3.
    rewritten = Rig(tmp_path / "rewritten", key=honest.key)
    rewritten.add("seal-a", 3, rewrite=2)
    forked_three = rewritten.checkpoint()
    (six,) = _grown(rewritten, 3)
    fleet = fleet_factory(GATEWAY, honest.pem())
    stand_in = stand_in_factory(rewritten)  # the rewriter answers, with its own proof 3 -> 6
    stand_in.publish(three.note)
    _wait(lambda: fleet.states() == [(3, "first")], "size 3 trusted on first use")
    stand_in.publish(six.note)
    _wait(lambda: fleet.states() == [(3, "first"), (6, "bad_proof")], "6 refused")
    assert stand_in.requests == [(3, 6)]
    ((detail,),) = fleet.rows("SELECT detail FROM alarms WHERE reason = 'bad_proof'")
    assert (detail["size"], detail["head_size"]) == (6, 3)
    assert (detail["note"], detail["head_note"]) == (six.note, three.note)
    assert detail["proof"]["type"] == "consistency" and detail["proof"]["new_size"] == 6
    # the rewriter's own size 3 (another root): a split view, both notes kept
    stand_in.publish(forked_three.note)
    _wait(lambda: bool(fleet.rows("SELECT 1 FROM alarms WHERE reason = 'split_view'")), "split")
    ((split,),) = fleet.rows("SELECT detail FROM alarms WHERE reason = 'split_view'")
    assert split["notes"] == [three.note, forked_three.note]
    assert split["roots"] == [three.root.hex(), forked_three.root.hex()]
    listed = fleet.listed()
    assert [(c["size"], c["state"], c["root"]) for c in listed] == [
        (3, "first", three.root.hex()), (3, "split_view", forked_three.root.hex()),
        (6, "bad_proof", six.root.hex())]  # fmt: skip
    assert listed[1]["time_ms"] == forked_three.time_ms
    # the head is still the honest 3: an honest 6 would be proved against it, not against
    # anything the refused ones said
    assert fleet.rows("SELECT max(size) FROM checkpoints WHERE state IN ('first', 'proved')") == [
        (3,)
    ]


def test_a_rollback_is_alarmed_without_a_proof_and_a_late_older_checkpoint_is_proved(
    tmp_path: Path, fleet_factory: Any, stand_in_factory: Any
) -> None:
    rig = Rig(tmp_path / "rig")
    three, six = _grown(rig, 3, 3)
    fleet = fleet_factory(GATEWAY, rig.pem())
    stand_in = stand_in_factory(rig)
    stand_in.publish(six.note)
    _wait(lambda: fleet.states() == [(6, "first")], "size 6 first")
    # delivered late (an instance that was away gets the older one after): proved 3 -> 6
    stand_in.publish(three.note)
    _wait(lambda: fleet.states() == [(3, "proved"), (6, "first")], "3 proved against 6")
    assert stand_in.requests == [(3, 6)]
    # signed after the head yet smaller; larger yet signed before it: rollbacks, no proof asked
    smaller = sign_checkpoint(rig.key, ORIGIN, 2, os.urandom(32), heads_hash([]), six.time_ms + 1)
    earlier = sign_checkpoint(rig.key, ORIGIN, 9, os.urandom(32), heads_hash([]), six.time_ms - 1)
    for note in (smaller.note, earlier.note):
        stand_in.publish(note)
    _wait(lambda: len(fleet.rows("SELECT 1 FROM alarms WHERE reason = 'rollback'")) == 2, "both")
    assert fleet.states() == [(2, "rollback"), (3, "proved"), (6, "first"), (9, "rollback")]
    assert stand_in.requests == [(3, 6)]
    kept = fleet.rows("SELECT detail->>'size', detail->>'note', detail->>'head_note' FROM "
                      "alarms WHERE reason = 'rollback' ORDER BY 1")  # fmt: skip
    assert kept == [("2", smaller.note, six.note), ("9", earlier.note, six.note)]


def test_an_offline_gateways_checkpoint_stays_unproved_and_is_proved_once_it_answers(
    tmp_path: Path, fleet_factory: Any, stand_in_factory: Any
) -> None:
    rig = Rig(tmp_path / "rig")
    three, six = _grown(rig, 3, 3)
    fleet = fleet_factory(GATEWAY, rig.pem(), proof_timeout_s=1)
    stand_in = stand_in_factory(rig)
    stand_in.publish(three.note)
    _wait(lambda: fleet.states() == [(3, "first")], "size 3 first")
    stand_in.online = False
    stand_in.publish(six.note)
    _wait(lambda: bool(fleet.rows("SELECT 1 FROM checkpoints WHERE size = 6 AND attempts >= 2")),
          "two unanswered attempts")  # fmt: skip
    assert fleet.states() == [(3, "first"), (6, "unproved")]
    assert fleet.rows("SELECT reason FROM alarms WHERE source = 'fleet'") == []
    listed = fleet.listed()
    assert listed[1]["state"] == "unproved" and listed[1]["attempts"] >= 2
    fleet.restart(0)  # what is left to prove is in the database, not in the instance
    stand_in.online = True
    _wait(lambda: fleet.states() == [(3, "first"), (6, "proved")], "6 proved once answered")
    assert set(stand_in.requests) == {(3, 6)}
    # a checkpoint the gateway never made (its key elsewhere): it answers with an error, which
    # proves nothing either way: unproved, asked again, not alarmed
    stranger = sign_checkpoint(rig.key, ORIGIN, 9, os.urandom(32), heads_hash([]), six.time_ms)
    stand_in.publish(stranger.note)
    _wait(lambda: bool(fleet.rows("SELECT 1 FROM checkpoints WHERE size = 9 AND attempts >= 2")),
          "two error replies")  # fmt: skip
    assert fleet.rows("SELECT state, proof->>'type' FROM checkpoints WHERE size = 9") == [
        ("unproved", "error")]  # fmt: skip
    assert fleet.rows("SELECT reason FROM alarms WHERE source = 'fleet'") == []


def test_two_instances_prove_each_checkpoint_once(
    tmp_path: Path, fleet_factory: Any, stand_in_factory: Any
) -> None:
    rig = Rig(tmp_path / "rig")
    made = _grown(rig, 2, 3, 3, 1, 4)
    fleet = fleet_factory(GATEWAY, rig.pem(), 2)
    stand_in = stand_in_factory(rig)
    for checkpoint in made:
        stand_in.publish(checkpoint.note)
    sizes = [c.size for c in made]
    _wait(lambda: [s for s, state in fleet.states() if state != "unproved"] == sizes, "all")
    states = dict(fleet.states())
    assert sorted(states.values()) == ["first"] + ["proved"] * (len(sizes) - 1)
    # each checkpoint judged by one instance, with one proof: never asked twice
    assert len(stand_in.requests) == len(set(stand_in.requests)) == len(sizes) - 1
    assert {b for (b,) in fleet.rows("SELECT checked_by FROM checkpoints")} <= {
        "fleet-1", "fleet-2"}  # fmt: skip


def test_checkpoints_stored_before_the_migration_get_their_time_and_wait_to_be_proved(
    cluster: PostgresCluster, tmp_path: Path
) -> None:
    rig = Rig(tmp_path / "rig")
    (three,) = _grown(rig, 3)
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (name text PRIMARY KEY, applied_ms bigint)")
        for name, sql in migrations():
            if name >= "0004":
                break
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (name,))
        conn.execute(
            "INSERT INTO checkpoints (gateway, size, root, note, received_ms) "
            "VALUES (%s, 3, %s, %s, 0)",
            (GATEWAY, three.root, three.note),
        )
        assert "0004_checkpoint_consistency.sql" in migrate(conn)
        held = conn.execute("SELECT time_ms, state, attempts FROM checkpoints").fetchall()
    assert held == [(three.time_ms, "unproved", 0)]
