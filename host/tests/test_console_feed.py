"""The console's live model (sealink.console.feed) shows only what verifies: records by the
gateway's countersignature under the pinned key, status and alarms by SPEC §11.4's checks.
Messages are made by the gateway's own signing code and then forged; no broker is needed
(Feed.handle is the decision, the MQTT client only moves bytes)."""

from __future__ import annotations

import json

import pytest
from sealink.config import MqttConfig
from sealink.console.feed import Alarm, Feed, Health, Impression, Rejected, kind_name
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.mqtt.signed import MessageSigner
from sealink_sim.simdevice import make_event
from sealproto import auth

PREFIX = "sealink-test"
DEVICE = "seal-0001"


@pytest.fixture
def key() -> GatewayKey:
    return GatewayKey.generate()


def _feed(key: GatewayKey) -> Feed:
    return Feed(MqttConfig(prefix=PREFIX), {"gw-1": [key.public_raw()]}, "test-feed")


def _record(key: GatewayKey, counter: int = 1, device: str = DEVICE, **fields: int) -> bytes:
    event = make_event(b"k" * 32, counter, auth.GENESIS, **fields)
    return key.sign1(countersign_payload(device, counter, event, 1_790_000_000_000, "gw-1"))


def test_a_countersigned_record_is_decoded_from_its_signed_event(key: GatewayKey) -> None:
    feed = _feed(key)
    cose = _record(key, permit=7, operator=42, time_s=1_790_000_000)
    update = feed.handle(f"{PREFIX}/{DEVICE}/events", cose)
    assert isinstance(update, Impression)
    assert (update.device, update.counter, update.kind_name) == (DEVICE, 1, "impression")
    assert (update.permit, update.operator, update.time_s) == (7, 42, 1_790_000_000)
    assert update.gateway == "gw-1" and update.cose == cose
    # At-least-once delivery: the same (device, counter) again is no news.
    assert feed.handle(f"{PREFIX}/{DEVICE}/events", cose) is None


def test_records_that_do_not_verify_are_rejected_never_shown(key: GatewayKey) -> None:
    feed = _feed(key)
    other = GatewayKey.generate()
    forged = _record(other)
    tampered = bytearray(_record(key, counter=2))
    tampered[-1] ^= 1
    cases = {
        "another key": (f"{PREFIX}/{DEVICE}/events", forged),
        "a flipped bit": (f"{PREFIX}/{DEVICE}/events", bytes(tampered)),
        "another device's topic": (f"{PREFIX}/seal-9999/events", _record(key, counter=3)),
        "garbage": (f"{PREFIX}/{DEVICE}/events", b"\x00not cbor"),
        "unsigned JSON": (f"{PREFIX}/{DEVICE}/events", json.dumps({"counter": 4}).encode()),
    }
    for what, (topic, payload) in cases.items():
        assert isinstance(feed.handle(topic, payload), Rejected), what
    assert not feed.impressions


def test_status_and_alarms_are_checked_and_a_rolled_back_status_refused(key: GatewayKey) -> None:
    feed = _feed(key)
    signer = MessageSigner(key, "gw-1")
    topic = f"{PREFIX}/{DEVICE}/status"
    older = signer.sign(topic, {"device": DEVICE, "gateway": "gw-1", "online": True})
    newer = signer.sign(topic, {"device": DEVICE, "gateway": "gw-1", "battery_mv": 3700})
    health = feed.handle(topic, newer)
    assert isinstance(health, Health) and health.get("battery_mv") == 3700
    assert isinstance(feed.handle(topic, older), Rejected)  # an older retained status put back
    assert feed.handle(topic, newer) is None  # a redelivery
    assert isinstance(feed.handle(f"{PREFIX}/seal-0002/status", newer), Rejected)  # replayed
    alarms = f"{PREFIX}/{DEVICE}/alarms"
    body = {"device": DEVICE, "gateway": "gw-1", "code_name": "forced_stamp", "source": "device"}
    alarm = feed.handle(alarms, signer.sign(alarms, body))
    assert isinstance(alarm, Alarm) and alarm.what == "forced_stamp" and not alarm.quarantine
    stranger = MessageSigner(GatewayKey.generate(), "gw-1")
    assert isinstance(feed.handle(alarms, stranger.sign(alarms, body)), Rejected)
    assert isinstance(feed.handle(alarms, json.dumps(body).encode()), Rejected)
    assert list(feed.alarms) == [alarm]


def test_a_gateway_alarm_is_filed_under_the_gateway(key: GatewayKey) -> None:
    feed = _feed(key)
    topic = f"{PREFIX}/gateway/gw-1/alarms"
    body = {"gateway": "gw-1", "reason": "chain_break", "quarantine": True, "source": "gateway"}
    alarm = feed.handle(topic, MessageSigner(key, "gw-1").sign(topic, body))
    assert isinstance(alarm, Alarm)
    assert (alarm.device, alarm.what, alarm.quarantine) == ("gateway/gw-1", "chain_break", True)


def test_kinds_are_named_as_the_spec_names_them_and_unknown_ones_by_number() -> None:
    assert [kind_name(k) for k in (0, 1, 6, 42)] == ["impression", "forced", "unrecorded", "kind42"]
