"""Gateway key rotation (SPEC §14.7): `sealink keys rotate` writes a transition signed by the old
and the new key, and evidence made under either stays verifiable with only the first key pinned;
a forged transition, a retired key signing after its switch and `keys init --force` over a
ledger with records are each refused."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import GatewayFiles, run, running, sealink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_rig import ORIGIN, Rig, seal_keys_file
from sealink.config import LedgerConfig
from sealink.crypto.signer import GatewayKey
from sealink.errors import KeyFileError
from sealink.evidence import (
    KeyHistoryError,
    heads_hash,
    keys_origin,
    sign_checkpoint,
    sign_transition,
    walk,
)
from sealink.ledger import now_ms
from sealink.ledger.keyhistory import service_lock
from sealink_sim.broker import Mosquitto
from sealink_sim.simdevice import SimChip
from sealink_verify import keyhistory as verifier_history
from sealink_verify.cli import EXIT_FAILED, EXIT_VERIFIED
from sealink_verify.cli import main as verify

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "keys.json"
SEAL_KEY = SimChip.of(bytes(range(32))).public


@dataclasses.dataclass
class Rotated:
    rig: Rig
    first: GatewayKey  # the retired key, private half kept here only to play its thief
    first_pem: Path
    switch: int  # the log size at the switch


@pytest.fixture
def rotated(tmp_path: Path) -> Rotated:
    """Six records and a checkpoint under the first key, a rotation, then three records and a
    checkpoint under the new one."""
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 4)
    rig.add("seal-b", 2)
    rig.checkpoint()
    first = rig.key
    done = sealink("keys", "rotate", "--config", str(rig.conf))
    assert done.returncode == 0, done.stderr
    rig.key = GatewayKey.load(rig.root / "gateway.key")
    assert rig.key.kid != first.kid and done.stdout == rig.key.public_pem().decode()
    assert f"kid {first.kid.hex()}" in done.stderr and "FIRST key" in done.stderr
    assert os.stat(rig.root / "gateway.key").st_mode & 0o777 == 0o600
    assert not (rig.root / "gateway.key.new").exists()
    rig.add("seal-a", 3)
    rig.checkpoint()
    pem = rig.root / "first.pem"
    pem.write_bytes(first.public_pem())
    return Rotated(rig, first, pem, 6)


def _verify(
    rotated: Rotated,
    lines: list[str],
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> tuple[int, list[str]]:
    root = rotated.rig.root
    export = root / "checked.jsonl"
    export.write_text("\n".join(lines) + "\n")
    seal_keys = seal_keys_file(root / "seal-keys.jsonl", ["seal-a", "seal-b"])
    capsys.readouterr()
    code = verify(
        [
            str(export),
            "--public-key",
            str(rotated.first_pem),
            "--seal-keys",
            str(seal_keys),
            *extra,
        ]
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    problems = [p for o in out for p in (o.get("evidence", o).get("problem_list") or [])]
    return code, problems


def _history(rotated: Rotated) -> dict[str, Any]:
    done = sealink("keys", "history", "--config", str(rotated.rig.conf), "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_the_history_names_the_first_key_then_the_transition(rotated: Rotated) -> None:
    doc = _history(rotated)
    first, second = doc["keys"]
    assert (doc["format"], doc["gateway"]) == ("sealink-key-history", "gw-ev")
    assert first == {"public_key": rotated.first.public_raw().hex(), "kid": rotated.first.kid.hex()}
    assert second["kid"] == rotated.rig.key.kid.hex()
    [transition] = walk(rotated.first.public_raw(), [second["transition"]], keys_origin("gw-ev"))
    assert (transition.seq, transition.size) == (1, rotated.switch)
    text = sealink("keys", "history", "--config", str(rotated.rig.conf)).stdout
    assert f"key 1: kid {rotated.first.kid.hex()}" in text
    assert f"key 2: kid {rotated.rig.key.kid.hex()}, from log size 6" in text


def test_an_export_verifies_end_to_end_with_only_the_first_key_pinned(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = rotated.rig.export()
    assert "key_history" in json.loads(lines[0])
    assert all("leaf" in json.loads(line) for line in lines[1:-1])
    code, problems = _verify(rotated, lines, capsys)
    assert (code, problems) == (EXIT_VERIFIED, [])
    # The history given on its own (`keys history --json`) serves an export without it.
    path = rotated.rig.root / "history.json"
    path.write_text(json.dumps(_history(rotated)))
    code, problems = _verify(rotated, lines[1:], capsys, "--key-history", str(path))
    assert (code, problems) == (EXIT_VERIFIED, [])


def test_without_the_history_the_problem_names_the_unknown_kid(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    code, problems = _verify(rotated, rotated.rig.export()[1:], capsys)
    assert code == EXIT_FAILED
    new_kid = rotated.rig.key.kid.hex()
    unknown = [p for p in problems if f"signed by kid {new_kid}" in p]
    assert len(unknown) == 3 and "--key-history" in unknown[0], problems
    assert "checkpoint: no signature by sealink/gateway/gw-ev under the given gateway key" in (
        problems
    )


def _without_old_signature(note: str, old: bytes) -> str:
    origin = note.split("\n", 1)[0]
    blob = hashlib.sha256(origin.encode() + b"\n\x01" + old).digest()[:4]
    prefix = f"\u2014 {origin} {base64.b64encode(blob).decode()[:4]}"
    return "".join(line for line in note.splitlines(True) if not line.startswith(prefix))


def test_a_forged_transition_fails(rotated: Rotated, capsys: pytest.CaptureFixture[str]) -> None:
    lines = rotated.rig.export()
    head = json.loads(lines[0])
    entry = head["key_history"]["keys"][1]
    thief = GatewayKey(Ed25519PrivateKey.generate())
    forged_cases = {
        # the new key alone vouches for itself
        "not signed by the old key": _without_old_signature(
            entry["transition"], rotated.first.public_raw()
        ),
        # a key that never was in the chain hands over to the new key
        "the chain skips a key": sign_transition(
            thief, rotated.rig.key, keys_origin("gw-ev"), 1, 6, now_ms()
        ).note,
    }
    for expected, note in forged_cases.items():
        forged = json.loads(json.dumps(head))
        forged["key_history"]["keys"][1]["transition"] = note
        code, problems = _verify(rotated, [json.dumps(forged), *lines[1:]], capsys)
        assert code == EXIT_FAILED, expected
        assert any(expected in p for p in problems), (expected, problems)


def test_a_record_countersigned_by_the_retired_key_after_the_switch_fails(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = rotated.rig
    rig.key = rotated.first  # its thief: the old private key was not kept by the gateway
    rig.add("seal-b", 1)
    lines = rig.export()
    code, problems = _verify(rotated, lines, capsys)
    assert code == EXIT_FAILED
    [late] = [p for p in problems if "retired" in p]
    assert "seal-b #3" in late and f"kid {rotated.first.kid.hex()}" in late, problems
    assert "retired at log size 6, before leaf 9" in late
    # With a rotated key, only the leaf index places a row before or after the switch.
    unplaced = [json.dumps({k: v for k, v in json.loads(x).items() if k != "leaf"}) for x in lines]
    code, problems = _verify(rotated, unplaced[:-1], capsys)
    assert code == EXIT_FAILED
    assert sum("names no leaf" in p for p in problems) == 10, problems


def test_a_checkpoint_signed_by_the_retired_key_after_the_switch_fails(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = rotated.rig
    rig.add("seal-b", 1)
    rig.key = rotated.first
    rig.checkpoint()
    code, problems = _verify(rotated, rig.export(), capsys)
    assert code == EXIT_FAILED
    assert any(
        "checkpoint" in p
        and f"key 2 (kid {GatewayKey.load(rig.root / 'gateway.key').kid.hex()})"
        " signs the checkpoints of that size"
        in p
        for p in problems
    ), problems


def _bundle(rotated: Rotated, counter: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    out = rotated.rig.root / f"a-{counter}.json"
    assert rotated.rig.cli("evidence", "bundle", "seal-a", str(counter), "-o", str(out)) == 0
    bundle = json.loads(out.read_text())
    assert bundle["version"] == 2 and len(bundle["key_history"]) == 2
    capsys.readouterr()
    args = ["bundle", str(out), "--gateway-key", str(rotated.first_pem), "--json"]
    code = verify([*args, "--seal-key", SEAL_KEY.hex()])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("counter", [2, 6], ids=["before the switch", "after the switch"])
def test_bundles_before_and_after_the_switch_verify_pinned_to_the_first_key(
    rotated: Rotated, capsys: pytest.CaptureFixture[str], counter: int
) -> None:
    code, report = _bundle(rotated, counter, capsys)
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])
    assert (
        report["keys"]["gateway"]["fingerprint"]
        == hashlib.sha256(rotated.first.public_raw()).hexdigest()
    )
    # Pinned to the new key instead, the walk does not start where the auditor's key is.
    new_pem = rotated.rig.root / "new.pem"
    new_pem.write_bytes(rotated.rig.key.public_pem())
    out = rotated.rig.root / f"a-{counter}.json"
    capsys.readouterr()
    args = ["bundle", str(out), "--gateway-key", str(new_pem), "--json"]
    assert verify([*args, "--seal-key", SEAL_KEY.hex()]) == EXIT_FAILED
    failed = {c["name"] for c in json.loads(capsys.readouterr().out)["checks"] if not c["ok"]}
    assert {"gateway_key", "key_history"} <= failed


def test_a_version_2_bundle_fails_where_the_history_does_not_fit(
    rotated: Rotated, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = rotated.rig
    out = rig.root / "a-2.json"
    assert rig.cli("evidence", "bundle", "seal-a", "2", "-o", str(out)) == 0
    valid = json.loads(out.read_text())
    first = {"public_key": rotated.first.public_raw().hex(), "kid": rotated.first.kid.hex()}
    size, root, heads = rig.ledger.log.tree_head()
    late_note = sign_checkpoint(rotated.first, ORIGIN, size, root, heads_hash(heads), now_ms())
    thief = GatewayKey.generate()
    forged = sign_transition(thief, rig.key, keys_origin("gw-ev"), 1, 6, now_ms()).note

    def tampered(edit: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = json.loads(json.dumps(valid))
        edit(bundle)
        return bundle

    cases = {
        "gateway_key": tampered(lambda b: b.update(gateway={"id": "gw-ev", **first})),
        # a pre-switch record moved past the switch: the first key no longer may have signed it
        "countersignature": tampered(lambda b: b["leaf"].update(index=7)),
        "checkpoint": tampered(lambda b: b["checkpoint"].update(note=late_note.note)),
        "key_history": tampered(lambda b: b["key_history"][1].update(transition=forged)),
    }
    for check, bundle in cases.items():
        out.write_text(json.dumps(bundle))
        capsys.readouterr()
        args = ["bundle", str(out), "--gateway-key", str(rotated.first_pem), "--json"]
        assert verify([*args, "--seal-key", SEAL_KEY.hex()]) == EXIT_FAILED, check
        report = json.loads(capsys.readouterr().out)
        failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
        assert check in failed, (check, failed)
    assert "retired at log size 6" in failed_detail(rotated, cases["countersignature"], capsys)
    assert "key 2" in failed_detail(rotated, cases["checkpoint"], capsys, "checkpoint")


def failed_detail(
    rotated: Rotated,
    bundle: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    check: str = "countersignature",
) -> str:
    out = rotated.rig.root / "detail.json"
    out.write_text(json.dumps(bundle))
    capsys.readouterr()
    verify(["bundle", str(out), "--gateway-key", str(rotated.first_pem), "--json"])
    report = json.loads(capsys.readouterr().out)
    return next(str(c["detail"]) for c in report["checks"] if c["name"] == check)


def test_the_tree_of_the_switch_may_be_signed_by_the_new_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service that stopped without its last checkpoint: the tree of the switch's size is
    signed after the rotation, by the new key."""
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    first = rig.key
    rig.add("seal-a", 4)
    rig.add("seal-b", 2)
    assert sealink("keys", "rotate", "--config", str(rig.conf)).returncode == 0
    rig.key = GatewayKey.load(rig.root / "gateway.key")
    assert rig.checkpoint().size == 6
    pem = rig.root / "first.pem"
    pem.write_bytes(first.public_pem())
    rotated = Rotated(rig, first, pem, 6)
    assert _verify(rotated, rig.export(), capsys) == (EXIT_VERIFIED, [])
    code, report = _bundle(rotated, 2, capsys)
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])


