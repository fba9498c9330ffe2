"""One impression's evidence bundle (SPEC §14.5): `sealink evidence bundle` writes it from a
real ledger, `sealink-verify bundle` checks it offline; every tampering fails the check that
names it; keys only taken from the bundle give their own exit status; the fixed vector
(protocol/vectors/bundle.json) runs through the verifier; the inclusion proof is also checked
by pymerkle and by the gateway's own RFC 9162 code."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pymerkle
import pytest
from conftest import sealink
from evidence_rig import (
    FORGER_CHIP,
    MADE_S,
    ORIGIN,
    SEAL_KEY,
    SIGNED_MS,
    Bundle,
    Rig,
    as_pymerkle,
    vector_bundle,
)
from sealink.crypto.signer import GatewayKey
from sealink.evidence import merkle, note
from sealink_verify.cli import EXIT_FAILED, EXIT_UNPINNED, EXIT_UNUSABLE, EXIT_VERIFIED
from sealink_verify.cli import main as verify

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "bundle.json"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    """Two seals, a checkpoint of 11 leaves, and one record after it."""
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 8)
    rig.add("seal-b", 3)
    rig.checkpoint()
    rig.add("seal-a", 1)
    (rig.root / "gw.pem").write_bytes(rig.pem())
    return rig


def _bundle(rig: Rig, device: str, counter: int, name: str = "b.json") -> Bundle:
    out = rig.root / name
    assert rig.cli("evidence", "bundle", device, str(counter), "-o", str(out)) == 0
    loaded: Bundle = json.loads(out.read_text())
    return loaded


def _check(
    tmp_path: Path,
    bundle: Bundle,
    capsys: pytest.CaptureFixture[str],
    gateway_pem: Path | None = None,
    seal_key: bytes | None = SEAL_KEY,
) -> tuple[int, dict[str, Any]]:
    """Run `sealink-verify bundle --json`; (exit status, the JSON report)."""
    path = tmp_path / "checked.json"
    path.write_text(json.dumps(bundle))
    args = ["bundle", str(path), "--json"]
    if gateway_pem is not None:
        args += ["--gateway-key", str(gateway_pem)]
    if seal_key is not None:
        args += ["--seal-key", seal_key.hex()]
    capsys.readouterr()
    code = verify(args)
    return code, json.loads(capsys.readouterr().out)


def _failed(report: dict[str, Any]) -> set[str]:
    return {c["name"] for c in report["checks"] if not c["ok"]}


def test_a_bundle_from_the_ledger_verifies_with_pinned_keys(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    assert (bundle["format"], bundle["version"]) == ("sealink-evidence-bundle", 1)
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem")
    assert (code, report["problems"], report["status"]) == (EXIT_VERIFIED, [], "verified")
    assert [c["name"] for c in report["checks"]] == [
        "record",
        "seal_key",
        "seal_signature",
        "gateway_key",
        "countersignature",
        "leaf",
        "checkpoint",
        "inclusion",
        "heads",
        "key_history",
    ]
    facts = report["facts"]
    assert (facts["device"], facts["counter"], facts["leaf_index"], facts["tree_size"]) == (
        "seal-a",
        5,
        4,
        11,
    )
    assert facts["received_ms"] == 1_700_000_000_005 and facts["kind"] == "impression"
    assert report["keys"]["gateway"] == {
        "fingerprint": hashlib.sha256(rig.key.public_raw()).hexdigest(),
        "pinned": True,
    }
    # The head of a device is bundled too: its heads entry is this very leaf.
    code, report = _check(
        tmp_path, _bundle(rig, "seal-b", 3, "head.json"), capsys, rig.root / "gw.pem"
    )
    assert code == EXIT_VERIFIED, report["problems"]


def test_the_file_is_written_whole_readable_and_never_over_another(rig: Rig) -> None:
    out = rig.root / "b.json"
    _bundle(rig, "seal-a", 2)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in rig.root.iterdir() if p.name.startswith(".b.json")] == []
    before = out.read_bytes()
    assert rig.cli("evidence", "bundle", "seal-a", "3", "-o", str(out)) == 2
    assert out.read_bytes() == before
    assert rig.cli("evidence", "bundle", "seal-a", "3", "-o", str(out), "--force") == 0
    assert json.loads(out.read_text())["counter"] == 3
    # Stable bytes: the same impression and checkpoint give the same file.
    again = rig.root / "again.json"
    assert rig.cli("evidence", "bundle", "seal-a", "3", "-o", str(again)) == 0
    assert again.read_bytes() == out.read_bytes()


def test_the_proof_is_checked_by_pymerkle_and_the_gateways_code(rig: Rig) -> None:
    bundle = _bundle(rig, "seal-a", 6)
    leaf = merkle.leaf_hash(bytes.fromhex(bundle["leaf"]["data"]))
    path = [bytes.fromhex(p) for p in bundle["inclusion"]["path"]]
    index, size = bundle["leaf"]["index"], bundle["inclusion"]["tree_size"]
    checkpoint = note.open_note(bundle["checkpoint"]["note"], rig.key.public, rig.key.public_raw())
    assert merkle.verify_inclusion(leaf, index, size, path, checkpoint.root)
    pymerkle.verify_inclusion(leaf, checkpoint.root, as_pymerkle(path, leaf, index, size))


def _flip_prev(bundle: Bundle) -> None:
    event = cbor2.loads(bytes.fromhex(bundle["record"]))
    event[8] = bytes([event[8][0] ^ 1]) + event[8][1:]
    bundle["record"] = cbor2.dumps(event, canonical=True).hex()


def _flip_mac(bundle: Bundle) -> None:
    raw = bytearray.fromhex(bundle["record"])
    raw[-1] ^= 1  # the MAC's last byte: outside the seal's signature, inside the gateway's
    bundle["record"] = raw.hex()


def _flip_path(bundle: Bundle) -> None:
    path = bundle["inclusion"]["path"]
    path[1] = bytes([bytes.fromhex(path[1])[0] ^ 1]).hex() + path[1][2:]


def _edit_note(bundle: Bundle) -> None:
    text = bundle["checkpoint"]["note"]
    bundle["checkpoint"]["note"] = text.replace("sealink-time-ms 1", "sealink-time-ms 2", 1)


def _other_heads(bundle: Bundle) -> None:
    bundle["heads"] = [h for h in bundle["heads"] if h["device"] == bundle["device"]]


def _other_leaf_data(bundle: Bundle) -> None:
    leaf = cbor2.loads(bytes.fromhex(bundle["leaf"]["data"]))
    leaf["counter"] -= 1
    bundle["leaf"]["data"] = cbor2.dumps(leaf, canonical=True).hex()


def _second_key(bundle: Bundle) -> None:
    bundle["key_history"].insert(0, {"public_key": "11" * 32, "kid": "22" * 8})


@pytest.mark.parametrize(
    ("tamper", "fails"),
    [
        (_flip_prev, {"seal_signature", "countersignature", "leaf"}),
        (_flip_mac, {"countersignature", "leaf"}),
        (lambda b: b["leaf"].update(index=b["leaf"]["index"] - 1), {"inclusion"}),
        (_flip_path, {"inclusion"}),
        (_edit_note, {"checkpoint", "inclusion", "heads"}),
        (_other_heads, {"heads"}),
        (_other_leaf_data, {"leaf", "inclusion"}),
        (_second_key, {"key_history"}),
        (lambda b: b["gateway"].update(kid="00" * 8), {"gateway_key", "key_history"}),
    ],
    ids=[
        "record",
        "mac",
        "leaf-index",
        "proof",
        "note",
        "heads",
        "leaf-data",
        "key-history",
        "kid",
    ],
)
def test_each_tampering_fails_its_check(
    rig: Rig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Bundle], None],
    fails: set[str],
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    tamper(bundle)
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem")
    assert (code, _failed(report)) == (EXIT_FAILED, fails), report["problems"]
    assert report["status"] == "failed" and len(report["problems"]) == len(fails)


def _reencoded(change: Callable[[dict[int, Any]], None]) -> Callable[[Bundle], None]:
    def tamper(bundle: Bundle) -> None:
        event = cbor2.loads(bytes.fromhex(bundle["record"]))
        change(event)
        bundle["record"] = cbor2.dumps(event, canonical=True).hex()

    return tamper


def _not_canonical(bundle: Bundle) -> None:
    raw = bytes.fromhex(bundle["record"])
    assert raw[1:3] == b"\x00\x04"  # key 0, type 4 (EVENT): 4 as a one-byte head instead
    bundle["record"] = (raw[:2] + b"\x18\x04" + raw[3:]).hex()


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_reencoded(lambda e: e.update({0: 5})), "not an EVENT"),
        (_reencoded(lambda e: e.update({11: 0})), "keys an EVENT has not"),
        (_reencoded(lambda e: e.update({6: 1 << 32})), "field 6"),
        (_reencoded(lambda e: e.update({10: 3})), "field 10 (cause) where the kind has none"),
        (_reencoded(lambda e: e.update({5: 5})), "without its cause"),
        (_reencoded(lambda e: e.update({1: 4})), "the record says counter 4, the bundle 5"),
        (_not_canonical, "not deterministic CBOR"),
        (lambda b: b.update(record=b["record"][:-2]), "not CBOR"),
    ],
    ids=["type", "extra-key", "range", "cause", "no-cause", "counter", "encoding", "cbor"],
)
def test_a_record_that_is_not_an_event_of_the_bundles_counter_fails(
    rig: Rig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Bundle], None],
    says: str,
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    tamper(bundle)
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem")
    assert code == EXIT_FAILED
    assert {"record", "seal_signature", "countersignature", "leaf"} == _failed(report)
    assert says in report["problems"][0] and report["problems"][0].startswith("record: ")


def test_a_countersignature_over_another_record_fails(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    bundle["countersignature"] = _bundle(rig, "seal-a", 4, "other.json")["countersignature"]
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem")
    assert (code, _failed(report)) == (EXIT_FAILED, {"countersignature", "leaf"})
    assert "names another record" in report["problems"][0]


def test_a_record_rewritten_with_every_key_on_the_host_fails_only_the_seal_signature(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Whoever holds the gateway host rebuilds the ledger with record 5 of seal-a changed and
    # signed by a chip of their own: countersigned, logged and checkpointed with the real
    # gateway key, everything consistent but the seal's signature.
    forged = Rig(tmp_path / "forged", key=rig.key)
    rig.key.save(forged.root / "gateway.key")
    forged.add("seal-a", 8, rewrite=5)
    forged.add("seal-b", 3)
    forged.checkpoint()
    code, report = _check(tmp_path, _bundle(forged, "seal-a", 5), capsys, rig.root / "gw.pem")
    assert (code, _failed(report)) == (EXIT_FAILED, {"seal_signature"})


def test_a_checkpoint_signed_by_another_key_fails(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    text = bundle["checkpoint"]["note"].split("\n\n")[0] + "\n"
    bundle["checkpoint"]["note"] = note.sign_note(GatewayKey.generate(), ORIGIN, text)
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem")
    assert (code, _failed(report)) == (EXIT_FAILED, {"checkpoint", "inclusion", "heads"})
    assert "no signature by sealink/gateway/gw-ev" in report["problems"][0]


def test_pinned_keys_that_differ_from_the_bundles_fail(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(rig, "seal-a", 5)
    other = tmp_path / "other.pem"
    other.write_bytes(GatewayKey.generate().public_pem())
    code, report = _check(tmp_path, bundle, capsys, other)
    assert code == EXIT_FAILED
    assert _failed(report) == {
        "gateway_key",
        "countersignature",
        "checkpoint",
        "inclusion",
        "heads",
    }
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem", FORGER_CHIP.public)
    assert (code, _failed(report)) == (EXIT_FAILED, {"seal_key", "seal_signature"})


def test_a_self_consistent_forgery_passes_only_unpinned_with_its_own_status(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A forger with a gateway key and a chip of their own makes a bundle that agrees with
    itself: only pinned keys tell it from the real one, and the exit status says so."""
    forger = Rig(tmp_path / "forger")
    forger.key.save(forger.root / "gateway.key")
    forger.add("seal-a", 5)
    forger.checkpoint()
    bundle = _bundle(forger, "seal-a", 5)
    code, report = _check(tmp_path, bundle, capsys, None, None)
    assert (code, report["status"], report["problems"]) == (EXIT_UNPINNED, "keys_unpinned", [])
    assert report["keys"]["gateway"]["pinned"] is False
    code, report = _check(tmp_path, bundle, capsys, rig.root / "gw.pem", None)
    assert code == EXIT_FAILED and "gateway_key" in _failed(report)
    # One key pinned is not both: still the unpinned status for the genuine bundle.
    code, report = _check(tmp_path, _bundle(rig, "seal-a", 5), capsys, rig.root / "gw.pem", None)
    assert (code, report["keys"]["seal"]["pinned"]) == (EXIT_UNPINNED, False)


