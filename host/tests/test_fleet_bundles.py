"""Evidence bundles served from the fleet (issue 14), on real parts: a running gateway with a
simulated seal, a real Mosquitto, the fleet's ingest (FleetService) into a real PostgreSQL, and
`sealink fleet serve` in a process of its own, asked over real HTTP.

The fleet asks the record's gateway (SPEC §11.5 `bundle`, signed with the approver key the
gateway registered through `sealink approvers add`), verifies the answer under the keys it
holds, keeps it and serves it again with the gateway stopped. A gateway that does not answer is
a 504; a tampered answer is a 502 and is not kept. The tampered answer comes from a stand-in on
the gateway's request topic that signs its results with the gateway's key (as a gateway host
whose key was stolen would): a real gateway sends only the bundles its ledger makes. The tamper
is one fixed change (the countersignature's last hex digit), so it needs no seed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from approvals_rig import TIMEOUT_S, _seal
from conftest import DEVICE, GW, PREFIX, GatewayFiles, gateway_toml, run, running, sealink, until
from fleet_rig import Api, Rig, _count, _rig, _served
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sealink.approvals import ApprovalClient, ApproverKey
from sealink.config import Config
from sealink.config import load_config as load_gateway_config
from sealink.fleet import FleetService, Store, load_config
from sealink.mqtt.signed import MessageSigner
from sealink_sim.broker import Mosquitto
from sealink_sim.fleetrig import write_fleet_config
from sealink_sim.postgres import PostgresCluster
from sealink_sim.simdevice import SimChip
from sealink_verify.bundle import read_bundle, verify_bundle

APPROVER = "fleet-api"
_SILENT_S = 3  # [serve] bundle_timeout_s: how long the test waits for a gateway that is gone


def _bundle_path(counter: int) -> str:
    return f"/v1/records/{DEVICE}/{counter}/bundle"


def _fleet_config(tmp_path: Path, dsn: str, broker: Mosquitto, files: GatewayFiles) -> Path:
    """fleet.toml pinning the gateway's key, with an approver key the gateway registered."""
    key_file = tmp_path / "approver.key"
    made = sealink("approvers", "keygen", "--out", str(key_file))
    assert made.returncode == 0, made.stderr
    public = json.loads(made.stdout)["public_key"]
    gateway_config = gateway_toml(files, broker.port)
    added = sealink("approvers", "add", "--config", str(gateway_config), APPROVER,
                    "--public-key", public, "--actions", "bundle")  # fmt: skip
    assert added.returncode == 0, added.stderr
    pem = tmp_path / f"{GW}.pem"
    pem.write_bytes(files.key.public_pem())
    config = write_fleet_config(
        tmp_path / "fleet.toml", database=dsn, instance="fleet-b", port=broker.port,
        prefix=PREFIX, gateways={GW: pem},
    )  # fmt: skip
    with config.open("a", encoding="utf-8") as out:
        out.write(f'\n[serve]\napprover = "{APPROVER}"\napprover_key_file = "{key_file}"\n'
                  f"bundle_timeout_s = {_SILENT_S}\n")  # fmt: skip
    return config


async def _stamp_and_fetch(
    config: Config, files: GatewayFiles, api: Api, key: ApproverKey
) -> tuple[int, bytes, bytes]:
    """With the gateway running: two records stamped and ingested, record 1's bundle through
    the fleet; record 2's asked of the gateway directly (the test's copy, to tamper with)."""
    async with running(config) as gateway, _seal(gateway, files) as sim:
        await sim.stamp(2)
        await sim.wait_acked(2)
        await until(lambda: _count(api.rig.dsn) == 2, TIMEOUT_S, "both records in the fleet")
        await gateway.approvals.ready(TIMEOUT_S)
        status, first = await asyncio.to_thread(api.get_bytes, _bundle_path(1), api.token)
        public = files.key.public_raw()
        async with ApprovalClient(config.mqtt, key, APPROVER, PREFIX, GW, public) as client:
            await client.wait_connected(TIMEOUT_S)
            request = await client.request("bundle", DEVICE, counter=2)
            done = await client.wait(request, {"done", "refused"}, TIMEOUT_S)
    assert done["state"] == "done", done
    return status, first, base64.b64decode(done["bundle"])