def test_keys_init_force_refuses_a_ledger_with_records(rotated: Rotated) -> None:
    before = (rotated.rig.root / "gateway.key").read_bytes()
    done = sealink("keys", "init", "--config", str(rotated.rig.conf), "--force")
    assert done.returncode != 0 and "keys rotate" in done.stderr, done.stderr
    assert "holds 9 records" in done.stderr
    assert (rotated.rig.root / "gateway.key").read_bytes() == before


def test_keys_init_force_still_replaces_keys_of_an_empty_ledger(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    done = sealink("keys", "init", "--config", str(rig.conf), "--force")
    assert done.returncode == 0, done.stderr
    assert GatewayKey.load(rig.root / "gateway.key").kid != rig.key.kid


def test_rotate_refuses_while_the_service_runs_and_says_why(rotated: Rotated) -> None:
    rig = rotated.rig
    before = (rig.root / "gateway.key").read_bytes()
    with service_lock(rig.path, exclusive=False):  # what a running service holds
        done = sealink("keys", "rotate", "--config", str(rig.conf))
    assert done.returncode != 0 and "service is running" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert (rig.root / "gateway.key").read_bytes() == before
    (rig.root / "gateway.key").unlink()
    missing = sealink("keys", "rotate", "--config", str(rig.conf))
    assert missing.returncode != 0 and "gateway.key" in missing.stderr, missing.stderr


def test_an_interrupted_rotation_stops_the_service_until_rotate_finishes_it(
    files: GatewayFiles,
) -> None:
    """Crash after the ledger's commit, before the rename: the old key is still in the file."""
    new = GatewayKey.generate()
    new.save(files.key_file.with_name("gateway.key.new"))
    ledger = files.ledger()
    try:
        ledger.key_history.rotate(files.key, new, keys_origin("gw-test"), now_ms())
    finally:
        ledger.close()
    config = files.config(1)

    async def start() -> None:
        async with running(config):
            pass

    with pytest.raises(KeyFileError, match="finish the rotation with `sealink keys rotate`"):
        run(start())
    conf = files.root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-test"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
    )
    done = sealink("keys", "rotate", "--config", str(conf))
    assert done.returncode == 0 and "finished an interrupted rotation" in done.stderr, done.stderr
    assert GatewayKey.load(files.key_file).kid == new.kid


