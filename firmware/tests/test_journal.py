"""The device journal (firmware/seal/journal.py), unit-tested under micropython -X heapsize=96k.

The cases live in mpy/journal_cases.py (not an mp_* script, so they run once, here).
"""

from __future__ import annotations

import pytest
from mpy_runner import MPY_DIR, collect, run_case

SCRIPT = MPY_DIR / "journal_cases.py"


@pytest.mark.parametrize("case", collect(SCRIPT))
def test_journal(case: str) -> None:
    run_case(SCRIPT, case)
