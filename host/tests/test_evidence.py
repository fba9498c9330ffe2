"""The transparency log (SPEC §14): RFC 9162 roots and proofs checked by an independent
implementation from PyPI (pymerkle) and by sealink_verify's own; the C2SP note format against the
Go sumdb/note vector; fixed vectors run by both implementations; the CLI; migration; the
service's checkpoint on a timer and at shutdown, published retained."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import pymerkle
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from evidence_rig import DEVICE_KEY, ORIGIN, Rig, as_pymerkle, seal_keys_file
from hypothesis import given
from hypothesis import strategies as st
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey
from sealink.evidence import leaf, merkle, note
from sealink.ledger import Ledger
from sealink_verify import tlog

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "evidence.json"
# golang.org/x/mod/sumdb/note's documented example: seed of "PRIVATE+KEY+PeterNeumann+c74f20a3+
# AYEKFALV...", its text, and the signature line Go writes for it.
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def _tree(n: int) -> tuple[list[bytes], dict[tuple[int, int], bytes], pymerkle.InmemoryTree]:
    data = [f"leaf-{i}".encode() for i in range(n)]
    frontier = merkle.Frontier(0, [])
    nodes = {}
    reference = pymerkle.InmemoryTree(algorithm="sha256")
    for d in data:
        nodes.update({(lv, i): h for lv, i, h in frontier.append(merkle.leaf_hash(d))})
        reference.append_entry(d)
    return data, nodes, reference


def _lookup(nodes: dict[tuple[int, int], bytes]) -> merkle.NodeLookup:
    return lambda level, index: nodes[(level, index)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 31, 64, 100])
def test_roots_and_proofs_agree_with_pymerkle_and_sealink_verify(n: int) -> None:
    data, nodes, reference = _tree(n)
    node = _lookup(nodes)
    for size in range(1, n + 1):
        root = merkle.subtree_root(node, 0, size)
        assert (
            root == reference.get_root(size) == tlog.mth([merkle.leaf_hash(d) for d in data[:size]])
        )
        for index in range(size):
            leaf = merkle.leaf_hash(data[index])
            path = merkle.inclusion_path(node, index, size)
            pymerkle.verify_inclusion(leaf, root, as_pymerkle(path, leaf, index, size))
            assert tlog.verify_inclusion(leaf, index, size, path, root)
        for old in range(0, size + 1):
            path = merkle.consistency_path(node, old, size)
            old_root = merkle.subtree_root(node, 0, old)
            assert tlog.verify_consistency(old, size, old_root, root, path), (old, size)
            assert _reference_consistency(data[:size], old, size) == path
    assert merkle.Frontier.load(n, node).root() == reference.get_root(n)


def _mth(data: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, literally (the test's own reference)."""
    if not data:
        return hashlib.sha256(b"").digest()
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1 << ((len(data) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(data[:k]) + _mth(data[k:])).digest()


def _subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    """RFC 9162 §2.1.4.1 SUBPROOF, literally."""
    n = len(data)
    if m == n:
        return [] if b else [_mth(data)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, data[:k], b), _mth(data[k:])]
    return [*_subproof(m - k, data[k:], False), _mth(data[:k])]


def _reference_consistency(data: list[bytes], old: int, size: int) -> list[bytes]:
    return [] if old in (0, size) else _subproof(old, data, True)