def test_the_service_publishes_the_history_and_signs_with_the_new_key(
    files: GatewayFiles, broker: Mosquitto
) -> None:
    conf = files.root / "sealink.toml"
    conf.write_text(
        '[gateway]\nid = "gw-test"\nkey_file = "gateway.key"\nledger = "ledger.sqlite"\n'
    )
    done = sealink("keys", "rotate", "--config", str(conf))
    assert done.returncode == 0, done.stderr
    new = GatewayKey.load(files.key_file)
    config = dataclasses.replace(
        files.config(broker.port), ledger=LedgerConfig(checkpoint_interval_s=0.2)
    )
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        got.append(message.payload)
        arrived.set()

    async def body() -> None:
        async with running(config) as gateway:
            assert gateway.key.kid == new.kid
            await asyncio.to_thread(arrived.wait, 30)
            refused = await asyncio.to_thread(sealink, "keys", "rotate", "--config", str(conf))
            assert refused.returncode != 0 and "service is running" in refused.stderr

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe("sealink-test/gateway/gw-test/keys", qos=1)
    client.loop_start()
    try:
        run(body())
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, "no retained key history within 30 s"
    doc = json.loads(got[-1])
    assert [k["kid"] for k in doc["keys"]] == [files.key.kid.hex(), new.kid.hex()]
    history = verifier_history.from_entries(
        files.key.public_raw(), verifier_history.history_entries(doc["keys"]), "gw-test"
    )
    assert history.epochs[-1].public == new.public_raw()


