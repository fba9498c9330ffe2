"""An export against the gateway's transparency log (SPEC §14), and proofs offline.

With a checkpoint line (`sealink events export --with-checkpoint`) it proves:

- the checkpoint note is signed by the gateway key, and the device-heads table hashes to the
  checkpoint's `sealink-heads` line;
- for every device in the export, its last row covered by the checkpoint *is* the head the
  checkpoint commits to (same counter, same leaf index, same leaf hash): a cut-off tail, or a
  rewritten record, no longer matches;
- a device of the heads table that is missing from an unfiltered export is named;
- when the export holds every leaf of the tree, the root recomputed from the rows equals the
  signed root (and so does each known checkpoint's root at its size);
- against checkpoints the auditor obtained elsewhere (`--checkpoint`, e.g. the retained MQTT
  copy): two roots for one size are a split view; a known larger checkpoint means the export's
  is not the latest (a replayed, older view); a smaller one must be proven consistent (from the
  rows, or by a `--proof` consistency file), else it is reported as unproven.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cbor2

from sealink_verify import tlog
from sealink_verify.audit import DeviceAudit
from sealink_verify.keyhistory import KeyHistory

# The gateway's key (PEM), or its key history walked from the pinned first key (SPEC §14.7).
GatewayKeys = bytes | KeyHistory

__all__ = ["EvidenceAudit", "check_checkpoints", "check_proof", "load_proof"]


@dataclass
class EvidenceAudit:
    checkpoint: tlog.SignedCheckpoint | None = None
    root_recomputed: bool = False
    heads_checked: int = 0
    uncovered_rows: int = 0
    known: list[int] = field(default_factory=list)
    consistent_with: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (old size, new size, old root, new root) proven by --proof consistency files
    proven: list[tuple[int, int, bytes, bytes]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "checkpoint": None if self.checkpoint is None else self.checkpoint.summary(),
            "root_recomputed": self.root_recomputed,
            "heads_checked": self.heads_checked,
            "rows_after_checkpoint": self.uncovered_rows,
            "known_checkpoints": self.known,
            "consistent_with": self.consistent_with,
            "problems": len(self.problems),
            "problem_list": self.problems,
            "warnings": self.warnings,
        }


def _open(note: str, keys: GatewayKeys) -> tlog.SignedCheckpoint:
    if isinstance(keys, KeyHistory):
        return keys.open_checkpoint(note)
    return tlog.open_checkpoint(note, keys)


def check_proof(proof: dict[str, Any], keys: GatewayKeys, audit: EvidenceAudit) -> None:
    """An inclusion or consistency proof from `sealink evidence prove|consistency --json`."""
    try:
        kind = proof["type"]
        if kind == "inclusion":
            _inclusion(proof, keys, audit)
        elif kind == "consistency":
            _consistency(proof, keys, audit)
        else:
            audit.problems.append(f"proof: unknown type {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        audit.problems.append(f"proof: malformed: {exc!r}")
    except tlog.NoteError as exc:
        audit.problems.append(f"proof: checkpoint: {exc}")


def _inclusion(proof: dict[str, Any], keys: GatewayKeys, audit: EvidenceAudit) -> None:
    checkpoint = _open(proof["checkpoint"], keys)
    data = bytes.fromhex(proof["leaf_data"])
    leaf = tlog.rfc9162_leaf(data)
    where = f"proof of {proof['device']} #{proof['counter']}"
    path = [bytes.fromhex(p) for p in proof["path"]]
    if int(proof["tree_size"]) != checkpoint.size:
        audit.problems.append(f"{where}: proven against size {proof['tree_size']}, not the note's")
    if not tlog.verify_inclusion(
        leaf, int(proof["leaf_index"]), checkpoint.size, path, checkpoint.root
    ):
        audit.problems.append(f"{where}: the inclusion proof does not verify")
    named = cbor2.loads(data)
    first = named.get("counter", named.get("first"))
    last = named.get("counter", named.get("last"))
    if named.get("device") != proof["device"] or not first <= int(proof["counter"]) <= last:
        audit.problems.append(f"{where}: the leaf is another record")


def _consistency(proof: dict[str, Any], keys: GatewayKeys, audit: EvidenceAudit) -> None:
    new = _open(proof["new_checkpoint"], keys)
    old_size, old_root = int(proof["old_size"]), bytes.fromhex(proof["old_root"])
    if proof.get("old_checkpoint"):
        old = _open(proof["old_checkpoint"], keys)
        if (old.size, old.root) != (old_size, old_root):
            audit.problems.append("consistency proof: old root is not the old checkpoint's")
    path = [bytes.fromhex(p) for p in proof["path"]]
    if tlog.verify_consistency(old_size, new.size, old_root, new.root, path):
        audit.proven.append((old_size, new.size, old_root, new.root))
    else:
        audit.problems.append(f"consistency proof {old_size} -> {new.size} does not verify")


def check_checkpoints(
    devices: list[DeviceAudit],
    trailer: dict[str, Any] | None,
    known_notes: Iterable[str],
    keys: GatewayKeys,
    audit: EvidenceAudit,
) -> None:
    known: dict[int, tlog.SignedCheckpoint] = {}
    for note in known_notes:
        try:
            cp = _open(note, keys)
        except tlog.NoteError as exc:
            audit.problems.append(f"known checkpoint: {exc}")
            continue
        if cp.size in known and known[cp.size].root != cp.root:
            audit.problems.append(f"split view: two signed roots for size {cp.size}")
        known[cp.size] = cp
    audit.known = sorted(known)
    if trailer is None:
        return
    try:
        checkpoint = _open(str(trailer["checkpoint"]["note"]), keys)
        heads = [
            (str(h["device"]), int(h["counter"]), int(h["leaf"]), bytes.fromhex(h["hash"]))
            for h in trailer["heads"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        audit.problems.append(f"checkpoint line malformed: {exc!r}")
        return
    except tlog.NoteError as exc:
        audit.problems.append(f"checkpoint: {exc}")
        return
    audit.checkpoint = checkpoint
    if tlog.heads_digest(heads) != checkpoint.heads_hash:
        audit.problems.append("the device-heads table is not the one the checkpoint signs")
        return
    leaves = _heads(devices, heads, checkpoint, trailer, audit)
    roots = {}
    if len(leaves) == checkpoint.size and sorted(leaves) == list(range(checkpoint.size)):
        ordered = [leaves[i] for i in range(checkpoint.size)]
        audit.root_recomputed = tlog.mth(ordered) == checkpoint.root
        if not audit.root_recomputed:
            audit.problems.append("the root recomputed from the rows is not the signed root")
        else:
            roots = {size: tlog.mth(ordered[:size]) for size in known if size <= checkpoint.size}
    _against_known(checkpoint, known, roots, audit)


def _heads(
    devices: list[DeviceAudit],
    heads: list[tuple[str, int, int, bytes]],
    checkpoint: tlog.SignedCheckpoint,
    trailer: dict[str, Any],
    audit: EvidenceAudit,
) -> dict[int, bytes]:
    """Check each exported device's tail against its head; returns leaf index -> leaf hash of
    the rows the checkpoint covers."""
    by_device = {d.device: d for d in devices}
    leaves: dict[int, bytes] = {}
    headed = {h[0] for h in heads}
    for d in devices:
        if d.device in headed:
            continue
        early = [row for row in d.leaves if row[0] is not None and row[0] < checkpoint.size]
        audit.uncovered_rows += len(d.leaves) - len(early)
        if early:
            audit.problems.append(f"{d.device}: rows inside the checkpoint, which has no head")
    for device, counter, index, leaf_hash in heads:
        found = by_device.get(device)
        if found is None:
            if trailer.get("export", {}).get("device") is None:
                audit.problems.append(
                    f"{device}: the checkpoint commits to its head (counter {counter}) but the "
                    "export has none of its rows"
                )
            continue
        covered = [row for row in found.leaves if row[0] is not None and row[0] < checkpoint.size]
        audit.uncovered_rows += len(found.leaves) - len(covered)
        for row in covered:
            assert row[0] is not None
            if row[0] in leaves:
                audit.problems.append(f"{device}: leaf {row[0]} claimed by two rows")
            leaves[row[0]] = row[3]
        last = covered[-1] if covered else None
        audit.heads_checked += 1
        if last is None or last[2] < counter:
            upto = "no row" if last is None else f"counter {last[2]}"
            audit.problems.append(
                f"{device}: tail truncated: the export reaches {upto}, the checkpoint of size "
                f"{checkpoint.size} commits to counter {counter}"
            )
        elif (last[0], last[2], last[3]) != (index, counter, leaf_hash):
            audit.problems.append(
                f"{device}: the record at the head (counter {counter}, leaf {index}) is not the "
                "one the checkpoint commits to (rewritten or moved)"
            )
    return leaves


def _against_known(
    checkpoint: tlog.SignedCheckpoint,
    known: dict[int, tlog.SignedCheckpoint],
    roots: dict[int, bytes],
    audit: EvidenceAudit,
) -> None:
    for size, other in sorted(known.items()):
        if size == checkpoint.size:
            if other.root != checkpoint.root:
                audit.problems.append(f"split view: two signed roots for size {size}")
            else:
                audit.consistent_with.append(size)
        elif size > checkpoint.size:
            audit.problems.append(
                f"the export's checkpoint (size {checkpoint.size}) is not the latest: one of "
                f"size {size} is known (an old view replayed?)"
            )
        elif size in roots:
            if roots[size] == other.root:
                audit.consistent_with.append(size)
            else:
                audit.problems.append(
                    f"fork: the rows give another root at size {size} than its signed checkpoint"
                )
        elif (size, checkpoint.size, other.root, checkpoint.root) in audit.proven:
            audit.consistent_with.append(size)
        else:
            audit.warnings.append(
                f"consistency with the known checkpoint of size {size} is not proven: get "
                f"`sealink evidence consistency {size} {checkpoint.size} --json` and pass --proof"
            )


def load_proof(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("a proof is a JSON object")
    return value
