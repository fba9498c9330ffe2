"""The transparency log's storage (SPEC §14): leaves, perfect-subtree nodes, checkpoints.

Appends run inside `Ledger.commit`'s transaction (and `adopt`'s), so a record is in the log
exactly when it is stored: the frontier is read from `log_nodes` under the write lock (at most
64 rows), the batch's leaves are folded in memory, and the new nodes (about two per leaf) are
written with the events. Every other process (the CLI) appends the same way, so nothing is
cached between transactions.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sealink.errors import LedgerError
from sealink.evidence import Checkpoint, Cosignature, Frontier, Head, event_leaf, gap_leaf
from sealink.evidence import merkle as mt
from sealink.ledger.records import EventRow

__all__ = ["ConsistencyProof", "Leaf", "LogStore", "append", "append_events", "backfill"]

# (device, kind, first, last, leaf data)
NewLeaf = tuple[str, str, int, int, bytes]


@dataclass(frozen=True, slots=True)
class Leaf:
    index: int
    device: str
    kind: str
    first: int
    last: int
    data: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """RFC 9162 consistency of two tree sizes, with the checkpoints the gateway signed of them
    (the old one None when that size was never checkpointed)."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: list[bytes]
    old_checkpoint: str | None
    new_checkpoint: str

    def to_json(self) -> dict[str, object]:
        return {
            "type": "consistency",
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": self.old_root.hex(),
            "new_root": self.new_root.hex(),
            "path": [p.hex() for p in self.path],
            "old_checkpoint": self.old_checkpoint,
            "new_checkpoint": self.new_checkpoint,
        }