# the fixed vectors --------------------------------------------------------------------------


def _fixed_key(label: str) -> GatewayKey:
    seed = hashlib.sha256(b"sealink vectors/" + label.encode()).digest()
    return GatewayKey(Ed25519PrivateKey.from_private_bytes(seed))


def _vectors() -> dict[str, Any]:
    keys = [_fixed_key(f"rotation key {n}") for n in (1, 2, 3)]
    origin = keys_origin("gw-vectors")
    one = sign_transition(keys[0], keys[1], origin, 1, 5, 1_764_580_800_000)
    two = sign_transition(keys[1], keys[2], origin, 2, 12, 1_764_667_200_000)
    skipping = sign_transition(keys[1], keys[2], origin, 1, 12, 1_764_667_200_000)
    other_body = one.note.replace("size 5\n", "size 4\n", 1)
    old_line = one.note.split("\n\n", 1)[1].splitlines(True)[0]
    return {
        "about": "SPEC §14.7: key transitions of gateway gw-vectors from fixed keys (Ed25519 "
        "seeds SHA-256('sealink vectors/rotation key N'), N = 1, 2, 3): key 1 -> key 2 at "
        "log size 5, key 2 -> key 3 at size 12; each 'tampered' chain must fail; regenerate "
        "with SEALINK_WRITE_VECTORS=1 pytest host/tests/test_rotation.py",
        "gateway": "gw-vectors",
        "keys": [k.public_raw().hex() for k in keys],
        "valid": [one.note, two.note],
        "tampered": [
            {
                "name": "the new key's signature line removed",
                "error": "by the new key",
                "chain": [one.note.replace(one.note.split("\n\n", 1)[1].splitlines(True)[1], "")],
            },
            {
                "name": "the old key's signature moved over another body",
                "error": "the old key's signature",
                "chain": [
                    other_body.split("\n\n", 1)[0]
                    + "\n\n"
                    + old_line
                    + _new_line(keys[1], other_body)
                ],
            },
            {
                "name": "the chain skips key 2",
                "error": "skips a key",
                "chain": [skipping.note],
            },
        ],
    }


