"""Witnesses (SPEC §14.6): a witness follows a real gateway's checkpoints over a real
Mosquitto, asks it for consistency proofs, cosigns; the gateway keeps the cosignatures, the
CLI shows them, a bundle carries them and sealink-verify checks them. Attacks: a fork (two
roots for one size), a replayed old checkpoint, a proof with a flipped node, a forged
cosignature; each refused, alarmed, kept as evidence. Vectors checked by both implementations.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import DEVICE, Feed, GatewayFiles, run, running, sealink, until
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_rig import GATEWAY, ORIGIN, Rig
from sealink.config import LedgerConfig, MqttConfig, WitnessKey
from sealink.crypto.signer import GatewayKey
from sealink.crypto.vkey import COSIGNATURE_ALG, NOTE_ALG, parse_vkey, vkey
from sealink.evidence import (
    add_signatures,
    checkpoint_origin,
    cosign,
    heads_hash,
    sign_checkpoint,
    split_note,
    verify_cosignature,
)
from sealink.gateway.service import Gateway
from sealink.gateway.witnesses import consistency_reply
from sealink.witness import FollowedGateway, Witness, WitnessConfig
from sealink_verify import tlog
from sealink_verify.cli import EXIT_FAILED, EXIT_VERIFIED
from sealink_verify.cli import main as verify

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "cosignature.json"
PREFIX = "sealink-test"
W = "audit.example/w1"
GW_ORIGIN = checkpoint_origin("gw-test")
TIMEOUT_S = 20.0


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def witness_config(
    tmp_path: Path, port: int, gateway: FollowedGateway, timeout_s: float = 5.0
) -> WitnessConfig:
    return WitnessConfig(
        name=W,
        key_file=tmp_path / "witness.key",
        state_dir=tmp_path / "witness-state",
        mqtt=MqttConfig(port=port, prefix=PREFIX, reconnect_min_s=0.1, reconnect_max_s=1.0),
        gateways=(gateway,),
        proof_timeout_s=timeout_s,
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not await check():
            await asyncio.sleep(0.02)


async def cosigned_in_ledger(gateway: Gateway, size: int) -> None:
    async def check() -> bool:
        return bool(await gateway.db(gateway.ledger.log.cosignatures, size))

    try:
        await eventually(check, f"the gateway keeping a cosignature of size {size}")
    except TimeoutError:
        raise AssertionError(f"no cosignature of size {size} stored in {TIMEOUT_S} s") from None


def start(witness: Witness) -> asyncio.Task[None]:
    return asyncio.create_task(witness.run(), name="witness")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def gateway_toml(files: GatewayFiles, witness_vkey: str) -> Path:
    conf = files.root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-test"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
        f'link_keys = "link-keys"\n\n[[witnesses]]\nvkey = "{witness_vkey}"\n'
    )
    return conf


# a witness and a real gateway -------------------------------------------------------------------


def test_a_witness_cosigns_each_checkpoint_the_gateway_keeps_them_and_a_restart_needs_one_proof(
    files: GatewayFiles, broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wkey = Ed25519PrivateKey.generate()
    config = dataclasses.replace(
        files.config(broker.port),
        ledger=LedgerConfig(checkpoint_interval_s=3600),
        witnesses=(WitnessKey(W, _raw(wkey)),),
    )
    followed = FollowedGateway("gw-test", GW_ORIGIN, files.key.public_raw(), True)
    wconfig = witness_config(tmp_path, broker.port, followed)

    async def body() -> None:
        async with running(config) as gateway:
            feed = Feed(files, gateway)
            witness = Witness(wconfig, wkey)
            task = start(witness)
            for n in (1, 2, 3):
                assert await feed.checkpoint() == n
                await cosigned_in_ledger(gateway, n)
            # the first trusted on first use, then one proof from each size to the next
            assert (witness.cosigned, witness.proof_requests, witness.refusals) == (3, 2, [])
            await stop(task)
            # away while the log grows by two checkpoints: one proof, 3 -> 5, on its return
            assert [await feed.checkpoint() for _ in range(2)] == [4, 5]
            again = Witness(wconfig, wkey)
            task = start(again)
            await cosigned_in_ledger(gateway, 5)
            assert (again.cosigned, again.proof_requests, again.refusals) == (1, 1, [])
            assert not await gateway.db(gateway.ledger.log.cosignatures, 4)
            await stop(task)

    run(body())
    state = json.loads((wconfig.state_dir / "sealink_gateway_gw-test.json").read_text())
    assert state["size"] == 5

    conf = gateway_toml(files, vkey(W, _raw(wkey), COSIGNATURE_ALG))
    for size in (1, 2, 3, 5):
        done = sealink("evidence", "checkpoint", "--config", str(conf), "--size", str(size))
        assert done.returncode == 0, done.stderr
        note = done.stdout
        assert tlog.open_checkpoint(note, files.key.public_pem()).size == size
        assert isinstance(tlog.verify_cosignature(note, W, _raw(wkey)), int)
        assert verify_cosignature(note, W, _raw(wkey)) is not None
    done = sealink("evidence", "checkpoint", "--config", str(conf), "--json")
    body_json = json.loads(done.stdout)
    assert [c["witness"] for c in body_json["cosignatures"]] == [W]
    assert body_json["cosignatures"][0]["line"] in body_json["checkpoint"]["note"]
    done = sealink("evidence", "vkey", "--config", str(conf))
    assert parse_vkey(done.stdout, NOTE_ALG) == (GW_ORIGIN, files.key.public_raw())

    # the bundle carries the cosigned note; sealink-verify checks the pinned witness
    out = tmp_path / "one.bundle.json"
    done = sealink("evidence", "bundle", "--config", str(conf), DEVICE, "2", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["version"] == 1
    pem = tmp_path / "gateway.pub"
    pem.write_bytes(files.key.public_pem())
    seal = files.ledger()
    try:
        record = seal.device_record(DEVICE)
        assert record is not None and record.seal_key is not None
        seal_key = record.seal_key.hex()
    finally:
        seal.close()
    pinned = ["bundle", str(out), "--gateway-key", str(pem), "--seal-key", seal_key, "--json"]
    capsys.readouterr()
    assert verify([*pinned, "--witness-key", f"{W}={_raw(wkey).hex()}"]) == EXIT_VERIFIED
    report = json.loads(capsys.readouterr().out)
    assert list(report["facts"]["cosigned_by"]) == [W]
    assert verify(pinned) == EXIT_VERIFIED
    assert json.loads(capsys.readouterr().out)["facts"]["unknown_cosigners"] == [W]
    wrong = _raw(Ed25519PrivateKey.generate()).hex()
    assert verify([*pinned, "--witness-key", f"{W}={wrong}"]) == EXIT_FAILED
    assert "did not cosign" in " ".join(json.loads(capsys.readouterr().out)["problems"])
    other = f"other.example/w2={_raw(wkey).hex()}"
    assert verify([*pinned, "--witness-key", other]) == EXIT_FAILED


def test_a_fork_and_a_replay_are_refused_alarmed_and_kept_and_forged_cosignatures_never_stored(
    files: GatewayFiles, broker: Any, tmp_path: Path, seed: int, tap_factory: Any
) -> None:
    rng = random.Random(seed)
    wkey = Ed25519PrivateKey.generate()
    config = dataclasses.replace(
        files.config(broker.port),
        ledger=LedgerConfig(checkpoint_interval_s=3600),
        witnesses=(WitnessKey(W, _raw(wkey)),),
    )
    followed = FollowedGateway("gw-test", GW_ORIGIN, files.key.public_raw(), True)
    wconfig = witness_config(tmp_path, broker.port, followed)
    witness_alarms = f"{PREFIX}/witness/{W}/alarms"
    gateway_alarms = f"{PREFIX}/gateway/gw-test/alarms"
    replies = f"{PREFIX}/test/replies"
    tap = tap_factory(broker.port, [witness_alarms, gateway_alarms, replies])
    checkpoint_topic = f"{PREFIX}/gateway/gw-test/checkpoint"

    async def body() -> None:
        async with running(config) as gateway:
            feed = Feed(files, gateway)
            witness = Witness(wconfig, wkey)
            task = start(witness)
            for n in (1, 2):
                assert await feed.checkpoint() == n
                await cosigned_in_ledger(gateway, n)
            real = await gateway.db(gateway.ledger.log.checkpoint, 2)
            first = await gateway.db(gateway.ledger.log.checkpoint, 1)
            # a fork: size 2 again, another root, signed with the gateway's own key
            fork = sign_checkpoint(
                files.key, GW_ORIGIN, 2, rng.randbytes(32), real.heads_hash, real.time_ms + 1
            )
            tap.publish(checkpoint_topic, fork.note.encode(), retain=True)
            await until(lambda: len(witness.refusals) == 1, TIMEOUT_S, "the fork refused")
            await until(lambda: tap.alarms(witness_alarms), TIMEOUT_S, "the split-view alarm")
            alarm = tap.alarms(witness_alarms)[0]
            assert (alarm["reason"], alarm["size"], alarm["gateway"]) == (
                "split_view",
                2,
                "gw-test",
            )
            kept = Path(alarm["evidence"])
            assert (kept / "cosigned.note").read_text() == real.note
            assert (kept / "offered.note").read_text() == fork.note
            # a replay of the checkpoint of size 1
            tap.publish(checkpoint_topic, first.note.encode(), retain=True)
            await until(lambda: len(witness.refusals) == 2, TIMEOUT_S, "the replay refused")
            assert witness.refusals[1][1].reason == "rollback"
            await until(lambda: len(tap.alarms(witness_alarms)) == 2, TIMEOUT_S, "its alarm")
            assert (Path(tap.alarms(witness_alarms)[1]["evidence"]) / "offered.note").exists()
            # still following: the next honest checkpoint extends the one cosigned
            assert await feed.checkpoint() == 3
            await cosigned_in_ledger(gateway, 3)
            assert witness.cosigned == 3

            # forged cosignatures on the witness's topic: another key under its name, and the
            # witness's real key over the fork the gateway never signed
            forger = Ed25519PrivateKey.generate()
            latest = await gateway.db(gateway.ledger.log.checkpoint, 3)
            text = split_note(latest.note).text
            forged = add_signatures(latest.note, [cosign(forger, W, text, 1_700_000_000).line])
            fork_text = split_note(fork.note).text
            of_fork = add_signatures(fork.note, [cosign(wkey, W, fork_text, 1_700_000_000).line])
            cosig_topic = f"{PREFIX}/gateway/gw-test/cosignature/{W}"
            for note in (forged, of_fork):
                tap.publish(cosig_topic, note.encode())
            gw_key = files.key.public_raw()
            await until(
                lambda: len(tap.alarms(gateway_alarms, gw_key)) >= 2, TIMEOUT_S, "two alarms"
            )
            reasons = {a["reason"] for a in tap.alarms(gateway_alarms, gw_key)}
            assert reasons == {"cosignature_rejected"}
            details = " ".join(a["detail"] for a in tap.alarms(gateway_alarms, gw_key))
            assert "does not verify" in details or "no cosignature line" in details
            assert "never signed" in details
            for size in (2, 3):
                stored = await gateway.db(gateway.ledger.log.cosignatures, size)
                assert len(stored) == 1
                real_note = await gateway.db(gateway.ledger.log.checkpoint, size)
                assert tlog.verify_cosignature(
                    add_signatures(real_note.note, [stored[0].line]), W, _raw(wkey)
                )

            # absurd proof requests get an error reply, and the gateway goes on
            for n, request in enumerate(
                (b"not json", b'{"old_size": 1, "new_size": 99}', b'{"old_size": -1}', b"x" * 5000)
            ):
                tap.publish(
                    f"{PREFIX}/gateway/gw-test/proof/request",
                    request,
                    ResponseTopic=replies,
                    CorrelationData=bytes([n]),
                )
            await until(lambda: len(tap.on(replies)) == 4, TIMEOUT_S, "four error replies")
            assert {json.loads(p)["type"] for p in tap.on(replies)} == {"error"}
            assert await feed.checkpoint() == 4
            await cosigned_in_ledger(gateway, 4)
            await stop(task)

    run(body())


# a witness and a stand-in gateway whose proof replies the test controls ---------------------


def test_a_proof_with_a_flipped_node_is_not_cosigned_and_the_next_honest_one_is(
    broker: Any, tmp_path: Path, seed: int, tap_factory: Any
) -> None:
    """The stand-in answers from a real ledger (Rig) with the gateway's own reply code; a test
    cannot sit between a real gateway and the broker, so it flips the node itself."""
    rng = random.Random(seed)
    rig = Rig(tmp_path / "rig")
    rig.add("seal-a", 3)
    anchor = rig.checkpoint()
    rig.add("seal-a", 3)
    six = rig.checkpoint()
    rig.add("seal-a", 2)
    eight = rig.checkpoint()
    stand_in = SimpleNamespace(ledger=rig.ledger)
    flip = {"on": True}
    requests: list[dict[str, Any]] = []
    tap = tap_factory(broker.port, [f"{PREFIX}/gateway/{GATEWAY}/proof/request"])
    wkey = Ed25519PrivateKey.generate()

    def answer(msg: mqtt.MQTTMessage) -> None:
        requests.append(json.loads(msg.payload))
        reply = consistency_reply(stand_in, bytes(msg.payload))  # type: ignore[arg-type]
        if flip["on"] and reply.get("path"):
            i = rng.randrange(len(reply["path"]))
            node = bytearray(bytes.fromhex(reply["path"][i]))
            node[rng.randrange(32)] ^= 1 << rng.randrange(8)
            reply["path"][i] = node.hex()
        threading.Thread(
            target=tap.publish,
            args=(msg.properties.ResponseTopic, json.dumps(reply).encode()),
            kwargs={"CorrelationData": msg.properties.CorrelationData},
        ).start()

    tap.on_message = answer
    followed = FollowedGateway(
        GATEWAY, ORIGIN, rig.key.public_raw(), initial=(anchor.size, anchor.root)
    )
    wconfig = witness_config(tmp_path, broker.port, followed)
    topic = f"{PREFIX}/gateway/{GATEWAY}/checkpoint"
    cosigs = tap_factory(broker.port, [f"{PREFIX}/gateway/{GATEWAY}/cosignature/#"])

    def cosigned_sizes() -> list[int]:
        return [int(bytes(m.payload).decode().split("\n")[1]) for m in list(cosigs.got)]

    async def body() -> None:
        witness = Witness(wconfig, wkey)
        task = start(witness)
        # not the gateway's key: ignored, neither cosigned nor alarmed
        impostor = sign_checkpoint(
            GatewayKey.generate(), ORIGIN, 9, os.urandom(32), heads_hash([]), 1
        )
        # retained, as the gateway publishes them: the witness may subscribe after
        tap.publish(topic, impostor.note.encode(), retain=True)
        tap.publish(topic, anchor.note.encode(), retain=True)  # the anchor: cosigned, no proof
        await until(lambda: cosigned_sizes() == [3], TIMEOUT_S, "the anchor cosigned")
        tap.publish(topic, six.note.encode(), retain=True)
        await until(lambda: witness.refusals, TIMEOUT_S, "the flipped proof refused")
        assert [r.reason for _, r in witness.refusals] == ["bad_proof"]
        assert requests == [{"old_size": 3, "new_size": 6}]
        flip["on"] = False
        tap.publish(topic, eight.note.encode(), retain=True)
        await until(lambda: cosigned_sizes() == [3, 8], TIMEOUT_S, "the honest one cosigned")
        assert requests[-1] == {"old_size": 3, "new_size": 8}
        await stop(task)

    run(body())
    kept = list((wconfig.state_dir / "evidence").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("sealink_gateway_gw-ev-bad_proof-")
    assert {p.name for p in kept[0].iterdir()} == {"cosigned.note", "offered.note", "proof.json"}
    assert json.loads((kept[0] / "proof.json").read_text())["new_size"] == 6


def test_the_gateway_answers_only_between_sizes_it_checkpointed(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.add("seal-a", 4)
    four = rig.checkpoint()
    rig.add("seal-a", 3)
    seven = rig.checkpoint()
    rig.add("seal-a", 2)  # size 9, not checkpointed
    stand_in: Any = SimpleNamespace(ledger=rig.ledger)

    def reply(old: Any, new: Any) -> dict[str, Any]:
        return consistency_reply(stand_in, json.dumps({"old_size": old, "new_size": new}).encode())

    good = reply(4, 7)
    path = [bytes.fromhex(p) for p in good["path"]]
    assert tlog.verify_consistency(4, 7, four.root, seven.root, path)
    assert good["old_checkpoint"] == four.note and good["new_checkpoint"] == seven.note
    assert reply(0, 7)["type"] == "consistency"
    for old, new in ((4, 9), (5, 7), (7, 4), (-1, 7), (True, 7), ("4", 7), (4, 10**30)):
        assert reply(old, new)["type"] == "error", (old, new)
    for payload in (b"", b"[]", b"\xff", b"{" * 2000):
        assert consistency_reply(stand_in, payload)["type"] == "error"


def test_the_state_is_on_disk_before_the_cosignature_leaves(tmp_path: Path) -> None:
    """A crash between the two must never let the witness cosign two inconsistent
    checkpoints: the publish is made only once the new state is durable."""
    rig = Rig(tmp_path / "rig")
    rig.add("seal-a", 2)
    checkpoint = rig.checkpoint()
    followed = FollowedGateway(GATEWAY, ORIGIN, rig.key.public_raw(), True)
    witness = Witness(witness_config(tmp_path, 1, followed), Ed25519PrivateKey.generate())
    published: list[tuple[str, int | None]] = []

    class Client:
        def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
            state = witness.state.load(ORIGIN)
            published.append((topic, None if state is None else state.size))

    witness._client = Client()  # type: ignore[assignment]

    def crash(origin: str, cosigned: Any) -> None:
        raise OSError(28, "No space left on device")

    save, witness.state.save = witness.state.save, crash  # type: ignore[method-assign]
    with pytest.raises(OSError):
        witness._cosign(followed, checkpoint)
    assert published == [] and witness.state.load(ORIGIN) is None
    witness.state.save = save  # type: ignore[method-assign]
    witness._cosign(followed, checkpoint)
    assert published == [(f"{PREFIX}/gateway/{GATEWAY}/cosignature/{W}", checkpoint.size)]


# the command line ------------------------------------------------------------------------------


def test_witness_init_writes_a_private_key_and_prints_its_vkey(tmp_path: Path) -> None:
    key = tmp_path / "w.key"
    done = sealink("witness", "init", "--key", str(key), "--name", W)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert key.stat().st_mode & 0o777 == 0o600
    assert parse_vkey(out["vkey"], COSIGNATURE_ALG) == (W, bytes.fromhex(out["public_key"]))
    before = key.read_bytes()
    done = sealink("witness", "init", "--key", str(key), "--name", W)
    assert done.returncode == 2 and "already exists" in done.stderr
    assert key.read_bytes() == before
    done = sealink("witness", "init", "--key", str(key), "--name", W, "--force")
    assert done.returncode == 0 and key.read_bytes() != before
    done = sealink("witness", "init", "--key", str(tmp_path / "x"), "--name", "bad name+")
    assert done.returncode == 2 and "witness name" in done.stderr


def _witness_toml(tmp_path: Path, port: int, gateway: str) -> Path:
    conf = tmp_path / "witness.toml"
    conf.write_text(
        f'[witness]\nname = "{W}"\nkey_file = "w.key"\nstate_dir = "state"\n\n'
        f"[mqtt]\nport = {port}\nreconnect_min_s = 0.1\nreconnect_max_s = 1.0\n\n"
        f"[[gateways]]\n{gateway}\n"
    )
    return conf


def test_witness_run_refuses_a_broken_config_in_one_line(tmp_path: Path) -> None:
    key = GatewayKey.generate()
    good_vkey = vkey(GW_ORIGIN, key.public_raw(), NOTE_ALG)
    sealink("witness", "init", "--key", str(tmp_path / "w.key"), "--name", W)
    cases = {
        'vkey = "nonsense"': "vkey",
        f'vkey = "{good_vkey}"': "trust_on_first_use",
        f'vkey = "{good_vkey}"\ntrust_on_first_use = true\ninitial_size = 3\n'
        f'initial_root = "{"00" * 32}"': "either",
        f'vkey = "{good_vkey}"\ninitial_size = 3\ninitial_root = "abc"': "initial_root",
        f'vkey = "{vkey("x/y", key.public_raw(), NOTE_ALG)}"\ntrust_on_first_use = true': "gateway",
    }
    for gateway, problem in cases.items():
        conf = _witness_toml(tmp_path, 1, gateway)
        done = sealink("witness", "run", "--config", str(conf))
        assert done.returncode == 2 and problem in done.stderr, (gateway, done.stderr)
    conf = tmp_path / "bad.toml"
    conf.write_text("[witness\n")
    done = sealink("witness", "run", "--config", str(conf))
    assert done.returncode == 2 and "not valid TOML" in done.stderr
    os.chmod(tmp_path / "w.key", 0o644)
    conf = _witness_toml(tmp_path, 1, f'vkey = "{good_vkey}"\ntrust_on_first_use = true')
    done = sealink("witness", "run", "--config", str(conf))
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_witness_run_waits_out_an_unreachable_broker_and_stops_cleanly(tmp_path: Path) -> None:
    key = GatewayKey.generate()
    sealink("witness", "init", "--key", str(tmp_path / "w.key"), "--name", W)
    gateway = f'vkey = "{vkey(GW_ORIGIN, key.public_raw(), NOTE_ALG)}"\ntrust_on_first_use = true'
    conf = _witness_toml(tmp_path, 9, gateway)  # nothing listens on port 9 (discard)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealink.cli", "witness", "run", "--config", str(conf)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any("mqtt unavailable" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(TIMEOUT_S)
    assert "Traceback" not in "".join(lines)


# vectors ---------------------------------------------------------------------------------------


def _vectors() -> dict[str, Any]:
    """Deterministic: keys from fixed seeds, a fixed checkpoint and time (Ed25519 signs
    deterministically)."""
    gateway = GatewayKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    witness = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    root = bytes.fromhex("5d4b" * 16)
    checkpoint = sign_checkpoint(gateway, ORIGIN, 7, root, bytes(32), 1_700_000_000_000)
    text = split_note(checkpoint.note).text
    cosignature = cosign(witness, W, text, 1_700_000_123)
    return {
        "description": "a checkpoint cosigned by one witness (C2SP tlog-cosignature v1, SPEC "
        "§14.6); regenerate: SEALINK_WRITE_VECTORS=1 pytest host/tests/test_witness.py",
        "gateway_vkey": vkey(ORIGIN, gateway.public_raw(), NOTE_ALG),
        "gateway_public_pem": gateway.public_pem().decode(),
        "witness_name": W,
        "witness_seed": bytes(range(32, 64)).hex(),
        "witness_public_key": _raw(witness).hex(),
        "witness_vkey": vkey(W, _raw(witness), COSIGNATURE_ALG),
        "time_s": 1_700_000_123,
        "signed_message_b64": base64.b64encode(
            f"cosignature/v1\ntime 1700000123\n{text}".encode()
        ).decode(),
        "checkpoint": checkpoint.note,
        "cosigned": add_signatures(checkpoint.note, [cosignature.line]),
    }


def test_the_cosignature_vectors_are_current_and_checked_by_both_implementations() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, "regenerate: SEALINK_WRITE_VECTORS=1 pytest " + __file__
    name, public = parse_vkey(vectors["witness_vkey"], COSIGNATURE_ALG)
    assert (name, public.hex()) == (W, vectors["witness_public_key"])
    note = vectors["cosigned"]
    mine = verify_cosignature(note, name, public)
    assert mine is not None and mine.time_s == vectors["time_s"]
    assert tlog.verify_cosignature(note, name, public) == vectors["time_s"]
    # the gateway's signature still verifies, the witness's line is ignored by it
    assert tlog.open_checkpoint(note, vectors["gateway_public_pem"].encode()).size == 7
    line = note.splitlines()[-1]
    blob = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
    assert int.from_bytes(blob[4:12], "big") == vectors["time_s"]
    blob[20] ^= 1
    tampered = note.replace(line, f"{line.rsplit(' ', 1)[0]} {base64.b64encode(blob).decode()}")
    with pytest.raises(tlog.NoteError):
        tlog.verify_cosignature(tampered, name, public)
    assert tlog.verify_cosignature(note, "someone/else", public) is None
    with pytest.raises(tlog.NoteError):  # the same line under another checkpoint text
        tlog.verify_cosignature(note.replace("\n7\n", "\n8\n", 1), name, public)