def test_the_text_is_for_a_court_clerk(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = rig.root / "b.json"
    _bundle(rig, "seal-a", 5)
    capsys.readouterr()
    assert verify(["bundle", str(path)]) == EXIT_UNPINNED
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "Impression 5 of seal seal-a, made when the seal's clock was not set, without a permit, "
        "was recorded by the seal's security chip and accepted by gateway gw-ev on "
        "2023-11-14 22:13:20 UTC; it is entry 5 of the gateway's log, whose signed state of "
    )
    assert lines[1].startswith("BUT a key was taken from the bundle itself")
    fingerprint = hashlib.sha256(rig.key.public_raw()).hexdigest()
    assert f"gateway key SHA-256 {fingerprint} (from the bundle only)" in lines
    assert sum(line.startswith("OK     ") for line in lines) == 10
    bundle = json.loads(path.read_text())
    _flip_prev(bundle)
    path.write_text(json.dumps(bundle))
    assert verify(["bundle", str(path)]) == EXIT_FAILED
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "This bundle does NOT prove record 5 of seal seal-a: 3 of 10 checks FAILED."
    )
    assert "FAILED seal_signature: does not verify under the seal key" in lines


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["seal-zz", "1"], "unknown device seal-zz"),
        (None, ["seal-a", "99"], "seal-a #99 is not in the log"),
        (None, ["seal-a", "9"], "not yet covered by the checkpoint of size 11"),
        (None, ["seal-a", "1", "--checkpoint", "5"], "no checkpoint of size 5"),
        ("exists", ["seal-a", "1"], "exists; not overwriting (--force)"),
        ("no-checkpoint", ["seal-a", "1"], "no checkpoint yet"),
    ],
)
def test_cli_errors_are_one_line_without_a_traceback(
    tmp_path: Path, setup: str | None, args: list[str], message: str
) -> None:
    rig = Rig(tmp_path / "gw")
    rig.key.save(rig.root / "gateway.key")
    rig.add("seal-a", 8)
    rig.add("seal-b", 3)
    if setup != "no-checkpoint":
        rig.checkpoint()
    rig.add("seal-a", 1)
    out = rig.root / "b.json"
    if setup == "exists":
        out.write_text("keep me")
    done = sealink("evidence", "bundle", "--config", str(rig.conf), *args, "-o", str(out))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    assert out.read_text() == "keep me" if setup == "exists" else not out.exists()


