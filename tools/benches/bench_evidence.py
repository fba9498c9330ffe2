"""Transparency-log figures (SPEC §14): checkpoint cost, append cost, proof size and time.

    .venv/bin/python tools/benches/bench_evidence.py      # or through tools/bench.py

For each tree size (10,000 and 1,000,000 leaves, SEALINK_BENCH_LOG_SIZES) a real ledger file is
built directly (leaves and perfect-subtree nodes computed with the product's Frontier and
inserted in bulk: not through the gateway, which would take minutes), with the leaves spread
over SEALINK_BENCH_LOG_DEVICES devices. Then, as medians of ROUNDS runs:

- checkpoint_ms: what the service does each interval: read size, root and device heads in one
  snapshot, sign the C2SP note, store it;
- append_us_per_leaf: appending one 512-leaf group commit's leaves (inside a transaction);
- inclusion/consistency: proof length in hashes and bytes, product proof generation time, and
  verification time by sealink_verify's independent RFC 9162 code;
- receipt_bytes_max: the largest COSE Receipt (SPEC §14.8) of the proven leaves.
"""

from __future__ import annotations

import os
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = [int(s) for s in os.environ.get("SEALINK_BENCH_LOG_SIZES", "10000,1000000").split(",")]
DEVICES = int(os.environ.get("SEALINK_BENCH_LOG_DEVICES", "64"))
ROUNDS = int(os.environ.get("SEALINK_BENCH_ROUNDS", "15"))
_CHUNK = 50_000


def _build(path: Path, size: int) -> None:
    from sealink.evidence import Frontier, event_leaf, leaf_hash
    from sealink.ledger import Ledger

    Ledger(path, create=True).close()  # the schema
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    frontier = Frontier(0, [])
    cose = bytes(100)
    db.execute("BEGIN")
    for start in range(0, size, _CHUNK):
        leaves, nodes = [], []
        for i in range(start, min(size, start + _CHUNK)):
            device, counter = f"seal-{i % DEVICES:04d}", i // DEVICES + 1
            data = event_leaf(device, counter, i.to_bytes(32, "big"), cose)
            nodes.extend(frontier.append(leaf_hash(data)))
            leaves.append((i, device, "event", counter, counter))
        db.executemany("INSERT INTO log_leaves VALUES (?, ?, ?, ?, ?)", leaves)
        db.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)", nodes)
    db.execute("COMMIT")
    db.close()


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def _one(size: int, rng: random.Random) -> dict[str, Any]:
    from sealink.crypto.signer import GatewayKey
    from sealink.evidence import checkpoint_origin, event_leaf, leaf_hash
    from sealink.evidence.receipt import make_receipt
    from sealink.gateway.checkpoints import make_checkpoint
    from sealink.ledger import Ledger
    from sealink.ledger import log as ledger_log
    from sealink_verify import tlog

    key = GatewayKey.generate()
    origin = checkpoint_origin("gw-bench")
    with tempfile.TemporaryDirectory(prefix="sealink-bench-log-") as tmp:
        path = Path(tmp) / "ledger.sqlite"
        t0 = time.perf_counter()
        _build(path, size)
        build_s = time.perf_counter() - t0
        ledger = Ledger(path)
        db = ledger._db  # the bench appends on the ledger's own connection, as commit() does
        try:
            checkpoint_s, append_s = [], []
            for r in range(ROUNDS):
                # one group commit of new leaves, then the interval's checkpoint over them
                batch = [
                    (
                        f"seal-{j % DEVICES:04d}",
                        "event",
                        10**9 + r * 512 + j,
                        10**9 + r * 512 + j,
                        event_leaf("seal-x", j, bytes(32), bytes(100)),
                    )
                    for j in range(512)
                ]
                t0 = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                ledger_log.append(db, batch)
                db.execute("COMMIT")
                append_s.append((time.perf_counter() - t0) / 512)
                t0 = time.perf_counter()
                made = make_checkpoint(ledger, key, origin)
                checkpoint_s.append(time.perf_counter() - t0)
                assert made is not None
            n = ledger.log.size()
            root = ledger.log.root(n)
            inc_gen, inc_ver, con_gen, con_ver = [], [], [], []
            inc_len = con_len = receipt_len = 0
            for _ in range(ROUNDS):
                index = rng.randrange(n)
                t0 = time.perf_counter()
                path_ = ledger.log.inclusion(index, n)
                inc_gen.append(time.perf_counter() - t0)
                leaf = db.execute(
                    "SELECT hash FROM log_nodes WHERE level = 0 AND idx = ?", (index,)
                ).fetchone()[0]
                t0 = time.perf_counter()
                ok = tlog.verify_inclusion(bytes(leaf), index, n, path_, root)
                inc_ver.append(time.perf_counter() - t0)
                assert ok
                inc_len = len(path_)
                receipt_len = max(receipt_len, len(make_receipt(key, n, index, path_, root)))
                old = rng.randrange(1, n)
                old_root = ledger.log.root(old)
                t0 = time.perf_counter()
                cons = ledger.log.consistency(old, n)
                con_gen.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ok = tlog.verify_consistency(old, n, old_root, root, cons)
                con_ver.append(time.perf_counter() - t0)
                assert ok
                con_len = max(con_len, len(cons))
            assert leaf_hash(b"") != root
        finally:
            ledger.close()
    return {
        "bench": "evidence",
        "leaves": size,
        "devices": DEVICES,
        "rounds": ROUNDS,
        "build_s": round(build_s, 2),
        "checkpoint_ms": _median_ms(checkpoint_s),
        "append_us_per_leaf": round(statistics.median(append_s) * 1e6, 2),
        "inclusion_hashes": inc_len,
        "inclusion_bytes": inc_len * 32,
        "inclusion_prove_ms": _median_ms(inc_gen),
        "inclusion_verify_ms": _median_ms(inc_ver),
        "receipt_bytes_max": receipt_len,
        "consistency_hashes_max": con_len,
        "consistency_bytes_max": con_len * 32,
        "consistency_prove_ms": _median_ms(con_gen),
        "consistency_verify_ms": _median_ms(con_ver),
    }


def run() -> list[dict[str, Any]]:
    rng = random.Random(int(os.environ.get("SEALINK_BENCH_SEED", "1")))
    return [_one(size, rng) for size in SIZES]


if __name__ == "__main__":
    import json

    for result in run():
        print(json.dumps(result), flush=True)
