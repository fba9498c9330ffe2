"""A record's COSE Receipt of inclusion (RFC 9942, SPEC §14.8): `sealink evidence receipt`
signs one from a real ledger against the bundle's checkpoint, `sealink-verify receipt` checks it
offline; its root is the checkpoint's, pymerkle agrees, the signature verifies over a
Sig_structure built by hand; each tampering fails the check that names it; the fixed vector
(protocol/vectors/receipt.json) runs through both implementations."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pymerkle
import pytest
from conftest import sealink
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from evidence_rig import Rig, as_pymerkle, vector_bundle
from sealink.crypto.signer import GatewayKey
from sealink.evidence import merkle
from sealink.evidence.receipt import make_receipt
from sealink_verify import tlog
from sealink_verify.cli import EXIT_FAILED, EXIT_UNUSABLE, EXIT_VERIFIED
from sealink_verify.cli import main as verify

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "receipt.json"
Parts = list[Any]  # [protected header map, unprotected map, payload, signature]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    """Two seals, a checkpoint of 11 leaves, and one record after it (as test_bundle's)."""
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 8)
    rig.add("seal-b", 3)
    rig.checkpoint()
    rig.add("seal-a", 1)
    (rig.root / "gw.pem").write_bytes(rig.pem())
    return rig


def _receipt(rig: Rig, device: str, counter: int, *extra: str) -> bytes:
    out = rig.root / f"{device}-{counter}.cbor"
    assert rig.cli("evidence", "receipt", device, str(counter), "-o", str(out), *extra) == 0
    return out.read_bytes()


def _bundle(rig: Rig, device: str, counter: int) -> Path:
    out = rig.root / f"{device}-{counter}.json"
    assert rig.cli("evidence", "bundle", device, str(counter), "-o", str(out)) == 0
    return out


