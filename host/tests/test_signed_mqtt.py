"""Signed status and alarms (SPEC §11.4): the vector runs through the gateway's signer and the
independent verifier (library and `sealink-verify message`); a rolled-back status is refused;
against a real Mosquitto, forged and replayed messages are counted by the observer, and a
client-id takeover and a second gateway with the same id are named, alarmed and backed off."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import GatewayFiles, logged, run, running
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from sealink.crypto.signer import GatewayKey
from sealink.errors import KeyFileError
from sealink.mqtt.signed import MessageSigner
from sealink_sim.broker import Mosquitto
from sealink_sim.observer import Observer
from sealink_verify import mqtt as verify_mqtt
from sealink_verify.cli import EXIT_FAILED, EXIT_UNUSABLE, EXIT_VERIFIED
from sealink_verify.cli import main as verify
from sealink_verify.mqtt import Freshness, RolledBack, verify_message

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "message.json"
PREFIX = "sealink-test"
TIMEOUT_S = 30


def _key(label: str) -> GatewayKey:
    seed = hashlib.sha256(b"sealink vectors/" + label.encode()).digest()
    return GatewayKey(Ed25519PrivateKey.from_private_bytes(seed))


def _vectors() -> dict[str, Any]:
    key, other = _key("message gateway key"), _key("message other key")
    clock = lambda: 1_767_225_600_000_000  # noqa: E731 - 2026-01-01T00:00:00Z, in µs
    topic = "sealink/seal-0001/status"
    body = {"device": "seal-0001", "online": True, "port": "/dev/ttyUSB0", "time_ms": 1767225600000}
    status = MessageSigner(key, "gw-1", clock).sign(topic, body)
    assert status.count(b"/dev/ttyUSB0") == 1
    forgeries = [
        ("unsigned JSON, as before SPEC 11.4", topic, json.dumps(body).encode(), "NotSigned"),
        ("the status replayed onto another seal's topic", "sealink/seal-0002/status", status,
         "WrongTopic"),
        ("signed by a key the gateway does not hold", topic,
         MessageSigner(other, "gw-1", clock).sign(topic, body), "UnknownKey"),
        ("body changed after signing", topic, status.replace(b"/dev/ttyUSB0", b"/dev/ttyUSB1"),
         "BadSignature"),
        ("gw-1 signing for gw-2's status topic", "sealink/gateway/gw-2/status",
         MessageSigner(key, "gw-1", clock).sign("sealink/gateway/gw-2/status", {"state": "online"}),
         "WrongGateway"),
    ]  # fmt: skip
    return {
        "about": "SPEC \u00a711.4: a signed seal status of gateway gw-1 (Ed25519 seed "
        "SHA-256('sealink vectors/message gateway key'), clock 1767225600000000 us) and "
        "forgeries, each failing the check 'fails' names (sealink_verify.mqtt); regenerate with "
        "SEALINK_WRITE_VECTORS=1 pytest host/tests/test_signed_mqtt.py",
        "gateway": "gw-1",
        "gateway_public_key": key.public_raw().hex(),
        "topic": topic,
        "payload": status.hex(),
        "body": body,
        "seq": 1_767_225_600_000_000,
        "time_ms": 1_767_225_600_000,
        "forgeries": [
            {"name": name, "topic": t, "payload": p.hex(), "fails": fails}
            for name, t, p, fails in forgeries
        ],
    }


def test_vector_file_is_current_and_checked_by_both_sides() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, "regenerate: SEALINK_WRITE_VECTORS=1 pytest " + __file__
    keys = {vectors["gateway"]: [bytes.fromhex(vectors["gateway_public_key"])]}
    payload = bytes.fromhex(vectors["payload"])
    message = verify_message(vectors["topic"], payload, keys)
    assert (message.body, message.seq, message.time_ms) == (
        vectors["body"],
        vectors["seq"],
        vectors["time_ms"],
    )
    # By hand, from the text: the Sig_structure over the protected header and the payload.
    tag = verify_mqtt.cbor2.loads(payload)
    protected, _, signed, signature = tag.value
    to_sign = verify_mqtt.cbor2.dumps(["Signature1", protected, b"", signed])
    Ed25519PublicKey.from_public_bytes(keys["gw-1"][0]).verify(signature, to_sign)
    assert verify_mqtt.cbor2.loads(signed)["topic"] == vectors["topic"]
    for case in vectors["forgeries"]:
        with pytest.raises(getattr(verify_mqtt, case["fails"])):
            verify_message(case["topic"], bytes.fromhex(case["payload"]), keys)


def test_sealink_verify_message_prints_the_body_or_names_the_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors = json.loads(VECTORS.read_text())
    pem = tmp_path / "gw-1.pem"
    pem.write_bytes(
        Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(vectors["gateway_public_key"])
        ).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    good = tmp_path / "status.cose"
    good.write_bytes(bytes.fromhex(vectors["payload"]))
    args = ["message", "--gateway-key", f"gw-1={pem}", "--topic"]
    assert verify([*args, vectors["topic"], str(good)]) == EXIT_VERIFIED
    assert json.loads(capsys.readouterr().out) == vectors["body"]
    replayed = vectors["forgeries"][1]
    assert verify([*args, replayed["topic"], str(good)]) == EXIT_FAILED
    assert "WrongTopic" in capsys.readouterr().err
    assert verify([*args, vectors["topic"], str(tmp_path / "absent")]) == EXIT_UNUSABLE
    assert "sealink-verify: error: cannot read" in capsys.readouterr().err


def test_a_rolled_back_status_is_refused_and_a_redelivery_is_no_news() -> None:
    key = GatewayKey.generate()
    signer = MessageSigner(key, "gw-1", clock_us=lambda: 5)  # a stuck clock: seq still grows
    topic = "sealink/seal-0001/status"
    older = verify_message(
        topic, signer.sign(topic, {"online": True}), {"gw-1": [key.public_raw()]}
    )
    newer = verify_message(
        topic, signer.sign(topic, {"online": False}), {"gw-1": [key.public_raw()]}
    )
    assert newer.seq == older.seq + 1
    fresh = Freshness()
    assert fresh.accept(older) and fresh.accept(newer)
    assert fresh.accept(newer) is False
    with pytest.raises(RolledBack):
        fresh.accept(older)


class _Tap:
    """A bare MQTT 5 client (anonymous on the test broker), as a forger or a second user of
    the gateway's client id would be."""

    def __init__(self, port: int, client_id: str = "", subscribe: str | None = None) -> None:
        self.got: dict[str, bytes] = {}
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda *a: self._ready.set()
        self.client.on_message = lambda c, u, m: self.got.__setitem__(m.topic, bytes(m.payload))
        self.client.connect("127.0.0.1", port)
        if subscribe is not None:
            self.client.subscribe(subscribe, qos=1)
        self.client.loop_start()
        assert self._ready.wait(10), "tap: no CONNACK"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_seq_never_goes_back_across_runs_whatever_the_clock_does(tmp_path: Path) -> None:
    # Found by the HIL soak's clock jumps: a gateway restarted after its clock stepped back
    # an hour signed below its last run, and consumers (rightly) called it a rollback.
    key = GatewayKey.generate()
    floor = tmp_path / "ledger.sqlite.msgseq"
    topic = "sealink/seal-0001/status"
    keys = {"gw-1": [key.public_raw()]}
    now_us = 1_800_000_000_000_000
    first = MessageSigner(key, "gw-1", clock_us=lambda: now_us, floor_file=floor)
    last = verify_message(topic, first.sign(topic, {"online": True}), keys).seq
    assert floor.stat().st_mode & 0o777 == 0o600
    for step_back_s in (3600, 86400):
        run = MessageSigner(
            key, "gw-1", clock_us=lambda s=step_back_s: now_us - s * 1_000_000, floor_file=floor
        )
        seq = verify_message(topic, run.sign(topic, {"online": True}), keys).seq
        assert seq > last
        last = seq
    floor.write_text("garbage")
    with pytest.raises(KeyFileError, match="seq floor"):
        MessageSigner(key, "gw-1", floor_file=floor)


