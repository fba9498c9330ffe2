"""Firmware unit tests (mpy/mp_*.py), run under the real `micropython -X heapsize=96k`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpy_runner import collect, run_case, scripts

_CASES = [(s, t) for s in scripts() for t in collect(s)]


@pytest.mark.parametrize(("script", "case"), _CASES, ids=[s.stem + "::" + t for s, t in _CASES])
def test_firmware_unit(script: Path, case: str) -> None:
    run_case(script, case)
