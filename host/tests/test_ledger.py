"""Ledger details that the end-to-end tests do not pin down on their own."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from sealink.ledger.sqlite import Batch, Ledger, id_runs


@given(st.lists(st.integers(1, 200), max_size=60))
def test_id_runs_cover_exactly_the_ids(ids: list[int]) -> None:
    runs = id_runs(ids)
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(set(ids))
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))


def test_marking_published_touches_only_the_marked_rows(tmp_path: Path, seed: int) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        ledger.commit(Batch(outbox=[("t", bytes([i]), "d", i) for i in range(1, 101)]))
        rng = random.Random(seed)
        marked = rng.sample(range(1, 101), 57)  # unordered, with gaps: several runs
        ledger.commit(Batch(published=marked))
        pending = [row.id for row in ledger.pending_outbox(0, 1000)]
        assert pending == sorted(set(range(1, 101)) - set(marked))
    finally:
        ledger.close()
