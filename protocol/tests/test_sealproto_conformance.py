"""SPEC §2-§4 conformance of sealproto, group by group, on CPython and under MicroPython.

The cases (spec_cases.py) are written from the SPEC text; spec_runner.py runs them on either
interpreter. protocol/CONFORMANCE.md names these tests: test_cpython[group] is the sealproto a
host runs, test_micropython[group] the sealproto a device runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import spec_cases
import spec_runner
from protocol_testlib import PROTOCOL, run_micropython

CASES = spec_cases.all_cases()
GROUPS = sorted({g for c in CASES for g in c["groups"]})



def _report(failures: dict[str, str]) -> str:
    return f"{len(failures)} case(s) disagree with SPEC.md:\n" + "\n".join(
        f"  {name}: {why}" for name, why in failures.items()
    )


@pytest.mark.parametrize("group", GROUPS)
def test_cpython(group: str) -> None:
    failures = {
        c["name"]: why
        for c in CASES
        if group in c["groups"]
        and (why := spec_runner.run_case(c)) is not None
    }
    assert not failures, _report(failures)


@pytest.fixture(scope="module")
def micropython_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """Every case run once by the real MicroPython: name -> None if it holds, else why not."""
    path: Path = tmp_path_factory.mktemp("spec") / "cases.jsonl"
    # Raw UTF-8, not \\u escapes: MicroPython's json turns an escaped surrogate pair into two
    # lone surrogates instead of one character.
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in CASES))
    # 96k as for the vectors: the runner and sealproto are compiled from text inside the heap.
    out = run_micropython(str(PROTOCOL / "tests" / "spec_runner.py"), str(path), heap="96k")
    results: dict[str, str | None] = {}
    for line in out.splitlines():
        if match := re.match(r"(ok  |FAIL) (\d+) ", line):
            name = CASES[int(match[2])]["name"]
            results[name] = None if match[1] == "ok  " else line[match.end() + len(name) + 2 :]
    assert len(results) == len(CASES), out[-2000:]
    return results


@pytest.mark.parametrize("group", GROUPS)
def test_micropython(group: str, micropython_results: dict[str, str | None]) -> None:
    failures = {
        c["name"]: why
        for c in CASES
        if group in c["groups"]
        and (why := micropython_results[c["name"]]) is not None
    }
    assert not failures, _report(failures)


def test_cases_cover_every_message_type_and_reason() -> None:
    # The generator read the §4 table (all 11 types) and every §7.1 decode reason has a case.
    assert {f"fields_{m.name}" for m in spec_cases.message_table()} <= set(GROUPS)
    reasons = {c["want"] for c in CASES if c["op"] in ("decode", "loads", "verify", "accept")}
    reasons |= {w for c in CASES if c["op"] == "stream" for w in c["want"]}
    assert {"COBS", "SHORT", "CRC", "OVERSIZE", "CBOR", "NONCANONICAL", "TYPE", "FIELD", "MAC",
            "REPLAY"} <= reasons