def _check(
    tmp_path: Path,
    receipt: bytes,
    pem: Path,
    capsys: pytest.CaptureFixture[str],
    *inputs: str,
) -> tuple[int, dict[str, Any]]:
    """Run `sealink-verify receipt --json`; (exit status, the JSON report)."""
    path = tmp_path / "checked.cbor"
    path.write_bytes(receipt)
    capsys.readouterr()
    code = verify(["receipt", str(path), *inputs, "--gateway-key", str(pem), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _failed(report: dict[str, Any]) -> list[str]:
    return sorted(c["name"] for c in report["checks"] if not c["ok"])


def test_a_receipt_from_the_ledger_verifies_and_signs_the_checkpoints_root(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = _receipt(rig, "seal-a", 5)
    bundle_path = _bundle(rig, "seal-a", 5)
    bundle = json.loads(bundle_path.read_text())
    pem = rig.root / "gw.pem"
    code, report = _check(tmp_path, receipt, pem, capsys, "--bundle", str(bundle_path))
    assert (code, report["problems"], report["status"]) == (EXIT_VERIFIED, [], "verified")
    assert [c["name"] for c in report["checks"]] == [
        "leaf",
        "structure",
        "vds",
        "inclusion",
        "key",
        "signature",
        "checkpoint",
    ]
    checkpoint = rig.ledger.log.checkpoint(11)
    assert checkpoint is not None
    facts = report["facts"]
    assert (facts["tree_size"], facts["leaf_index"], facts["root"]) == (
        11,
        4,
        checkpoint.root.hex(),
    )
    # The bundle carries the same receipt, and the bundle alone is enough to check it.
    assert bundle["receipt"] == receipt.hex()
    capsys.readouterr()
    args = ["receipt", "--bundle", str(bundle_path), "--gateway-key", str(pem)]
    assert verify(args) == EXIT_VERIFIED
    assert capsys.readouterr().out.startswith("This receipt proves that leaf 4 ")
    code, report = _check(tmp_path, receipt, pem, capsys, "--leaf-data", bundle["leaf"]["data"])
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])
    # The same record and checkpoint give the same bytes.
    assert _receipt(rig, "seal-a", 5, "--force") == receipt


def test_the_structure_is_rfc_9942s_and_checked_without_cwt_and_by_pymerkle(rig: Rig) -> None:
    receipt = _receipt(rig, "seal-a", 6)
    bundle = json.loads(_bundle(rig, "seal-a", 6).read_text())
    tag = cbor2.loads(receipt)
    assert tag.tag == 18 and cbor2.dumps(tag, canonical=True) == receipt
    protected_raw, unprotected, payload, signature = tag.value
    assert cbor2.loads(protected_raw) == {1: -8, 4: rig.key.kid, 395: 1}
    assert list(unprotected) == [396] and list(unprotected[396]) == [-1]
    [proof] = unprotected[396][-1]
    size, index, path = cbor2.loads(proof)
    assert (size, index, payload) == (11, bundle["leaf"]["index"], None)
    assert path == [bytes.fromhex(p) for p in bundle["inclusion"]["path"]]
    leaf = merkle.leaf_hash(bytes.fromhex(bundle["leaf"]["data"]))
    root = tlog.inclusion_root(leaf, index, size, path)
    checkpoint = rig.ledger.log.checkpoint(11)
    assert checkpoint is not None and root == checkpoint.root
    pymerkle.verify_inclusion(leaf, root, as_pymerkle(path, leaf, index, size))
    # RFC 9052 §4.4 by hand: the detached payload is the root.
    to_sign = cbor2.dumps(["Signature1", protected_raw, b"", root])
    Ed25519PublicKey.from_public_bytes(rig.key.public_raw()).verify(signature, to_sign)


def _edit(change: Callable[[Parts], None], key: GatewayKey | None = None) -> Callable[..., bytes]:
    """A tampering: decode, change, re-encode; with `key`, signed again by that key."""

    def tamper(receipt: bytes, root: bytes) -> bytes:
        protected_raw, unprotected, payload, signature = cbor2.loads(receipt).value
        parts: Parts = [cbor2.loads(protected_raw), unprotected, payload, signature]
        change(parts)
        protected = cbor2.dumps(parts[0], canonical=True)
        if key is not None:
            parts[3] = key.private.sign(cbor2.dumps(["Signature1", protected, b"", root]))
        return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, *parts[1:]]), canonical=True))

    return tamper


def _proof(change: Callable[[list[Any]], None]) -> Callable[[Parts], None]:
    def edit(parts: Parts) -> None:
        proof = cbor2.loads(parts[1][396][-1][0])
        change(proof)
        parts[1][396][-1][0] = cbor2.dumps(proof, canonical=True)

    return edit


def _flip_node(proof: list[Any]) -> None:
    proof[2][0] = bytes([proof[2][0][0] ^ 1]) + proof[2][0][1:]


def _next_leaf(proof: list[Any]) -> None:
    proof[1] ^= 1  # the sibling's index: the path's first step turns the other way


def _size_at_leaf(proof: list[Any]) -> None:
    proof[0] = proof[1]


def _no_path(proof: list[Any]) -> None:
    proof[2] = []


def _flip_signature(parts: Parts) -> None:
    parts[3] = bytes([parts[3][0] ^ 1]) + parts[3][1:]


def _vds(parts: Parts) -> None:
    parts[0][395] = 2


def _attach(parts: Parts) -> None:
    parts[2] = b"\x00" * 32


# Another gateway's key, fixed so that the vector's tampered receipts are too.
_OTHER = GatewayKey(
    Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"sealink tests/another key").digest())
)


def _other_kid(parts: Parts) -> None:
    parts[0][4] = _OTHER.kid


