"""The test broker and the independent observer, on their own: what the other suites rely on."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sealink.crypto.signer import GatewayKey, countersign_payload
from sealink.errors import ObserverError
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-pub", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _events(key: GatewayKey, device: str, count: int, first: int = 1) -> list[bytes]:
    prev, out = bytes(32), []
    for counter in range(1, first + count):
        event = cbor2.dumps({0: 4, 1: counter, 8: prev, 15: bytes(32)}, canonical=True)
        prev = hashlib.sha256(event).digest()
        if counter >= first:
            payload = countersign_payload(device, counter, event, int(time.time() * 1000), "gw")
            out.append(key.sign1(payload))
    return out


def test_a_restarted_broker_keeps_queued_messages_for_a_persistent_subscriber(
    tmp_path: Path,
) -> None:
    key = GatewayKey.generate()
    with Mosquitto(tmp_path / "broker") as broker:
        port = broker.port
        with Observer("127.0.0.1", port, key.public_pem(), client_id="t-obs") as observer:
            pass  # subscribed once: the session (expiry 1 h) now lives in the broker
        client = _publisher(port)
        for cose in _events(key, "seal-1", 5):
            client.publish("sealink/seal-1/events", cose, qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        broker.stop()
        broker.start()
        assert broker.port == port
        with Observer("127.0.0.1", port, key.public_pem(), client_id="t-obs") as observer:
            tally = observer.wait_for("seal-1", 5, timeout=10)
    assert (tally.verified, tally.lost, tally.invalid) == (5, 0, 0)


def test_the_observer_rejects_a_signature_by_another_key(broker: Mosquitto) -> None:
    real, forger = GatewayKey.generate(), GatewayKey.generate()
    with Observer("127.0.0.1", broker.port, real.public_pem()) as observer:
        client = _publisher(broker.port)
        for cose in _events(forger, "seal-1", 2):
            client.publish("sealink/seal-1/events", cose, qos=1).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
        observer.wait_until(lambda o: o.device("seal-1").invalid >= 2, 10, "2 rejections")
        with pytest.raises(ObserverError, match="timed out"):
            observer.wait_for("seal-1", 1, timeout=0.2)
    assert observer.device("seal-1").verified == 0
    assert "does not verify" in observer.problems[0]


def test_a_killed_broker_restarts_on_the_same_port(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        port = broker.port
        broker.kill()
        assert not broker.running
        broker.start()
        assert broker.running and broker.port == port
        assert "running" in broker.log_path.read_text()
