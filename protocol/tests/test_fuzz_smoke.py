"""A short run of the mutation fuzzer (the long one is `make fuzz`), on both interpreters.

Both run the same seeded xorshift stream, so besides finding no crash they must agree on
every outcome count: a differential test of CPython against MicroPython.
"""

from __future__ import annotations

import os
import random
import sys

from protocol_testlib import PROTOCOL, run_micropython

sys.path.insert(0, str(PROTOCOL / "tests"))
import mp_fuzz

INPUTS = 3000


def test_fuzz_smoke_agrees_across_interpreters() -> None:
    seed = int(os.environ.get("SEALINK_FUZZ_SEED", random.randrange(1, 2**31)))
    print(f"fuzz seed {seed} (replay: SEALINK_FUZZ_SEED={seed})")
    lines: list[str] = []
    crashes, _, _, _ = mp_fuzz.run(seed, INPUTS, lines.append)
    assert crashes == 0, f"seed {seed}: " + "\n".join(lines)
    # 96k, as for the vectors (test_vectors.py): sealproto.messages and this script are compiled
    # from text inside the heap here, which a device never does (its code is in flash).
    out = run_micropython(
        str(PROTOCOL / "tests" / "mp_fuzz.py"), str(seed), str(INPUTS), heap="96k"
    )
    mp_summary = out.strip().splitlines()[-1]
    assert " crashes=0 " in mp_summary, f"seed {seed}: {out}"
    import subprocess

    host = subprocess.run(
        [sys.executable, str(PROTOCOL / "tests" / "mp_fuzz.py"), str(seed), str(INPUTS)],
        env={**os.environ, "PYTHONPATH": str(PROTOCOL)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert host.stdout.strip().splitlines()[-1] == mp_summary, f"seed {seed}"
