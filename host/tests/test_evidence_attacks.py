"""Attacks on an export that `sealink verify` must catch with the transparency log (SPEC §14):
a cut tail, a cut head, edited plaintext columns, a record rewritten with every key on the host
(a self-consistent forged history, detected against a checkpoint published earlier), a fork (two
roots for one size), and an old checkpoint replayed when a newer one is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from evidence_rig import Rig, seal_keys_file
from sealink_verify.cli import main as verify


def _verify(
    tmp_path: Path,
    lines: list[str],
    pem: bytes,
    capsys: pytest.CaptureFixture[str],
    *known: str,
    seal_keys: Path | None = None,
) -> tuple[int, list[dict[str, Any]], list[str]]:
    export = tmp_path / "checked.jsonl"
    export.write_text("\n".join(lines) + "\n")
    (tmp_path / "gw.pem").write_bytes(pem)
    if seal_keys is None:
        devices = {json.loads(line).get("device", "") for line in lines} - {""}
        seal_keys = seal_keys_file(tmp_path / "seal-keys.jsonl", devices)
    args = [str(export), "--public-key", str(tmp_path / "gw.pem"), "--seal-keys", str(seal_keys)]
    for i, note in enumerate(known):
        path = tmp_path / f"known-{i}.note"
        path.write_text(note)
        args += ["--checkpoint", str(path)]
    capsys.readouterr()
    code = verify(args)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    problems = [p for o in out for p in (o.get("evidence", o).get("problem_list") or [])]
    return code, out, problems


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    rig = Rig(tmp_path / "honest")
    rig.add("seal-a", 8)
    rig.add("seal-b", 3)
    rig.checkpoint()
    return rig


def test_the_intact_export_verifies(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, problems = _verify(tmp_path, rig.export(), rig.pem(), capsys)
    assert (code, problems) == (0, [])
    assert out[-1]["evidence"]["root_recomputed"] is True


def test_a_deleted_tail_is_detected(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = rig.export()
    tail = [i for i, line in enumerate(lines[:-1]) if '"seal-a"' in line][-2:]
    cut = [line for i, line in enumerate(lines) if i not in tail]
    code, _, problems = _verify(tmp_path, cut, rig.pem(), capsys)
    assert code == 1
    assert any("seal-a: tail truncated" in p and "commits to counter 8" in p for p in problems)


def test_a_deleted_head_is_detected(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = rig.export()
    first = next(i for i, line in enumerate(lines) if '"seal-b"' in line)
    code, _, problems = _verify(tmp_path, lines[:first] + lines[first + 2 :], rig.pem(), capsys)
    assert code == 1
    assert any("starts at counter 3" in p and "head truncated" in p for p in problems)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [("received_ms", 1, "received_ms 1 is not the signed"), ("hash", "00" * 32, "hash column")],
)
def test_edited_plaintext_columns_are_compared_with_signed_data(
    rig: Rig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    column: str,
    value: Any,
    expected: str,
) -> None:
    lines = rig.export()
    row = json.loads(lines[2])
    row[column] = value
    lines[2] = json.dumps(row)
    code, out, problems = _verify(tmp_path, lines, rig.pem(), capsys)
    assert code == 1 and any(expected in p for p in problems)
    assert any(o.get("problems") for o in out)  # in the JSON output, not only on stderr


def test_a_record_rewritten_with_every_host_key_is_caught_by_an_earlier_checkpoint(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = rig.ledger.log.checkpoint()
    assert published is not None
    # The attacker holds the gateway key and the device keys: they rebuild the whole ledger
    # with counter 5 of seal-a changed, every later record re-chained, re-MACed, re-signed,
    # and the log and its checkpoint made anew. Only the seal's chip signature is beyond them.
    forged = Rig(tmp_path / "forged", key=rig.key)
    forged.add("seal-a", 8, rewrite=5)
    forged.add("seal-b", 3)
    forged.checkpoint()
    lines = forged.export()
    code, out, problems = _verify(tmp_path, lines, rig.pem(), capsys)
    assert code == 1  # the seal's signature on record 5 alone gives it away (SPEC §4.1)...
    assert [p for p in problems if "seal signature" in p] == [
        "line 5 (seal-a #5): the seal signature does not verify: not the seal's record"
    ]
    assert out[0]["seal_signatures_checked"] == 8
    code, _, problems = _verify(tmp_path, lines, rig.pem(), capsys, published.note)
    assert code == 1  # ...but not with the checkpoint the gateway published before
    assert any("split view: two signed roots for size 11" in p for p in problems)

    # Against an older published checkpoint (size 6, before seal-b), the rows give another root.
    older = Rig(tmp_path / "older", key=rig.key)
    older.add("seal-a", 6)
    old_published = older.checkpoint()
    forged.add("seal-b", 1)
    forged.checkpoint()
    code, _, problems = _verify(
        tmp_path, forged.export("again.jsonl"), rig.pem(), capsys, old_published.note
    )
    assert code == 1 and any("fork" in p and "size 6" in p for p in problems)


def test_a_record_rewritten_in_place_no_longer_matches_the_log(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = rig.export()
    forged = Rig(tmp_path / "forged", key=rig.key)
    forged.add("seal-a", 8, rewrite=8)
    forged.checkpoint()
    replacement = json.loads(forged.export()[7])
    row = json.loads(lines[7])
    assert row["counter"] == replacement["counter"] == 8
    replacement["leaf"] = row["leaf"]
    lines[7] = json.dumps(replacement)
    code, _, problems = _verify(tmp_path, lines, rig.pem(), capsys)
    assert code == 1
    assert any("is not the one the checkpoint commits to" in p for p in problems)
    assert any("root recomputed from the rows is not the signed root" in p for p in problems)


def test_a_fork_is_two_roots_for_one_size(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    honest = rig.ledger.log.checkpoint()
    other = Rig(tmp_path / "other", key=rig.key)
    other.add("seal-a", 11)
    fork = other.checkpoint()
    assert honest is not None and fork.size == honest.size and fork.root != honest.root
    code, _out, problems = _verify(
        tmp_path, rig.export(), rig.pem(), capsys, honest.note, fork.note
    )
    assert code == 1
    assert sum("split view" in p for p in problems) >= 1


def test_an_old_checkpoint_replayed_is_not_the_latest(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_lines = rig.export("old.jsonl")
    rig.add("seal-a", 2)
    newer = rig.checkpoint()
    # The export with the old (genuine) checkpoint hides the two newer records...
    code, _, problems = _verify(tmp_path, old_lines, rig.pem(), capsys)
    assert (code, problems) == (0, [])
    # ...until the newer checkpoint (e.g. the retained MQTT copy) is known.
    code, _, problems = _verify(tmp_path, old_lines, rig.pem(), capsys, newer.note)
    assert code == 1
    assert any("is not the latest" in p and f"size {newer.size}" in p for p in problems)


def test_a_checkpoint_signed_by_another_key_is_rejected(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = rig.export()
    impostor = Rig(tmp_path / "impostor")
    impostor.add("seal-a", 8)
    impostor.add("seal-b", 3)
    impostor.checkpoint()
    trailer = json.loads(impostor.export()[-1])
    lines[-1] = json.dumps(trailer)
    code, _, problems = _verify(tmp_path, lines, rig.pem(), capsys)
    assert code == 1 and any("no signature by sealink/gateway/gw-ev" in p for p in problems)
