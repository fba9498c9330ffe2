"""The decoded JSON companion of each record (SPEC §11.2, `<prefix>/<device>/events/json`):
a real gateway, a real Mosquitto, a simulated seal over a pty, and a plain paho subscriber
that checks every companion against the countersigned record it verified with cwt."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from conftest import DEVICE, GatewayFiles, PtyLink, run, running
from cwt import COSE, COSEKey
from paho.mqtt.enums import CallbackAPIVersion
from sealink.config import ConfigError, PortConfig, parse_mqtt
from sealink.gateway.companion import COMPANION_NOTE, companion_body
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimDevice, make_event
from sealink_verify import derive_kid
from sealproto import messages

PREFIX = "sealink-test"
EVENTS = f"{PREFIX}/{DEVICE}/events"
COMPANION = f"{PREFIX}/{DEVICE}/events/json"
TIMEOUT_S = 20.0


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user: dict[str, str]


class _Subscriber:
    """A plain paho MQTT 5 client on `<prefix>/#`, as a Node-RED flow would be."""

    def __init__(self, port: int) -> None:
        self.messages: list[_Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{PREFIX}/#", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber: no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        user = dict(getattr(msg.properties, "UserProperty", []) or [])
        message = _Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), user)
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def on(self, topic: str) -> list[_Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, ready: Callable[[], bool], what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, TIMEOUT_S):
                topics = sorted({m.topic for m in self.messages})
                raise AssertionError(f"not {what} in {TIMEOUT_S} s; topics seen: {topics}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: Mosquitto) -> Any:
    sub = _Subscriber(broker.port)
    yield sub
    sub.close()


def _verified(files: GatewayFiles, cose: bytes) -> dict[str, Any]:
    """The countersigned map of SPEC §11.1, verified with cwt (not the gateway's own code)."""
    pem = files.key.public_pem()
    key = COSEKey.from_pem(pem, kid=derive_kid(pem))
    signed: dict[str, Any] = cbor2.loads(COSE.new().decode(cose, key))
    return signed


def _stamp_mixed(sim: SimDevice) -> None:
    sim.record(2, permit=7, operator=42, time_s=1_790_000_000, uptime_ms=1234)
    sim.record(1, kind=messages.KIND_FORCED, time_s=1_790_000_060)
    sim.record(1, kind=messages.KIND_TAMPER)


def test_each_record_has_a_json_companion_that_matches_its_countersigned_record(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink, subscriber: _Subscriber
) -> None:
    config = files.config(broker.port, ports=(PortConfig(pty_link.host_path),))

    async def body() -> list[dict[str, Any]]:
        async with (
            running(config) as gateway,
            SimDevice(DEVICE, files.device_keys[DEVICE], pty_link.device_end) as sim,
        ):
            await asyncio.wait_for(sim.welcomed.wait(), 10)
            _stamp_mixed(sim)
            await sim.send_backlog()
            await sim.wait_acked(4)
            await asyncio.to_thread(
                subscriber.wait, lambda: len(subscriber.on(COMPANION)) >= 4, "4 companions"
            )
            async with asyncio.timeout(TIMEOUT_S):
                while await gateway.db(gateway.ledger.unpublished_count):
                    await asyncio.sleep(0.02)
            return await gateway.db(lambda: list(gateway.ledger.events(DEVICE)))

    events = run(body())
    rows = _outbox(files, "topic, payload, counter")

    covers = {m.payload: m for m in subscriber.on(EVENTS)}
    companions = {json.loads(m.payload)["counter"]: m for m in subscriber.on(COMPANION)}
    assert sorted(companions) == [1, 2, 3, 4]
    for counter, message in companions.items():
        got = json.loads(message.payload)
        [cose] = [c for c in covers if hashlib.sha256(c).hexdigest() == got["cose_sha256"]]
        signed = _verified(files, cose)
        record = cbor2.loads(signed["event"])
        assert got == {
            "device": signed["device"],
            "gateway": signed["gateway"],
            "counter": signed["counter"],
            "kind": record[messages.EV_KIND],
            "kind_name": {0: "impression", 1: "forced", 2: "tamper"}[record[messages.EV_KIND]],
            "permit": record[messages.EV_PERMIT],
            "operator": record[messages.EV_OPERATOR],
            "time_s": record[messages.EV_TIME],
            "boot_id": record[messages.EV_BOOT],
            "uptime_ms": record[messages.EV_UPTIME],
            "received_ms": signed["received_ms"],
            "record_sha256": hashlib.sha256(signed["event"]).hexdigest(),
            "cose_sha256": hashlib.sha256(cose).hexdigest(),
            "derived": True,
            "note": COMPANION_NOTE,
        }
        assert (got["device"], got["counter"]) == (DEVICE, counter)
        assert (message.qos, message.retain) == (1, False)
        assert message.user == {"device": DEVICE, "counter": str(counter)}
    bodies = [_body(companions[counter]) for counter in sorted(companions)]
    assert [(b["kind_name"], b["permit"], b["operator"]) for b in bodies] == [
        ("impression", 7, 42),
        ("impression", 7, 42),
        ("forced", 0, 0),
        ("tamper", 0, 0),
    ]

    # In the outbox each companion sits right behind its event; once PUBACKed, retention drops
    # both payloads, and the companion is rebuilt byte for byte from the events row.
    record_rows = [(t, c) for t, _, c in rows if c is not None]
    assert record_rows == [(t, c) for c in (1, 2, 3, 4) for t in (EVENTS, COMPANION)]
    assert all(p is None for t, p, c in rows if c is not None)
    for event in events:
        rebuilt = companion_body(
            DEVICE, "gw-test", event["event"], event["cose"], event["received_ms"]
        )
        assert rebuilt == companions[event["counter"]].payload


def _outbox(files: GatewayFiles, columns: str) -> list[tuple[Any, ...]]:
    """The ledger's outbox as an operator's `sqlite3 -readonly` shows it, in insertion order."""
    uri = f"{files.ledger_path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return db.execute(f"SELECT {columns} FROM outbox ORDER BY id").fetchall()


def _body(message: _Message) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.payload)
    return body


