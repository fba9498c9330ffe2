"""Per-test artifacts under the results folder: logs, the wire hexdump, the seeds and faults.

results/<test>/
    board.log      the device's captured output (emulated: the micropython process)
    host.log       the gateway service's log
    broker.log     Mosquitto's log
    wire.hexdump   every byte between board and host, with the faults applied to them
    wire.log       every frame between them, decoded: type, key fields, decode errors
    faults.jsonl   one line per fault injected, in order, with the seed first
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["Artifacts"]

BOARD_LOG = "board.log"
HOST_LOG = "host.log"
BROKER_LOG = "broker.log"
WIRE_HEXDUMP = "wire.hexdump"
WIRE_LOG = "wire.log"
FAULTS = "faults.jsonl"


def _folder_name(nodeid: str) -> str:
    """`hil-tests/test_x.py::test_y[a-b]` -> `test_x.test_y-a-b`: one flat, readable folder."""
    module, _, name = nodeid.rpartition("::")
    stem = Path(module).stem if module else ""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{stem}.{name}" if stem else name).strip("-.")


class Artifacts:
    """The results folder of one test; files are copied in at teardown, paths known up front."""

    def __init__(self, root: str | Path, nodeid: str) -> None:
        self.dir = Path(root).resolve() / _folder_name(nodeid)
        # A rerun replaces the previous run's artifacts: stale logs would mislead.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.nodeid = nodeid

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def board_log(self) -> Path:
        return self.path(BOARD_LOG)

    @property
    def host_log(self) -> Path:
        return self.path(HOST_LOG)

    @property
    def broker_log(self) -> Path:
        return self.path(BROKER_LOG)

    @property
    def wire_hexdump(self) -> Path:
        return self.path(WIRE_HEXDUMP)

    @property
    def wire_log(self) -> Path:
        return self.path(WIRE_LOG)

    @property
    def faults(self) -> Path:
        return self.path(FAULTS)

    def collect(self, name: str, source: str | Path | None) -> None:
        """Copy a log into the folder; appends, so a restarted process keeps its earlier runs."""
        if source is None or not Path(source).exists():
            return
        with contextlib.suppress(OSError), self.path(name).open("ab") as out:
            out.write(Path(source).read_bytes())

    def append_json(self, name: str, record: dict[str, Any]) -> None:
        with self.path(name).open("a") as out:
            out.write(json.dumps({"t": round(time.time(), 6), **record}, sort_keys=True) + "\n")

    def describe(self) -> str:
        """The sentence failure messages end with: where to look."""
        return (
            f"device log: {self.board_log}; wire hexdump: {self.wire_hexdump}; "
            f"decoded wire log: {self.wire_log}; "
            f"host log: {self.host_log}; broker log: {self.broker_log}; "
            f"faults and seed: {self.faults}"
        )
