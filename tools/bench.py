"""The shared bench runner (`make bench`): one JSON object per line, each with a "bench" key.

    .venv/bin/python tools/bench.py            # every tools/benches/bench_*.py
    .venv/bin/python tools/bench.py protocol   # only bench_protocol.py

Each bench module provides `run() -> list[dict]`. A bench that raises, or returns a result with
an "error" key, is reported as {"bench": name, "error": ...}; the runner then exits 1, after
running all the others.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent / "benches"


def load_run(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run


def run_bench(path: Path) -> list[dict[str, Any]]:
    name = path.stem.removeprefix("bench_")
    try:
        results = load_run(path)()
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise TypeError(f"run() returned {type(results).__name__}, not a list of dicts")
    except Exception as e:  # a failing bench is reported, and the others still run
        traceback.print_exc(file=sys.stderr)
        return [{"bench": name, "error": f"{type(e).__name__}: {e}"}]
    return [r if "bench" in r else {"bench": name, **r} for r in results]


def main(argv: list[str]) -> int:
    wanted = set(argv)
    failed = False
    for path in sorted(BENCHES.glob("bench_*.py")):
        if wanted and path.stem.removeprefix("bench_") not in wanted:
            continue
        for result in run_bench(path):
            failed |= "error" in result
            print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