@contextlib.contextmanager
def _stand_in(broker: Mosquitto, files: GatewayFiles, answer: bytes) -> Iterator[None]:
    """Answers every request on the gateway's request topic with `answer` as the bundle,
    signed with the gateway's key, on the request's response topic."""
    signer = MessageSigner(files.key, GW)
    ready = threading.Event()

    def on_message(client: mqtt.Client, _: object, message: mqtt.MQTTMessage) -> None:
        asked = message.properties
        topic = asked.ResponseTopic
        correlation = asked.CorrelationData
        body = {"request": correlation.decode(), "action": "bundle", "device": DEVICE,
                "state": "done", "bundle": base64.b64encode(answer).decode()}  # fmt: skip
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        client.publish(topic, signer.sign(topic, body), qos=1, properties=props)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = lambda *_: ready.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.subscribe(f"{PREFIX}/cmd/{GW}/request", qos=1)
        assert ready.wait(TIMEOUT_S), "the stand-in's subscription"
        yield
    finally:
        client.disconnect()
        client.loop_stop()


def _tampered(bundle: bytes) -> bytes:
    doc = json.loads(bundle)
    cose = doc["countersignature"]
    doc["countersignature"] = cose[:-1] + ("0" if cose[-1] != "0" else "1")
    return json.dumps(doc).encode()


def test_a_bundle_is_fetched_from_its_gateway_once_then_served_by_the_fleet(
    cluster: PostgresCluster,
    tmp_path: Path,
    files: GatewayFiles,
    broker: Mosquitto,
) -> None:
    dsn = cluster.database(f"t_{uuid.uuid4().hex[:12]}")
    fleet_config = _fleet_config(tmp_path, dsn, broker, files)
    assert sealink("fleet", "migrate", "--config", str(fleet_config)).returncode == 0
    store = Store(dsn, instance="fleet-b")
    seal_key = SimChip.of(files.device_keys[DEVICE]).public
    store.import_seal_keys([(DEVICE, seal_key)], source="test")
    service = FleetService(load_config(fleet_config), store).start()
    key = ApproverKey.load(tmp_path / "approver.key")
    kept = f"SELECT count(*) FROM bundles WHERE device = '{DEVICE}' AND counter = 2"
    try:
        with _served(Rig(dsn, fleet_config, [], store, service)) as api:
            config = load_gateway_config(files.root / "sealink.toml")
            status, first, second = run(_stamp_and_fetch(config, files, api, key), timeout=120)
            assert status == 200, first
            report = verify_bundle(read_bundle(first.decode()), files.key.public_raw(), seal_key)
            assert report.status == "verified", report.problems
            assert _count(dsn, "SELECT count(*) FROM bundles") == 1
            # The gateway is stopped: the kept bundle is served from PostgreSQL, byte for byte.
            assert api.get_bytes(_bundle_path(1), api.token) == (200, first)
            status, body = api.get(_bundle_path(2), api.token)
            assert status == 504 and GW in body["error"], body
            assert api.get(_bundle_path(9), api.token) == (404, {"error": "no such record"})
            assert api.get(_bundle_path(1)) == (401, {"error": "unauthorized"})
            with _stand_in(broker, files, _tampered(second)):
                status, body = api.get(_bundle_path(2), api.token)
            assert status == 502 and "countersignature" in body["error"], body
            assert _count(dsn, kept) == 0  # refused, not kept
            with _stand_in(broker, files, second):  # the same stand-in, the bundle untouched
                assert api.get_bytes(_bundle_path(2), api.token) == (200, second)
            assert _count(dsn, kept) == 1
            assert api.get_bytes(_bundle_path(2), api.token) == (200, second)
    finally:
        service.stop()
        store.close()


def test_an_approver_that_will_not_load_stops_serve_with_one_line(
    cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    rig = _rig(cluster, tmp_path)
    rig.store.close()
    readable = tmp_path / "readable.key"
    ApproverKey.generate().save(readable)
    readable.chmod(0o644)
    for serve, words in (
        (f'approver = "{APPROVER}"', "approver and approver_key_file go together"),
        (f'approver = "a b"\napprover_key_file = "{readable}"', "not an approver name"),
        (f'approver = "{APPROVER}"\napprover_key_file = "{tmp_path / "none.key"}"',
         "cannot read"),
        (f'approver = "{APPROVER}"\napprover_key_file = "{readable}"', "chmod 600"),
    ):  # fmt: skip
        config = tmp_path / "bad.toml"
        config.write_text(f"{rig.config_path.read_text(encoding='utf-8')}\n[serve]\n{serve}\n")
        done = sealink("fleet", "serve", "--config", str(config), "--listen", "127.0.0.1:0")
        assert done.returncode != 0 and not done.stdout, (serve, done.stdout)
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