def test_no_companion_when_configured_off(
    files: GatewayFiles, broker: Mosquitto, pty_link: PtyLink, subscriber: _Subscriber
) -> None:
    config = files.config(
        broker.port, ports=(PortConfig(pty_link.host_path),), json_companion=False
    )

    async def body() -> None:
        async with (
            running(config),
            SimDevice(DEVICE, files.device_keys[DEVICE], pty_link.device_end) as sim,
        ):
            await asyncio.wait_for(sim.welcomed.wait(), 10)
            await sim.stamp(3)
            await sim.wait_acked(3)
            await asyncio.to_thread(
                subscriber.wait, lambda: len(subscriber.on(EVENTS)) >= 3, "3 events"
            )

    run(body())
    topics = [t for (t,) in _outbox(files, "topic")]
    assert topics.count(EVENTS) == 3 and COMPANION not in topics
    assert subscriber.on(COMPANION) == []


def test_the_companion_key_is_a_boolean_and_on_by_default() -> None:
    assert parse_mqtt({}).json_companion is True
    assert parse_mqtt({"json_companion": False}).json_companion is False
    with pytest.raises(ConfigError, match=r"mqtt\.json_companion"):
        parse_mqtt({"json_companion": "no"})


def test_the_spec_example_is_what_the_gateway_builds() -> None:
    """SPEC §11.2's example body has the keys, the note and the value types the gateway emits
    (its hashes are of one record made for it: a seal's ECDSA signature differs each time)."""
    spec = (Path(__file__).parents[2] / "protocol" / "SPEC.md").read_text()
    start = spec.index("An example body, indented here")
    block = spec[spec.index("```\n", start) + 4 :]
    example = json.loads(block[: block.index("```")])
    payload = make_event(b"\x01" * 32, 17, bytes(32), boot_id=3, permit=7, operator=42)
    built = json.loads(companion_body("seal-0001", "gw-1", payload, b"cose", 1))
    assert sorted(example) == sorted(built)
    assert {k: type(v) for k, v in example.items()} == {k: type(v) for k, v in built.items()}
    assert example["note"] == COMPANION_NOTE
    # On the wire: one line, keys sorted, no spaces outside strings.
    wire = companion_body("seal-0001", "gw-1", payload, b"cose", 1)
    assert wire == json.dumps(built, sort_keys=True, separators=(",", ":")).encode()


def test_the_shipped_acl_lets_each_gateway_write_only_its_own_seals_companions() -> None:
    """tools/mosquitto/acl: gw-1 writes its seals' companion topics, not gw-2's; consumers read
    `<prefix>/#`, which holds them (test_mqtt_tls.py runs this ACL on a real Mosquitto, where a
    refused companion would keep the outbox from draining)."""
    acl = (Path(__file__).parents[2] / "tools" / "mosquitto" / "acl").read_text()
    users: dict[str, list[str]] = {}
    for line in acl.splitlines():
        if line.startswith("user "):
            current = users.setdefault(line.split()[1], [])
        elif line.startswith("topic "):
            current.append(line)
    assert "topic write sealink/seal-0001/events/json" in users["gw-1"]
    assert "topic write sealink/seal-0003/events/json" in users["gw-2"]
    assert "topic write sealink/seal-0003/events/json" not in users["gw-1"]
    consumers = [u for u, lines in users.items() if lines == ["topic read sealink/#"]]
    assert consumers, "a consumer that reads every topic, the companions among them"
