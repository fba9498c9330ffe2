"""protocol/CONFORMANCE.md maps every requirement of SPEC.md to tests; tools/conformance.py checks.

test_every_requirement_has_tests is the check itself: it fails while a row is MISSING, stale
or names a test that does not exist. The list it fails with is what
`python tools/conformance.py --check` prints; `--skeleton` prints rows for new requirements.
The other tests hold the checker to its rules on a small SPEC of their own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import conformance  # noqa: E402

SPEC = """\
# a protocol
The key words MUST and MUST NOT are as in RFC 2119 (the preamble states no requirement).

## 1. Alpha

A sender MUST send one byte. A receiver MAY wait, e.g. a second. Lower-case must is prose.
It SHOULD be fast. Every field is REQUIRED.

```
code that says MUST is not text
```

- An item MUST NOT be empty,
  even when it wraps.
- A receiver MUST reject these:

- a first reason
- a second reason

A paragraph after the list.

### 1.1 Beta

| fault | detected by | action |
|---|---|---|
| bad byte | host | drop, count |

| name | value |
|---|---|
| X | a table that only names things, even if it says MUST |
"""

HOST = "protocol/tests/test_a.py::test_host"
DEVICE = "firmware/tests/test_b.py::test_device[case 1]"
COLLECTED = {HOST, DEVICE, "protocol/tests/test_a.py::test_other"}


def table(spec: str = SPEC, drop: int | None = None, cells: tuple[str, str] | None = None,
          side: str = "both") -> str:
    """A CONFORMANCE.md for `spec`: every row with tests on both sides, or as told."""
    host, device = cells or (f"`{HOST}`", f"`{DEVICE}`")
    rows = [f"| `{r.id}` | §{r.section} | {conformance.table_cell(r.text)} | {side} | {host} | "
            f"{device} |" for n, r in enumerate(conformance.requirements(spec)) if n != drop]
    head = "| id | § | requirement | side | host tests | device tests |\n|---|---|---|---|---|---|"
    return "\n".join([head, *rows]) + "\n"


def test_requirements_follow_the_extraction_rules() -> None:
    texts = [(r.section, r.text) for r in conformance.requirements(SPEC)]
    assert texts == [
        ("1", "A sender MUST send one byte."),
        ("1", "Every field is REQUIRED."),
        ("1", "An item MUST NOT be empty, even when it wraps."),
        ("1", "A receiver MUST reject these: a first reason a second reason"),
        ("1.1", "bad byte | host | drop, count"),
    ]


def test_ids_keep_to_rewrapping_and_change_with_the_words() -> None:
    ids = [r.id for r in conformance.requirements(SPEC)]
    assert all(i.startswith(("S1-", "S1.1-")) for i in ids) and len(set(ids)) == len(ids)
    rewrapped = SPEC.replace("A sender MUST send one byte.", "A sender MUST\nsend  one byte.")
    assert [r.id for r in conformance.requirements(rewrapped)] == ids
    edited = [r.id for r in conformance.requirements(SPEC.replace("one byte", "two bytes"))]
    assert edited[1:] == ids[1:] and edited[0] != ids[0]


def test_a_table_with_every_row_passes() -> None:
    report = conformance.check(SPEC, table(), COLLECTED)
    assert report.ok, list(report.lines())
    assert list(report.lines())[-1].startswith("5 requirements, 5 rows: 5 covered")


def test_a_requirement_without_a_row_fails() -> None:
    report = conformance.check(SPEC, table(drop=2), COLLECTED)
    assert not report.ok
    assert [r.text for r in report.no_row] == ["An item MUST NOT be empty, even when it wraps."]
    assert any(line.startswith("no row: S1-") for line in report.lines())


def test_an_edited_requirement_leaves_its_row_stale() -> None:
    edited = SPEC.replace("| drop, count |", "| drop |")
    report = conformance.check(edited, table(), COLLECTED)
    assert [r.id for r in report.stale] == [conformance.requirements(SPEC)[-1].id]
    assert [r.text for r in report.no_row] == ["bad byte | host | drop"]


def test_missing_and_nonexistent_tests_fail() -> None:
    missing = conformance.check(SPEC, table(cells=(f"`{HOST}`", "MISSING (who writes it)")),
                                COLLECTED)
    assert len(missing.missing) == 5 and {side for _, side in missing.missing} == {"device"}
    unknown = conformance.check(SPEC, table(cells=("`protocol/tests/test_a.py::test_gone`",
                                                   f"`{DEVICE}`")), COLLECTED)
    assert any("no such test protocol/tests/test_a.py::test_gone" in p for p in unknown.problems)
    broken = conformance.check(SPEC, table(), COLLECTED - {HOST}, ["protocol/tests/test_a.py"])
    assert any("protocol/tests/test_a.py did not collect" in p for p in broken.problems)
    folder = conformance.check(SPEC, table(), COLLECTED - {HOST}, ["protocol/tests"])
    assert any("protocol/tests/test_a.py did not collect" in p for p in folder.problems)
    # a parametrised test named whole, without its [parameters], exists
    whole = conformance.check(SPEC, table(cells=(f"`{HOST}`", "`firmware/tests/test_b.py::"
                                                 "test_device`")), COLLECTED)
    assert whole.ok, whole.problems


@pytest.mark.parametrize(
    ("side", "cells", "problem"),
    [
        ("n/a:", ("—", "—"), "is not host, device, both"),
        ("sideways", (f"`{HOST}`", "—"), "is not host, device, both"),
        ("host", (f"`{HOST}`", f"`{DEVICE}`"), "does not apply to the device"),
        ("device", ("—", "—"), "applies to the device but names no test"),
        ("both", (f"`{HOST}`", ""), "applies to the device but names no test"),
    ],
)
def test_side_rules(side: str, cells: tuple[str, str], problem: str) -> None:
    report = conformance.check(SPEC, table(side=side, cells=cells), COLLECTED)
    assert any(problem in p for p in report.problems), report.problems


def test_a_reasoned_not_applicable_row_needs_no_tests() -> None:
    report = conformance.check(SPEC, table(side="n/a: informative", cells=("—", "—")), COLLECTED)
    assert report.ok, list(report.lines())


def test_a_row_in_the_wrong_section_is_a_problem() -> None:
    report = conformance.check(SPEC, table().replace("| §1.1 |", "| §2 |"), COLLECTED)
    assert any("the row says §2" in p for p in report.problems), report.problems


def test_skeleton_gives_the_rows_that_are_missing() -> None:
    rows = conformance.skeleton(SPEC, table(drop=0)).splitlines()
    assert len(rows) == 1 and rows[0].startswith(f"| `{conformance.requirements(SPEC)[0].id}` |")
    report = conformance.check(SPEC, table(drop=0) + rows[0] + "\n", COLLECTED)
    assert not report.no_row and len(report.missing) == 2  # pasted: MISSING until filled in


def test_every_requirement_has_tests() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "conformance.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, (
        "protocol/CONFORMANCE.md is not complete (python tools/conformance.py --check):\n"
        + done.stdout + done.stderr
    )
