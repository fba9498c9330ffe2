"""Check that every normative requirement of protocol/SPEC.md has tests: protocol/CONFORMANCE.md.

    python tools/conformance.py --check      exit 1, listing what is missing, stale or unknown
    python tools/conformance.py --skeleton   table rows to paste for requirements without one

What counts as a requirement (the rules are written out in CONFORMANCE.md too):
- text under a numbered section heading (`## 2.`, `### 4.2`), outside fenced code blocks;
- a sentence holding an RFC 2119 requirement keyword in capitals: MUST (so also MUST NOT),
  REQUIRED, SHALL. SHOULD and MAY are not requirements (nothing to fail); a lower-case "must"
  is prose, as RFC 8174 says. A requirement sentence ending in ":" takes the list after it as
  its content (the list says what it requires);
- each row of a table listed in NORMATIVE_TABLES: tables whose every row states what a
  party must do. Other tables define names and numbers that the requirements use.

A requirement's id is `S<section>-<6 hex>`: the hex is the start of the SHA-256 of its text with
whitespace collapsed, so rewrapping a paragraph keeps the id and any edit of the words gives a
new id, which leaves the old row stale until someone looks at the tests again.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "protocol" / "SPEC.md"
TABLE = ROOT / "protocol" / "CONFORMANCE.md"
TEST_DIRS = ("protocol/tests", "firmware/tests", "host/tests", "hil-tests")

# Header row of a table -> why each of its rows is a requirement.
NORMATIVE_TABLES = {
    ("type", "name", "dir", "auth", "fields"): "§4: every field listed is REQUIRED",
    ("fault", "detected by", "action"): "§5.8: who does what on each fault",
}
SIDES = ("host", "device", "both")
MISSING = "MISSING"
NONE_CELL = "—"

_HEADING = re.compile(r"^#{2,6} (\d+(?:\.\d+)*)\.? ")
_KEYWORD = re.compile(r"\b(?:MUST|REQUIRED|SHALL)\b")
# A sentence ends at . ! or ? before a capital, a backtick, emphasis or a parenthesis: "e.g. an"
# and "§4.2.1" do not end one.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*(])")
_ITEM = re.compile(r"^(?:[-*]|\d+\.)\s+")
_ID = re.compile(r"^S(\d+(?:\.\d+)*)-[0-9a-f]{6}$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Requirement:
    id: str
    section: str
    text: str


@dataclass
class Row:
    line: int
    id: str
    section: str
    side: str
    tests: dict[str, list[str]]  # "host"/"device" -> node ids
    missing: dict[str, list[str]]  # "host"/"device" -> the cell's MISSING items


@dataclass
class Report:
    requirements: list[Requirement]
    rows: list[Row]
    problems: list[str] = field(default_factory=list)  # the table is malformed or lies
    no_row: list[Requirement] = field(default_factory=list)
    stale: list[Row] = field(default_factory=list)
    missing: list[tuple[Row, str]] = field(default_factory=list)  # (row, side) marked MISSING

    @property
    def ok(self) -> bool:
        return not (self.problems or self.no_row or self.stale or self.missing)

    def lines(self) -> Iterator[str]:
        by_id = {r.id: r for r in self.requirements}
        for problem in self.problems:
            yield f"table: {problem}"
        for req in self.no_row:
            yield f"no row: {req.id} (§{req.section}) {abridge(req.text)}"
        for row in self.stale:
            yield (f"stale: {row.id} (CONFORMANCE.md line {row.line}): no requirement has this "
                   "id any more; its text changed or it was removed")
        for row, side in self.missing:
            yield f"MISSING {side} test: {row.id} (§{row.section}) {abridge(by_id[row.id].text)}"
            yield from (f"    {note}" for note in row.missing[side])
        covered = len(self.rows) - len(self.stale) - len({r.id for r, _ in self.missing})
        yield (f"{len(self.requirements)} requirements, {len(self.rows)} rows: {covered} covered, "
               f"{len({r.id for r, _ in self.missing})} with a MISSING side, "
               f"{len(self.no_row)} without a row, {len(self.stale)} stale")


def normalise(text: str) -> str:
    return " ".join(text.split())


def requirement_id(section: str, text: str) -> str:
    return f"S{section}-{hashlib.sha256(normalise(text).encode()).hexdigest()[:6]}"


def abridge(text: str, width: int = 110) -> str:
    text = normalise(text)
    if len(text) > width:
        text = text[: width - 1].rsplit(" ", 1)[0] + " …"
    return text


def table_cell(text: str) -> str:
    return abridge(text).replace("|", "\\|")


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line.strip().strip("|"))]


@dataclass
class _Block:
    section: str | None
    text: str
    is_item: bool


def _blocks(spec: str) -> Iterator[_Block | tuple[str | None, list[str], list[str]]]:
    """Paragraphs and list items as _Block; tables as (section, header, [row text])."""
    section: str | None = None
    fenced = False
    lines: list[str] = []
    is_item = False
    table: list[list[str]] = []

    def flush() -> Iterator[_Block | tuple[str | None, list[str], list[str]]]:
        nonlocal lines, table
        if lines:
            yield _Block(section, " ".join(lines), is_item)
        if table:
            # table[1] is the |---| separator row
            yield section, table[0], [" | ".join(cells) for cells in table[2:]]
        lines, table = [], []

    for raw in spec.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            yield from flush()
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = _HEADING.match(stripped)
        if stripped.startswith("#"):
            yield from flush()
            if heading:
                section = heading[1]
            elif stripped.startswith("# "):
                section = None  # the title and the preamble under it
            continue
        if stripped.startswith("|"):
            if lines:
                yield from flush()
            table.append(_cells(stripped))
            continue
        if not stripped or _ITEM.match(stripped) or table:
            yield from flush()
            is_item = bool(_ITEM.match(stripped))
            stripped = _ITEM.sub("", stripped)
        if stripped:
            lines.append(stripped)
    yield from flush()


def requirements(spec: str) -> list[Requirement]:
    found: list[tuple[str, str]] = []
    absorbing = False  # the last requirement ended in ":" and takes the list after it
    for block in _blocks(spec):
        if isinstance(block, tuple):
            absorbing = False
            section, header, rows = block
            key = tuple(h.lower() for h in header)
            if section is not None and key in NORMATIVE_TABLES:
                found += [(section, row) for row in rows]
            continue
        if block.section is None:
            continue
        if absorbing and block.is_item and block.section == found[-1][0]:
            found[-1] = (found[-1][0], found[-1][1] + " " + block.text)
            continue
        absorbing = False
        for sentence in _SENTENCE_END.split(block.text):
            if _KEYWORD.search(sentence):
                found.append((block.section, sentence))
                absorbing = sentence.rstrip().endswith(":")
    return [Requirement(requirement_id(s, t), s, normalise(t)) for s, t in found]


def parse_table(text: str) -> tuple[list[Row], list[str]]:
    """Rows of CONFORMANCE.md: | id | § | requirement | side | host tests | device tests |."""
    rows: list[Row] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        cells = _cells(line) if line.startswith("|") else []
        if not cells or not _ID.match(cells[0].strip("`")):
            continue
        where = f"line {number}"
        if len(cells) != 6:
            problems.append(f"{where}: {len(cells)} cells, expected 6")
            continue
        ident, section, _, side, host, device = cells
        ident = ident.strip("`")
        row = Row(number, ident, section.lstrip("§"), side, {}, {})
        match = _ID.match(ident)
        if match and match[1] != row.section:
            problems.append(f"{where}: {ident} is in §{match[1]}, the row says §{row.section}")
        sides = ("host", "device") if side == "both" else (side,) if side in SIDES else ()
        if not sides and not (side.startswith("n/a:") and side[4:].strip()):
            problems.append(f"{where}: side {side!r} is not host, device, both or 'n/a: reason'")
        for name, cell in (("host", host), ("device", device)):
            items = [i.strip() for i in cell.split("<br>") if i.strip() not in ("", NONE_CELL)]
            row.missing[name] = [i for i in items if i.startswith(MISSING)]
            row.tests[name] = [i.strip("`") for i in items if not i.startswith(MISSING)]
            if name in sides and not items:
                problems.append(f"{where}: {ident} applies to the {name} but names no test "
                                f"(write {MISSING} if there is none yet)")
            if name not in sides and items:
                problems.append(f"{where}: {ident} does not apply to the {name} (side {side}) "
                                f"but its {name} cell is not {NONE_CELL}")
        rows.append(row)
    return rows, problems


def _exists(node: str, collected: Collection[str]) -> bool:
    # A parametrised test may be named whole, without its [parameters].
    return node in collected or any(c.startswith(node + "[") for c in collected)


def check(
    spec: str, table: str, collected: Collection[str], uncollectable: Iterable[str] = ()
) -> Report:
    reqs = requirements(spec)
    rows, problems = parse_table(table)
    report = Report(reqs, rows, problems)
    seen: dict[str, str] = {}
    for req in reqs:
        if req.id in seen:
            report.problems.append(f"SPEC: {req.id} twice in §{req.section}; reword one")
        seen[req.id] = req.text
    ids = {r.id for r in rows}
    report.no_row = [r for r in reqs if r.id not in ids]
    report.stale = [r for r in rows if r.id not in seen]
    broken = tuple(uncollectable)
    listed: set[str] = set()
    for row in rows:
        if row.id in listed:
            report.problems.append(f"line {row.line}: a second row for {row.id}")
        listed.add(row.id)
        for side, nodes in row.tests.items():
            if row.missing[side] and row not in report.stale:
                report.missing.append((row, side))
            for node in nodes:
                path = node.split("::", 1)[0]
                if any(path == b or path.startswith(b + "/") for b in broken):
                    report.problems.append(f"line {row.line}: {node}: {path} did not collect")
                elif not _exists(node, collected):
                    report.problems.append(f"line {row.line}: no such test {node}")
    # SPEC.md names tests itself, in its threat model (§15): those must exist too.
    for node in re.findall(r"`([\w./-]+\.py::[\w\[\]-]+)`", spec):
        if not _exists(node, collected):
            report.problems.append(f"SPEC.md: no such test {node}")
    return report


def _collect(root: Path, dirs: Iterable[str]) -> tuple[set[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--continue-on-collection-errors", *dirs],
        cwd=root, capture_output=True, text=True, check=False,
    )
    nodes = {line for line in done.stdout.splitlines()
             if "::" in line and line.startswith(TEST_DIRS)}
    return nodes, re.findall(r"^ERROR (\S+\.py)", done.stdout, flags=re.MULTILINE)


def collect(root: Path = ROOT) -> tuple[set[str], list[str]]:
    """Node ids pytest collects under TEST_DIRS, and the files or folders that did not collect.

    One pytest run; only if it collects nothing at all (a conftest or plugin that does not
    import fails the whole run) is each folder collected alone, so one broken folder does not
    hide the tests of the others.
    """
    nodes, broken = _collect(root, TEST_DIRS)
    if nodes:
        return nodes, broken
    for folder in TEST_DIRS:
        found, failed = _collect(root, [folder])
        nodes |= found
        broken += failed if found else [folder]
    return nodes, broken


def skeleton(spec: str, table: str) -> str:
    have = {r.id for r in parse_table(table)[0]}
    return "\n".join(
        f"| `{r.id}` | §{r.section} | {table_cell(r.text)} | both | {MISSING} | {MISSING} |"
        for r in requirements(spec) if r.id not in have
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 unless every row holds")
    mode.add_argument("--skeleton", action="store_true", help="rows for requirements without one")
    args = parser.parse_args(argv)
    spec, table = SPEC.read_text(), TABLE.read_text() if TABLE.exists() else ""
    if args.skeleton:
        print(skeleton(spec, table))
        return 0
    report = check(spec, table, *collect())
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