def test_tampered_proofs_fail_in_both_verifiers(seed: int) -> None:
    rng = random.Random(seed)
    data, nodes, _ = _tree(50)
    node = _lookup(nodes)
    for _ in range(200):
        size = rng.randint(2, 50)
        index, old = rng.randrange(size), rng.randint(1, size - 1)
        root, old_root = merkle.subtree_root(node, 0, size), merkle.subtree_root(node, 0, old)
        leaf = merkle.leaf_hash(data[index])
        path = merkle.inclusion_path(node, index, size)
        cons = merkle.consistency_path(node, old, size)
        if path:
            bad = list(path)
            bad[rng.randrange(len(bad))] = os.urandom(32)
            assert not tlog.verify_inclusion(leaf, index, size, bad, root)
            assert not merkle.verify_inclusion(leaf, index, size, bad, root)
        assert not tlog.verify_inclusion(leaf, (index + 1) % size, size, path, root) or size == 1
        bad = list(cons)
        bad[rng.randrange(len(bad))] = os.urandom(32)
        assert not tlog.verify_consistency(old, size, old_root, root, bad)
        assert not merkle.verify_consistency(old, size, old_root, root, bad)
        assert not tlog.verify_consistency(old, size, os.urandom(32), root, cons)


def test_the_note_format_matches_go_sumdb_note_byte_for_byte() -> None:
    key = GatewayKey(Ed25519PrivateKey.from_private_bytes(GO_SEED))
    assert note.note_key_id("PeterNeumann", key.public_raw()).hex() == "c74f20a3"
    signed = note.sign_note(key, "PeterNeumann", GO_TEXT)
    assert signed == GO_TEXT + "\n" + GO_SIG
    assert tlog.open_note(signed, key.public_pem(), "PeterNeumann") == GO_TEXT


def _vectors() -> dict[str, Any]:
    """The fixed vectors, computed with the independent pymerkle and the literal RFC text."""
    data, nodes, reference = _tree(7)
    node = _lookup(nodes)
    key = GatewayKey(Ed25519PrivateKey.from_private_bytes(bytes(32)))
    checkpoint = note.sign_checkpoint(
        key,
        "sealink/gateway/gw-vectors",
        7,
        reference.get_root(7),
        bytes(range(32)),
        1_700_000_000_000,
    )
    return {
        "about": "SPEC §14: RFC 9162 SHA-256 tree of 7 leaves (data = ASCII leaf-0..leaf-6), "
        "roots of every size, one inclusion and one consistency proof, and a checkpoint note "
        "signed with the Ed25519 key whose seed is 32 zero bytes",
        "leaves": [d.hex() for d in data],
        "leaf_hashes": [merkle.leaf_hash(d).hex() for d in data],
        "roots": {str(n): reference.get_root(n).hex() for n in range(0, 8)},
        "inclusion": {
            "index": 3,
            "size": 7,
            "path": [p.hex() for p in merkle.inclusion_path(node, 3, 7)],
        },
        "consistency": {
            "old": 3,
            "new": 7,
            "path": [p.hex() for p in _reference_consistency(data, 3, 7)],
        },
        "checkpoint": {"public_pem": key.public_pem().decode(), "note": checkpoint.note},
    }


def test_vectors_file_is_current_and_checked_by_both_implementations() -> None:
    expected = _vectors()
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, ensure_ascii=False) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, (
        "regenerate: SEALINK_WRITE_VECTORS=1 pytest host/tests/test_evidence.py"
    )
    leaves = [bytes.fromhex(h) for h in vectors["leaf_hashes"]]
    roots = {int(k): bytes.fromhex(v) for k, v in vectors["roots"].items()}
    assert roots[0] == merkle.EMPTY_ROOT
    for n in range(1, 8):
        assert tlog.mth(leaves[:n]) == roots[n]
    inc = vectors["inclusion"]
    path = [bytes.fromhex(p) for p in inc["path"]]
    for verify in (tlog.verify_inclusion, merkle.verify_inclusion):
        assert verify(leaves[inc["index"]], inc["index"], inc["size"], path, roots[7])
    cons = vectors["consistency"]
    path = [bytes.fromhex(p) for p in cons["path"]]
    for verify_c in (tlog.verify_consistency, merkle.verify_consistency):
        assert verify_c(cons["old"], cons["new"], roots[3], roots[7], path)
    pem = vectors["checkpoint"]["public_pem"].encode()
    opened = tlog.open_checkpoint(vectors["checkpoint"]["note"], pem)
    assert (opened.size, opened.root) == (7, roots[7])