TAMPERINGS: list[tuple[str, Callable[..., bytes], list[str]]] = [
    ("a path node flipped", _edit(_proof(_flip_node)), ["signature"]),
    ("the leaf index changed", _edit(_proof(_next_leaf)), ["signature"]),
    ("a tree size the leaf is not in", _edit(_proof(_size_at_leaf)), ["inclusion"]),
    ("an empty path", _edit(_proof(_no_path)), ["structure"]),
    ("a signature byte flipped", _edit(_flip_signature), ["signature"]),
    ("vds changed", _edit(_vds), ["vds"]),
    ("the payload attached", _edit(_attach), ["structure"]),
    ("signed by another key", _edit(_other_kid, _OTHER), ["key"]),
    ("another key under the gateway's kid", _edit(lambda _: None, _OTHER), ["signature"]),
]


@pytest.mark.parametrize(
    ("tamper", "fails"), [(t, f) for _, t, f in TAMPERINGS], ids=[n for n, _, _ in TAMPERINGS]
)
def test_each_tampering_fails_its_check(
    rig: Rig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[..., bytes],
    fails: list[str],
) -> None:
    receipt = _receipt(rig, "seal-a", 5)
    checkpoint = rig.ledger.log.checkpoint(11)
    assert checkpoint is not None
    leaf = json.loads(_bundle(rig, "seal-a", 5).read_text())["leaf"]["data"]
    changed = tamper(receipt, checkpoint.root)
    code, report = _check(tmp_path, changed, rig.root / "gw.pem", capsys, "--leaf-data", leaf)
    assert (code, _failed(report)) == (EXIT_FAILED, fails), report["problems"]