def size(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT MAX(idx) FROM log_leaves").fetchone()
    return 0 if row[0] is None else int(row[0]) + 1


def _node(db: sqlite3.Connection) -> mt.NodeLookup:
    def lookup(level: int, index: int) -> bytes:
        row = db.execute(
            "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise LedgerError(f"transparency log: node ({level}, {index}) is missing")
        return bytes(row[0])

    return lookup


def append(db: sqlite3.Connection, leaves: Sequence[NewLeaf]) -> int:
    """Append leaves (call inside a write transaction); returns the new tree size."""
    start = size(db)
    if not leaves:
        return start
    frontier = Frontier.load(start, _node(db))
    nodes = frontier.extend(mt.leaf_hash(leaf[4]) for leaf in leaves)
    db.executemany(
        "INSERT INTO log_leaves (idx, device, kind, first, last) VALUES (?, ?, ?, ?, ?)",
        [(start + i, d, k, f, la) for i, (d, k, f, la, _) in enumerate(leaves)],
    )
    db.executemany("INSERT INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
    return frontier.size


def append_events(db: sqlite3.Connection, events: Sequence[EventRow]) -> int:
    return append(
        db,
        [
            (
                e.device,
                "event",
                e.counter,
                e.counter,
                event_leaf(e.device, e.counter, e.hash, e.cose),
            )
            for e in events
        ],
    )


def backfill(db: sqlite3.Connection) -> None:
    """Put a pre-v3 ledger's events and gaps into the log: per device in counter order (a gap
    at its first counter), devices in id order. Their commit order was not recorded."""
    events = (
        ((r[0], r[1]), (r[0], "event", r[1], r[1], event_leaf(r[0], r[1], bytes(r[2]), r[3])))
        for r in db.execute(
            "SELECT device, counter, hash, cose FROM events ORDER BY device, counter"
        ).fetchall()
    )
    gaps = (
        ((r[0], r[1]), (r[0], "gap", r[1], r[2], gap_leaf(r[0], r[1], r[2], bytes(r[3]))))
        for r in db.execute(
            "SELECT device, first, last, cose FROM gaps ORDER BY device, first"
        ).fetchall()
    )
    append(db, [leaf for _, leaf in heapq.merge(events, gaps, key=lambda item: item[0])])


class LogStore:
    """Reads of the log on the ledger's connection, each in one snapshot."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        if db.in_transaction:  # already inside the caller's snapshot
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def size(self) -> int:
        return size(self._db)

    def root(self, tree_size: int | None = None) -> bytes:
        with self.snapshot() as db:
            n = size(db) if tree_size is None else self._bounded(db, tree_size)
            return mt.subtree_root(_node(db), 0, n)

    def tree_head(self) -> tuple[int, bytes, list[Head]]:
        """(size, root, heads) of the current tree, read together."""
        with self.snapshot() as db:
            n = size(db)
            return n, mt.subtree_root(_node(db), 0, n), self.heads(n)

    def heads(self, tree_size: int) -> list[Head]:
        """Each device's newest leaf among the first `tree_size`."""
        with self.snapshot() as db:
            node = _node(db)
            # A loose index scan: one index seek per device, not a pass over every leaf.
            devices = [
                r[0]
                for r in db.execute(
                    "WITH RECURSIVE d(x) AS (SELECT MIN(device) FROM log_leaves UNION ALL "
                    "SELECT (SELECT MIN(device) FROM log_leaves WHERE device > x) FROM d "
                    "WHERE x IS NOT NULL) SELECT x FROM d WHERE x IS NOT NULL"
                )
            ]
            heads = []
            for device in sorted(devices):
                row = db.execute(
                    "SELECT idx, last FROM log_leaves WHERE device = ? AND idx < ? "
                    "ORDER BY first DESC LIMIT 1",
                    (device, tree_size),
                ).fetchone()
                if row is not None:
                    heads.append(Head(device, int(row[1]), int(row[0]), node(0, int(row[0]))))
            return heads

    def leaf_of(self, device: str, counter: int) -> Leaf | None:
        """The leaf holding a device's counter: its event, or the adopted gap covering it."""
        with self.snapshot() as db:
            row = db.execute(
                "SELECT idx, kind, first, last FROM log_leaves WHERE device = ? AND first <= ? "
                "ORDER BY first DESC LIMIT 1",
                (device, counter),
            ).fetchone()
            if row is None or int(row[3]) < counter:
                return None
            index, kind, first, last = int(row[0]), str(row[1]), int(row[2]), int(row[3])
            if kind == "event":
                ev = db.execute(
                    "SELECT hash, cose FROM events WHERE device = ? AND counter = ?",
                    (device, first),
                ).fetchone()
                data = event_leaf(device, first, bytes(ev[0]), bytes(ev[1]))
            else:
                gap = db.execute(
                    "SELECT cose FROM gaps WHERE device = ? AND first = ?", (device, first)
                ).fetchone()
                data = gap_leaf(device, first, last, bytes(gap[0]))
            stored = _node(db)(0, index)
            if mt.leaf_hash(data) != stored:
                raise LedgerError(
                    f"transparency log: leaf {index} ({device} #{counter}) no longer matches "
                    "the stored record"
                )
            return Leaf(index, device, kind, first, last, data, stored)

    def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        with self.snapshot() as db:
            return mt.inclusion_path(_node(db), index, self._bounded(db, tree_size))

    def consistency(self, old_size: int, new_size: int) -> list[bytes]:
        with self.snapshot() as db:
            self._bounded(db, new_size)
            return mt.consistency_path(_node(db), old_size, new_size)

    def consistency_proof(self, old_size: int, new: Checkpoint) -> ConsistencyProof:
        """From `old_size` (0..new.size) to the stored checkpoint `new`, in one snapshot."""
        if not 0 <= old_size <= new.size:
            raise LedgerError(f"old size {old_size} must be between 0 and {new.size}")
        with self.snapshot():
            old = self.checkpoint(old_size)
            return ConsistencyProof(
                old_size,
                new.size,
                self.root(old_size),
                new.root,
                self.consistency(old_size, new.size),
                None if old is None else old.note,
                new.note,
            )

    def leaf_indices(self, device: str | None) -> dict[tuple[str, int], int]:
        """(device, first counter) -> leaf index, for an export."""
        rows = self._db.execute(
            "SELECT device, first, idx FROM log_leaves WHERE (? IS NULL OR device = ?)",
            (device, device),
        )
        return {(r[0], int(r[1])): int(r[2]) for r in rows}

    @staticmethod
    def _bounded(db: sqlite3.Connection, tree_size: int) -> int:
        n = size(db)
        if not 0 <= tree_size <= n:
            raise LedgerError(f"transparency log: size {tree_size} is beyond the log ({n})")
        return tree_size

    # checkpoints -----------------------------------------------------------------------------

    def add_checkpoint(self, checkpoint: Checkpoint) -> bool:
        """Keep a signed checkpoint (the first one of each size stays); True if it is new."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO checkpoints (size, root, heads_hash, time_ms, note) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                checkpoint.size,
                checkpoint.root,
                checkpoint.heads_hash,
                checkpoint.time_ms,
                checkpoint.note,
            ),
        )
        return cur.rowcount > 0

    def checkpoint(self, tree_size: int | None = None) -> Checkpoint | None:
        """The checkpoint of that size, or (None) the latest."""
        sql = "SELECT size, root, heads_hash, time_ms, note FROM checkpoints"
        if tree_size is None:
            row = self._db.execute(f"{sql} ORDER BY size DESC LIMIT 1").fetchone()
        else:
            row = self._db.execute(f"{sql} WHERE size = ?", (tree_size,)).fetchone()
        if row is None:
            return None
        origin = str(row[4]).split("\n", 1)[0]
        return Checkpoint(origin, int(row[0]), bytes(row[1]), bytes(row[2]), int(row[3]), row[4])

    def checkpoint_sizes(self) -> list[int]:
        return [int(r[0]) for r in self._db.execute("SELECT size FROM checkpoints ORDER BY size")]

    # witnesses' cosignatures (SPEC §14.6) ------------------------------------------------------

    def add_cosignature(self, size: int, cosignature: Cosignature, received_ms: int) -> bool:
        """Keep a verified cosignature of the checkpoint of `size` (a witness's first one of
        each size stays); True if it is new."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO cosignatures (size, witness, time_s, line, received_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (size, cosignature.witness, cosignature.time_s, cosignature.line, received_ms),
        )
        return cur.rowcount > 0

    def cosignatures(self, size: int) -> list[Cosignature]:
        """The checkpoint of `size`'s cosignatures, by witness name."""
        rows = self._db.execute(
            "SELECT witness, time_s, line FROM cosignatures WHERE size = ? ORDER BY witness",
            (size,),
        )
        return [Cosignature(str(r[0]), int(r[1]), str(r[2])) for r in rows]