# the ledger and the CLI -------------------------------------------------------------------------


def test_the_ledger_log_matches_the_records_and_the_cli_proofs_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig(tmp_path)
    rig.add("seal-a", 5)
    rig.add("seal-b", 4, per_commit=1)
    first = rig.checkpoint()
    rig.add("seal-a", 3)
    latest = rig.checkpoint()
    assert (first.size, latest.size) == (9, 12)
    # The log's leaves are the records, in commit order, recomputed by the verifier.
    leaves = []
    for device, counts in (
        ("seal-a", range(1, 6)),
        ("seal-b", range(1, 5)),
        ("seal-a", range(6, 9)),
    ):
        for counter in counts:
            leaf = rig.ledger.log.leaf_of(device, counter)
            assert leaf is not None and leaf.index == len(leaves)
            leaves.append(leaf.hash)
    assert tlog.mth(leaves) == latest.root and tlog.mth(leaves[:9]) == first.root

    capsys.readouterr()
    assert rig.cli("evidence", "prove", "seal-b", "2", "--json") == 0
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(capsys.readouterr().out)
    assert rig.cli("evidence", "consistency", "9", "--json") == 0
    cons_file = tmp_path / "cons.json"
    cons_file.write_text(capsys.readouterr().out)
    assert rig.cli("evidence", "checkpoint") == 0
    assert capsys.readouterr().out == latest.note
    assert rig.cli("evidence", "checkpoint", "--json", "--size", "9") == 0
    shown = json.loads(capsys.readouterr().out)
    assert [h["device"] for h in shown["heads"]] == ["seal-a", "seal-b"]

    pem = tmp_path / "gw.pem"
    pem.write_bytes(rig.pem())
    from sealink_verify.cli import main as verify

    assert (
        verify(["--public-key", str(pem), "--proof", str(proof_file), "--proof", str(cons_file)])
        == 0
    )
    out = json.loads(capsys.readouterr().out.splitlines()[-1])["evidence"]
    assert out["problems"] == 0
    # ... and pymerkle agrees with the CLI's inclusion proof.
    proof = json.loads(proof_file.read_text())
    leaf = bytes.fromhex(proof["leaf_hash"])
    path = [bytes.fromhex(p) for p in proof["path"]]
    pymerkle.verify_inclusion(
        leaf, latest.root, as_pymerkle(path, leaf, proof["leaf_index"], proof["tree_size"])
    )
    # A proof edited by one hash fails, and says so in the JSON.
    proof["path"][0] = "00" * 32
    proof_file.write_text(json.dumps(proof))
    assert verify(["--public-key", str(pem), "--proof", str(proof_file)]) == 1
    out = json.loads(capsys.readouterr().out.splitlines()[-1])["evidence"]
    assert any("does not verify" in p for p in out["problem_list"])


