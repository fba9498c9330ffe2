"""The console's and the watch's feed across a gateway key rotation (SPEC §14.7): the history is
walked from the pinned key, as the fleet does; a history that does not chain from it is refused.
And the feed's memory of the (device, counter) pairs it has shown stays bounded.

The rotation test runs a real gateway and a real Mosquitto, with `sealink keys rotate` between
two runs; the seal is simulated (SimDevice) on an in-process pipe link.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import paho.mqtt.client as mqtt
from conftest import DEVICE, GatewayFiles, run, running, sealink
from sealink.config import MqttConfig
from sealink.console.feed import Feed, Health, Impression, Rejected, Update, _Seen
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.evidence.keys import history_document, keys_origin, sign_transition
from sealink.mqtt.signed import MessageSigner
from sealink_sim.broker import Mosquitto
from sealink_sim.pipe import pipe_pair
from sealink_sim.simdevice import SimDevice, make_event
from sealproto import auth

_WAIT_S = 20.0
PREFIX = "sealink-test"


async def _until(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _WAIT_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {_WAIT_S} s waiting for {what}")
        await asyncio.sleep(0.02)


def _publish_retained(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_gateway_that_rotates_its_key_mid_run_stays_verified(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    conf = files.root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-test"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
    )
    config = files.config(broker.port)
    first = files.key
    updates: list[Update] = []
    feed = Feed(
        config.mqtt, {"gw-test": [first.public_raw()]}, "console-rotation", [updates.append]
    )
    key = files.device_keys[DEVICE]

    def impressions() -> list[int]:
        return sorted(u.counter for u in updates if isinstance(u, Impression))

    async def one_run(round_: int, journal: list[bytes]) -> list[bytes]:
        async with running(config) as gateway:
            host, dev = pipe_pair(f"rotation{round_}")
            gateway.attach(host)
            sim = SimDevice(DEVICE, key, dev)
            sim.journal, sim.acked = list(journal), len(journal)
            async with sim:
                await asyncio.wait_for(sim.welcomed.wait(), _WAIT_S)
                await sim.send_status(ST_BATTERY=3000 + round_)
                await sim.stamp(2)
                await sim.wait_acked(len(journal) + 2)
                count = len(journal) + 2
                await _until(lambda: impressions() == list(range(1, count + 1)), "records")
                await _until(
                    lambda: (
                        (h := feed.devices.get(DEVICE)) is not None
                        and h.get("battery_mv") == 3000 + round_
                    ),
                    "the seal's status",
                )
                return sim.journal

    async def body() -> None:
        async with feed:
            await feed.wait_connected(_WAIT_S)
            journal = await one_run(0, [])
            done = await asyncio.to_thread(sealink, "keys", "rotate", "--config", str(conf))
            assert done.returncode == 0, done.stderr
            rotated = GatewayKey.load(files.key_file)
            assert rotated.kid != first.kid
            await one_run(1, journal)
            # A history whose transition the pinned key never signed: refused, and the keys
            # learned before are kept.
            stranger = GatewayKey.generate()
            forged = history_document(
                "gw-test",
                first.public_raw(),
                [sign_transition(stranger, GatewayKey.generate(), keys_origin("gw-test"), 1, 4, 1)],
            )
            topic = f"{config.mqtt.prefix}/gateway/gw-test/keys"
            await asyncio.to_thread(
                _publish_retained, broker.port, topic, json.dumps(forged).encode()
            )
            await _until(
                lambda: any(isinstance(u, Rejected) and u.topic == topic for u in updates),
                "the forged key history refused",
            )

    run(body(), timeout=120)
    assert impressions() == [1, 2, 3, 4]  # each once, each verified
    health = [u for u in updates if isinstance(u, Health)]
    assert health[-1].get("battery_mv") == 3001  # the status signed with the new key
    refused = [u for u in updates if isinstance(u, Rejected)]
    # Only a message that came before the history it needed may have been held (and then
    # shown verified), besides the forged history.
    assert all("unknown_key" in r.reason or "UnknownKey" in r.reason for r in refused[:-1])
    assert "key history" in refused[-1].reason and "the chain skips a key" in refused[-1].reason


def _record(key: GatewayKey, counter: int) -> bytes:
    event = make_event(b"k" * 32, counter, auth.GENESIS)
    return key.sign1(countersign_payload(DEVICE, counter, event, 1_790_000_000_000, "gw-1"))


def test_records_of_a_key_learned_later_are_held_then_shown_and_other_histories_refused() -> None:
    first, second = GatewayKey.generate(), GatewayKey.generate()
    feed = Feed(MqttConfig(prefix=PREFIX), {"gw-1": [first.public_raw()]}, "test-feed")
    events, keys = f"{PREFIX}/{DEVICE}/events", f"{PREFIX}/gateway/gw-1/keys"
    status = f"{PREFIX}/{DEVICE}/status"
    early = feed.updates(events, _record(second, 1))
    assert [type(u) for u in early] == [Rejected]  # a key nobody had yet
    signed = MessageSigner(second, "gw-1").sign(status, {"device": DEVICE, "battery_mv": 3100})
    assert [type(u) for u in feed.updates(status, signed)] == [Rejected]
    transition = sign_transition(first, second, keys_origin("gw-1"), 1, 0, 1000)
    not_pinned = history_document("gw-1", second.public_raw(), [])
    [refused] = feed.updates(keys, json.dumps(not_pinned).encode())
    assert isinstance(refused, Rejected) and "not the pinned key" in refused.reason
    other_gateway = sign_transition(first, second, keys_origin("gw-2"), 1, 0, 1000)
    doc = history_document("gw-1", first.public_raw(), [other_gateway])
    [refused] = feed.updates(keys, json.dumps(doc).encode())
    assert isinstance(refused, Rejected) and "not sealink/gateway/gw-1/keys" in refused.reason
    [refused] = feed.updates(keys, b"{not json")
    assert isinstance(refused, Rejected)
    assert feed.updates(f"{PREFIX}/gateway/gw-9/keys", b"{}")[0].reason.endswith("not followed")
    doc = history_document("gw-1", first.public_raw(), [transition])
    retried = feed.updates(keys, json.dumps(doc).encode())
    assert sorted(type(u).__name__ for u in retried) == ["Health", "Impression"]
    assert feed.updates(keys, json.dumps(doc).encode()) == []  # nothing new
    assert isinstance(feed.handle(events, _record(second, 2)), Impression)
    assert isinstance(feed.handle(events, _record(first, 3)), Impression)  # the first key too
    # `sealink watch` started after the rotation pins the current key: no news, no refusal.
    watch = Feed(MqttConfig(prefix=PREFIX), {"gw-1": [second.public_raw()]}, "test-watch")
    assert watch.updates(keys, json.dumps(doc).encode()) == []


def test_the_counters_seen_stay_bounded_and_redeliveries_stay_no_news() -> None:
    seen = _Seen(ahead=8)
    assert [seen.add("d", c) for c in (1, 2, 2, 1, 3)] == [True, True, False, False, True]
    assert seen.size("d") == 0  # all contiguous: nothing held but the floor
    for counter in range(5, 13):  # 4 is missing: the counters above it are held
        assert seen.add("d", counter)
    assert seen.size("d") == 8
    assert not seen.add("d", 7)  # a redelivery above the gap
    assert seen.add("d", 4)  # the gap filled: all folded into the floor
    assert seen.size("d") == 0 and not seen.add("d", 12)
    # A gap that never fills (a console started mid-stream): at most `ahead` held.
    for counter in range(1000, 1100):
        assert seen.add("e", counter)
        assert seen.size("e") <= 8
    assert not seen.add("e", 1050) and seen.add("e", 1100)
    assert seen.size("d") + seen.size("e") <= 16