def test_a_receipt_for_another_record_fails_against_the_bundle(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _receipt(rig, "seal-a", 6)
    bundle = _bundle(rig, "seal-a", 5)
    code, report = _check(tmp_path, other, rig.root / "gw.pem", capsys, "--bundle", str(bundle))
    assert (code, _failed(report)) == (EXIT_FAILED, ["inclusion"])
    assert "the bundle's record is leaf 4" in report["problems"][0]


def test_no_receipt_over_a_root_the_checkpoint_did_not_sign(rig: Rig) -> None:
    """A ledger whose nodes were changed after the checkpoint: the path no longer reaches the
    signed root, and the gateway signs nothing (the bundle, which signs nothing new, is still
    written, without a receipt, and fails its own inclusion step)."""
    db = sqlite3.connect(rig.path)
    with db:
        db.execute("UPDATE log_nodes SET hash = ? WHERE level = 0 AND idx = 5", (bytes(32),))
    db.close()
    out = str(rig.root / "r.cbor")
    done = sealink("evidence", "receipt", "--config", str(rig.conf), "seal-a", "5", "-o", out)
    assert done.returncode == 2 and "does not reach the root" in done.stderr, done.stderr
    assert "receipt" not in json.loads(_bundle(rig, "seal-a", 5).read_text())


def _bigger_tree(proof: list[Any]) -> None:
    proof[0] = 12  # leaf 4's path in a tree of 11 computes the same root in one of 12


def test_the_tree_size_is_not_signed_and_only_a_checkpoint_ties_it_to_the_root(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receipt = _receipt(rig, "seal-a", 5)
    checkpoint = rig.ledger.log.checkpoint(11)
    assert checkpoint is not None
    bundle = _bundle(rig, "seal-a", 5)
    leaf = json.loads(bundle.read_text())["leaf"]["data"]
    claimed = _edit(_proof(_bigger_tree))(receipt, checkpoint.root)
    pem = rig.root / "gw.pem"
    code, report = _check(tmp_path, claimed, pem, capsys, "--leaf-data", leaf)
    assert (code, report["facts"]["tree_size"]) == (EXIT_VERIFIED, 12)
    code, report = _check(tmp_path, claimed, pem, capsys, "--bundle", str(bundle))
    assert (code, _failed(report)) == (EXIT_FAILED, ["checkpoint"])


def _rotated(tmp_path: Path) -> tuple[Rig, GatewayKey]:
    """Four records and a checkpoint of size 4 under the first key, two more, a rotation at
    size 6, three more records and a checkpoint of size 9 under the new key."""
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 4)
    rig.checkpoint()
    rig.add("seal-b", 2)
    first = rig.key
    done = sealink("keys", "rotate", "--config", str(rig.conf))
    assert done.returncode == 0, done.stderr
    rig.key = GatewayKey.load(rig.root / "gateway.key")
    rig.add("seal-a", 3)
    rig.checkpoint()
    (rig.root / "first.pem").write_bytes(first.public_pem())
    return rig, first


def test_after_a_rotation_the_new_key_signs_and_the_bundles_history_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig, first = _rotated(tmp_path)
    pem = rig.root / "first.pem"
    receipt = _receipt(rig, "seal-a", 1)
    bundle = _bundle(rig, "seal-a", 1)
    code, report = _check(tmp_path, receipt, pem, capsys, "--bundle", str(bundle))
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])
    assert "key_history" in [c["name"] for c in report["checks"]]
    # Without the history, the first key alone does not know the key that signed.
    leaf = json.loads(bundle.read_text())["leaf"]["data"]
    code, report = _check(tmp_path, receipt, pem, capsys, "--leaf-data", leaf)
    assert (code, _failed(report)) == (EXIT_FAILED, ["key"])
    # The retired key (stolen) signing a receipt of a tree it never signed is caught.
    checkpoint = rig.ledger.log.checkpoint(9)
    assert checkpoint is not None
    path = rig.ledger.log.inclusion(0, 9)
    forged = make_receipt(first, 9, 0, path, checkpoint.root)
    code, report = _check(tmp_path, forged, pem, capsys, "--bundle", str(bundle))
    assert (code, _failed(report)) == (EXIT_FAILED, ["key"])
    assert "signs no tree of size 9" in report["problems"][0]
    # The gateway no longer holds the key of the checkpoint of size 4: no receipt, and a
    # bundle against it is written without one.
    done = sealink(
        "evidence",
        "receipt",
        "--config",
        str(rig.conf),
        "seal-a",
        "1",
        "--checkpoint",
        "4",
        "-o",
        str(rig.root / "r.cbor"),
    )
    assert done.returncode == 2 and "retired gateway key" in done.stderr, done.stderr
    out = rig.root / "old.json"
    assert rig.cli("evidence", "bundle", "seal-a", "1", "--checkpoint", "4", "-o", str(out)) == 0
    assert "receipt" not in json.loads(out.read_text())


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["seal-zz", "1"], "unknown device seal-zz"),
        (None, ["seal-a", "99"], "seal-a #99 is not in the log"),
        (None, ["seal-a", "9"], "not yet covered by the checkpoint of size 11"),
        (None, ["seal-a", "1", "--checkpoint", "7"], "no checkpoint of size 7"),
        ("no-checkpoint", ["seal-a", "1"], "no checkpoint yet"),
        ("one-leaf", ["seal-a", "1"], "the only leaf of the checkpoint of size 1"),
        ("exists", ["seal-a", "1"], "exists; not overwriting (--force)"),
    ],
)
def test_cli_errors_are_one_line_without_a_traceback(
    tmp_path: Path, setup: str | None, args: list[str], message: str
) -> None:
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 1 if setup == "one-leaf" else 8)
    if setup == "one-leaf":
        rig.checkpoint()
    else:
        rig.add("seal-b", 3)
        if setup != "no-checkpoint":
            rig.checkpoint()
        rig.add("seal-a", 1)
    out = rig.root / "r.cbor"
    if setup == "exists":
        out.write_text("keep me")
    done = sealink("evidence", "receipt", "--config", str(rig.conf), *args, "-o", str(out))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert out.read_text() == "keep me" if setup == "exists" else not out.exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["MISSING", "--leaf-data", "00"], "cannot read"),
        (["RECEIPT", "--leaf-data", "zz"], "--leaf-data: not hex"),
        (["--bundle", "NO-RECEIPT"], "no receipt: give FILE"),
        (["RECEIPT", "--bundle", "RECEIPT"], "r.cbor: 'utf-8' codec can't decode"),
        (["RECEIPT", "--leaf-data", "00", "--gateway-key", "RECEIPT"], "not an Ed25519"),
    ],
)
def test_unusable_verifier_input_exits_2_with_a_message(
    rig: Rig, capsys: pytest.CaptureFixture[str], inputs: list[str], message: str
) -> None:
    receipt = rig.root / "r.cbor"
    receipt.write_bytes(_receipt(rig, "seal-a", 2))
    no_receipt = rig.root / "plain.json"
    bundle = json.loads(_bundle(rig, "seal-a", 2).read_text())
    del bundle["receipt"]
    no_receipt.write_text(json.dumps(bundle))
    names = {"MISSING": str(rig.root / "missing"), "RECEIPT": str(receipt)}
    names["NO-RECEIPT"] = str(no_receipt)
    args = [names.get(a, a) for a in inputs]
    if "--gateway-key" not in args:
        args += ["--gateway-key", str(rig.root / "gw.pem")]
    capsys.readouterr()
    assert verify(["receipt", *args]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert err.startswith("sealink-verify: error: ") and message in err, err


# the fixed vector ---------------------------------------------------------------------------


def _vectors(root: Path) -> dict[str, Any]:
    """The receipt inside evidence_rig's fixed bundle (impression 2 of seal S-0001, leaf 2 of
    a checkpoint of size 5, fixed gateway key), and tampered copies."""
    bundle, key = vector_bundle(root)
    receipt = bytes.fromhex(bundle["receipt"])
    pem = key.public_pem()
    root_hash = tlog.open_checkpoint(bundle["checkpoint"]["note"], pem).root
    return {
        "about": "SPEC §14.8: the COSE Receipt (RFC 9942, RFC9162_SHA256) of "
        "protocol/vectors/bundle.json's record (leaf 2 of 5, gateway Ed25519 seed "
        "SHA-256('sealink vectors/bundle gateway key')); 'tampered' receipts must fail exactly "
        "the checks in 'fails'; regenerate with SEALINK_WRITE_VECTORS=1 pytest "
        "host/tests/test_receipt.py",
        "gateway_public_pem": pem.decode(),
        "leaf_data": bundle["leaf"]["data"],
        "leaf_index": bundle["leaf"]["index"],
        "tree_size": bundle["inclusion"]["tree_size"],
        "path": bundle["inclusion"]["path"],
        "root": root_hash.hex(),
        "receipt": receipt.hex(),
        "tampered": [
            {"name": name, "fails": fails, "receipt": tamper(receipt, root_hash).hex()}
            for name, tamper, fails in TAMPERINGS
        ],
    }


def test_vector_file_is_current_and_checked_by_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _vectors(tmp_path / "vectors")
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, (
        "regenerate: SEALINK_WRITE_VECTORS=1 pytest host/tests/test_receipt.py"
    )
    # The gateway's side makes exactly these bytes from the proof's numbers.
    key = GatewayKey.load(tmp_path / "vectors" / "gateway.key")
    path = [bytes.fromhex(p) for p in vectors["path"]]
    made = make_receipt(
        key, vectors["tree_size"], vectors["leaf_index"], path, bytes.fromhex(vectors["root"])
    )
    assert made.hex() == vectors["receipt"]
    # The verifier's side accepts it and fails each tampered one where the vector says.
    pem = tmp_path / "gw.pem"
    pem.write_text(vectors["gateway_public_pem"])
    leaf = ["--leaf-data", vectors["leaf_data"]]
    code, report = _check(tmp_path, bytes.fromhex(vectors["receipt"]), pem, capsys, *leaf)
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])
    assert report["facts"]["root"] == vectors["root"]
    for case in vectors["tampered"]:
        code, report = _check(tmp_path, bytes.fromhex(case["receipt"]), pem, capsys, *leaf)
        assert (code, _failed(report)) == (EXIT_FAILED, case["fails"]), case["name"]