def test_an_intact_export_with_checkpoint_verifies_and_recomputes_the_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = Rig(tmp_path)
    rig.add("seal-a", 6)
    rig.add("seal-b", 2)
    old = rig.checkpoint()
    rig.add("seal-b", 2)
    rig.checkpoint()
    rig.add("seal-a", 1)  # after the latest checkpoint: exported, not yet covered
    export = tmp_path / "export.jsonl"
    rig.export(export.name)
    (tmp_path / "old.note").write_text(old.note)
    (tmp_path / "gw.pem").write_bytes(rig.pem())
    from sealink_verify.cli import main as verify

    capsys.readouterr()
    code = verify(
        [
            str(export),
            "--public-key",
            str(tmp_path / "gw.pem"),
            "--checkpoint",
            str(tmp_path / "old.note"),
            "--seal-keys",
            str(seal_keys_file(tmp_path / "seal-keys.jsonl", ["seal-a", "seal-b"])),
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, lines
    evidence = lines[-1]["evidence"]
    assert evidence["root_recomputed"] is True
    assert evidence["heads_checked"] == 2 and evidence["rows_after_checkpoint"] == 1
    assert evidence["consistent_with"] == [old.size]


def test_a_v2_ledger_migrates_into_the_log(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.add("seal-a", 4)
    rig.add("seal-b", 2)
    root = rig.ledger.log.root()
    rig.ledger.close()
    db = sqlite3.connect(rig.path)
    for table in ("log_leaves", "log_nodes", "checkpoints"):
        db.execute(f"DROP TABLE {table}")
    db.execute("ALTER TABLE devices DROP COLUMN seal_key")  # new in v4
    db.execute("ALTER TABLE devices DROP COLUMN enrolment")  # new in v6
    db.execute("ALTER TABLE devices ADD COLUMN key BLOB")  # gone in v5
    db.execute("UPDATE devices SET key = ?", (DEVICE_KEY,))
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    again = Ledger(rig.path, LinkKeyStore(tmp_path / "moved-keys"))
    assert again.log.size() == 6 and again.log.root() == root  # device then counter order
    again.close()
    assert set(LinkKeyStore(tmp_path / "moved-keys").load()) == {"seal-a", "seal-b"}


def test_the_service_checkpoints_on_a_timer_and_at_shutdown_published_retained(
    files: Any, broker: Any
) -> None:
    import dataclasses

    import paho.mqtt.client as mqtt
    from conftest import run, running
    from sealink.config import LedgerConfig
    from sealink.crypto.signer import countersign_payload
    from sealink.ledger import EventRow
    from sealink_sim.simdevice import make_event
    from sealproto import auth

    config = dataclasses.replace(
        files.config(broker.port), ledger=LedgerConfig(checkpoint_interval_s=0.2)
    )
    device = next(iter(files.device_keys))

    async def body() -> None:
        async with running(config) as gateway:
            prev = auth.GENESIS
            for counter in (1, 2, 3):
                event = make_event(files.device_keys[device], counter, prev)
                prev = auth.record_hash(event)
                cose = files.key.sign1(countersign_payload(device, counter, event, 1, "gw-test"))
                await gateway.committer.submit(
                    event=EventRow(device, counter, event, prev, cose, 1)
                )
                if counter == 2:
                    for _ in range(100):
                        if gateway.checkpoints.latest is not None:
                            break
                        await asyncio.sleep(0.05)
                    assert gateway.checkpoints.latest is not None
                    assert gateway.checkpoints.latest.size == 2

    run(body())
    ledger = files.ledger()
    try:
        latest = ledger.log.checkpoint()
        assert latest is not None and latest.size == 3  # the shutdown checkpoint
    finally:
        ledger.close()
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect("127.0.0.1", broker.port)
    client.subscribe("sealink-test/gateway/gw-test/checkpoint", qos=1)
    client.loop_start()
    try:
        for _ in range(100):
            if got:
                break
            import time

            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got and got[-1].decode() == latest.note
    opened = tlog.open_checkpoint(got[-1].decode(), files.key.public_pem())
    assert opened.size == 3 and opened.origin == "sealink/gateway/gw-test"
    assert ORIGIN.startswith("sealink/gateway/")


@given(
    device=st.text(min_size=1, max_size=40),
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    event_hash=st.binary(min_size=32, max_size=32),
    cose=st.binary(max_size=300),
)
def test_the_fast_event_leaf_is_the_cbor2_reference(
    device: str, counter: int, event_hash: bytes, cose: bytes
) -> None:
    expected = leaf.event_leaf_reference(device, counter, event_hash, cose)
    assert leaf.event_leaf(device, counter, event_hash, cose) == expected
    # ... and what sealink_verify derives from the exported bytes (event hash given here)
    assert cbor2.loads(expected)["event"] == event_hash