def _new_line(key: GatewayKey, note: str) -> str:
    """The new key's honest signature of the (edited) text: only the old key's line is stale."""
    text = note.split("\n\n", 1)[0] + "\n"
    origin = text.split("\n", 1)[0]
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + key.public_raw()).digest()[:4]
    blob = base64.b64encode(key_id + key.private.sign(text.encode())).decode()
    return f"\u2014 {origin} {blob}\n"


def test_vector_file_is_current_and_both_implementations_agree() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, "regenerate: SEALINK_WRITE_VECTORS=1 pytest test_rotation.py"
    first = bytes.fromhex(vectors["keys"][0])
    origin = keys_origin(vectors["gateway"])
    chain = walk(first, vectors["valid"], origin)
    assert [t.new.hex() for t in chain] == vectors["keys"][1:]
    history = verifier_history.walk(first, vectors["valid"], vectors["gateway"])
    assert [e.public.hex() for e in history.epochs] == vectors["keys"]
    assert [(e.from_size, e.until_size) for e in history.epochs] == [(0, 5), (5, 12), (12, None)]
    for case in vectors["tampered"]:
        with pytest.raises(KeyHistoryError, match=case["error"]):
            walk(first, case["chain"], origin)
        with pytest.raises(verifier_history.KeyHistoryError, match=case["error"]):
            verifier_history.walk(first, case["chain"], vectors["gateway"])