def test_forged_and_replayed_status_and_alarms_are_counted_not_believed(
    files: GatewayFiles, broker: Mosquitto, observer: Observer
) -> None:
    gateway_status = f"{PREFIX}/gateway/gw-test/status"

    async def body() -> None:
        async with running(files.config(broker.port)):
            await asyncio.to_thread(
                observer.wait_until,
                lambda o: (o.device("gw-test").status or {}).get("state") == "online",
                TIMEOUT_S,
                "the gateway's signed online status",
            )

    run(body())
    forger = _Tap(broker.port, subscribe=gateway_status)
    try:
        forger.publish(
            f"{PREFIX}/seal-x/status", json.dumps({"device": "seal-x", "online": True}).encode()
        )
        tamper = {"device": "seal-x", "gateway": "gw-test", "source": "device", "code": 2}
        forger.publish(f"{PREFIX}/seal-x/alarms", json.dumps(tamper).encode())
        real = forger.got.get(gateway_status)
        assert real is not None and real[:1] == b"\xd2", "the retained status is a COSE_Sign1"
        forger.publish(f"{PREFIX}/seal-x/status", real)  # the gateway's own, replayed
    finally:
        forger.close()
    observer.wait_until(lambda o: o.device("seal-x").forged >= 3, TIMEOUT_S, "3 forgeries")
    seal = observer.device("seal-x")
    assert (seal.status, seal.alarm_log, seal.alarms) == (None, [], 0)
    assert observer.device("gw-test").forged == 0, "\n".join(observer.problems)
    assert observer.device("gw-test").status["state"] == "stopped"  # type: ignore[index]
    problems = " ".join(observer.problems)
    assert "NotSigned" in problems and "WrongTopic" in problems