def test_a_bundle_is_refused_for_a_record_under_an_earlier_gateway_key(rig: Rig) -> None:
    GatewayKey.generate().save(rig.root / "gateway.key", overwrite=True)  # keys init --force
    done = sealink("evidence", "bundle", "--config", str(rig.conf), "seal-a", "1")
    assert done.returncode == 2 and "under another gateway key" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "cannot read"),
        ("{not json", [], "not JSON"),
        ('{"format": "something else"}', [], "not an evidence bundle"),
        (
            '{"format": "sealink-evidence-bundle", "version": 3}',
            [],
            "this verifier reads versions 1 and 2",
        ),
        ('{"format": "sealink-evidence-bundle", "version": 1}', [], "malformed bundle"),
        ("valid", ["--seal-key", "abcd"], "--seal-key: not a seal key"),
        ("valid", ["--gateway-key", "SELF"], "not an Ed25519 public key"),
    ],
)
def test_unusable_verifier_input_exits_2_with_a_message(
    rig: Rig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "input.json"
    if content == "valid":
        path.write_text(json.dumps(_bundle(rig, "seal-a", 2)))
    elif content is not None:
        path.write_text(content)
    extra = [str(path) if arg == "SELF" else arg for arg in extra]
    capsys.readouterr()
    assert verify(["bundle", str(path), *extra]) == EXIT_UNUSABLE
    err = capsys.readouterr().err
    assert err.startswith("sealink-verify: error: ") and message in err, err


# the fixed vector ---------------------------------------------------------------------------


def _tampered(bundle: Bundle, tamper: Callable[[Bundle], None]) -> Bundle:
    changed = copy.deepcopy(bundle)
    tamper(changed)
    return changed


def _vectors(root: Path) -> dict[str, Any]:
    bundle, key = vector_bundle(root)
    return {
        "about": "SPEC §14.5: the evidence bundle of impression 2 of seal S-0001 (ledger of two "
        "seals, five records, one checkpoint), made from fixed keys (gateway Ed25519 seed "
        "SHA-256('sealink vectors/bundle gateway key'), seal chip "
        "SimChip.of(bytes(range(32)))); 'tampered' variants must fail exactly the checks in "
        "'fails'; regenerate with SEALINK_WRITE_VECTORS=1 pytest host/tests/test_bundle.py",
        "gateway_public_pem": key.public_pem().decode(),
        "seal_key": SEAL_KEY.hex(),
        "valid": bundle,
        "tampered": [
            {
                "name": "a byte of the record's prev flipped",
                "fails": ["countersignature", "leaf", "seal_signature"],
                "bundle": _tampered(bundle, _flip_prev),
            },
            {
                "name": "an element of the inclusion proof flipped",
                "fails": ["inclusion"],
                "bundle": _tampered(bundle, _flip_path),
            },
            {
                "name": "the checkpoint note's time edited",
                "fails": ["checkpoint", "heads", "inclusion"],
                "bundle": _tampered(bundle, _edit_note),
            },
        ],
    }


def test_vector_file_is_current_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _vectors(tmp_path / "vectors")
    if os.environ.get("SEALINK_WRITE_VECTORS"):
        VECTORS.write_text(
            json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        )
    vectors = json.loads(VECTORS.read_text())
    assert vectors == expected, (
        "regenerate: SEALINK_WRITE_VECTORS=1 pytest host/tests/test_bundle.py"
    )
    pem = tmp_path / "gw.pem"
    pem.write_text(vectors["gateway_public_pem"])
    seal_key = bytes.fromhex(vectors["seal_key"])
    code, report = _check(tmp_path, vectors["valid"], capsys, pem, seal_key)
    assert (code, report["problems"]) == (EXIT_VERIFIED, [])
    facts = report["facts"]
    assert (facts["time_s"], facts["permit"], facts["operator"]) == (MADE_S, 5, 42)
    assert facts["checkpoint_time_ms"] == SIGNED_MS
    for case in vectors["tampered"]:
        code, report = _check(tmp_path, case["bundle"], capsys, pem, seal_key)
        assert (code, sorted(_failed(report))) == (EXIT_FAILED, case["fails"]), case["name"]
    path = tmp_path / "valid.json"
    path.write_text(json.dumps(vectors["valid"]))
    capsys.readouterr()
    verify(["bundle", str(path), "--gateway-key", str(pem), "--seal-key", seal_key.hex()])
    assert capsys.readouterr().out.startswith(
        "Impression 2 of seal S-0001, made 2026-12-01 09:14:03 UTC by the seal's clock, under "
        "permit 5 by operator 42, was recorded by the seal's security chip and accepted by "
        "gateway gw-vectors on 2026-12-01 09:14:05 UTC; it is entry 3 of the gateway's log, "
        "whose signed state of 2026-12-01 09:20:00 UTC (size 5) includes it.\n"
    )