def _retries(lines: list[str]) -> list[float]:
    return [
        float(m.group(1))
        for line in lines
        if "backs off" in line and (m := re.search(r"retry_s=([0-9.]+)", line))
    ]


def test_a_client_id_takeover_is_named_alarmed_and_backed_off(
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    gateway_log: list[str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    config = files.config(broker.port)

    async def body() -> None:
        async with running(config) as gateway:
            await gateway.publisher.wait_connected(TIMEOUT_S)
            for n in range(1, 4):
                # Mosquitto 2.0.11 closes the gateway's socket (no DISCONNECT 0x8E) and
                # publishes its will; this client starts clean, so the session is gone too.
                taker = await asyncio.to_thread(_Tap, broker.port, config.client_id)
                await asyncio.to_thread(taker.close)
                await logged(
                    capfd, gateway_log, "reason=session_taken_over", times=n, timeout=TIMEOUT_S
                )
                await gateway.publisher.wait_connected(TIMEOUT_S)

    run(body(), timeout=120)
    line = next(x for x in gateway_log if "reason=session_taken_over" in x)
    assert "mqtt identity in use elsewhere" in line and config.client_id in line
    retries = _retries(gateway_log)
    assert len(retries) >= 2 and min(retries) >= 0.5, retries
    assert retries == sorted(retries), "the backoff grows"
    gw = observer.device("gw-test")
    observer.wait_until(
        lambda o: sum(a.get("reason") == "session_taken_over" for a in gw.alarm_log) >= 3,
        TIMEOUT_S,
        "3 signed takeover alarms",
    )
    # The will the broker published at each takeover verified like any status.
    assert gw.forged == 0


def test_two_gateways_with_one_id_find_each_other_and_back_off(
    files: GatewayFiles,
    broker: Mosquitto,
    observer: Observer,
    gateway_log: list[str],
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    twin = GatewayFiles(tmp_path / "twin", files.key)
    twin.root.mkdir()
    shutil.copy(files.key_file, twin.key_file)
    twin.add_device("seal-twin")

    async def body() -> None:
        async with running(files.config(broker.port)) as first:
            await first.publisher.wait_connected(TIMEOUT_S)
            async with running(twin.config(broker.port)):
                await logged(
                    capfd, gateway_log, "reason=duplicate_gateway_id", times=2, timeout=TIMEOUT_S
                )
                await logged(capfd, gateway_log, "backs off", times=2, timeout=TIMEOUT_S)

    run(body(), timeout=120)
    retries = _retries(gateway_log)
    assert min(retries) >= 0.5, retries  # never the 0.1 s reconnect that flapped 10 times a second
    line = next(x for x in gateway_log if "reason=duplicate_gateway_id" in x)
    assert "another gateway with this gateway id and key is running" in line
    observer.wait_until(
        lambda o: any(
            a.get("reason") == "duplicate_gateway_id" for a in o.device("gw-test").alarm_log
        ),
        TIMEOUT_S,
        "a signed duplicate_gateway_id alarm",
    )
