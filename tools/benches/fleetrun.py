"""What the fleet benches share: `sealink fleet run` processes started and stopped as a
deployment would, and the waits on PostgreSQL. Not a bench itself (no `bench_` prefix)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from sealink_sim.fleetrig import SimSeal

__all__ = ["TIMEOUT_S", "Instance", "count", "cpu_s", "register", "sealink", "wait"]

TIMEOUT_S = 900.0


class Instance:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        seen = self.log.read_text().count("fleet: subscribed") if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sealink.cli", "fleet", "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait(lambda: self.log.read_text().count("fleet: subscribed") > seen, "subscribed")

    def pause(self) -> None:
        """SIGSTOP: holds what it was handed (unacknowledged, so the broker sends it no more
        than its receive maximum) while the others start."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def cpu_s(leaders: list[int]) -> float:
    """CPU seconds (user and system, with reaped children's) of the processes `leaders` and of
    their children: a PostgreSQL cluster is its postmaster and the backends it forks (each
    in a session of its own), which come and go."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # After the command: state ppid pgrp session ... utime(12) stime cutime cstime (proc(5))
        if int(entry.name) in leaders or int(fields[1]) in leaders:
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench fleet: timed out waiting for {what}")
        time.sleep(0.05)


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM records WHERE chain_ok").fetchone()
    return int(row[0]) if row else 0


def sealink(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "sealink.cli", *args], check=True, capture_output=True)


def register(config: Path, seals: list[SimSeal]) -> float:
    """`sealink fleet migrate`, then `devices import` of every seal's key; the import's
    seconds."""
    registry = config.parent / "seals.jsonl"
    registry.write_text(
        "".join(f'{{"device": "{s.device}", "seal_key": "{s.chip.public.hex()}"}}\n' for s in seals)
    )
    sealink("fleet", "migrate", "-c", str(config))
    start = time.perf_counter()
    sealink("fleet", "devices", "import", str(registry), "-c", str(config))
    return time.perf_counter() - start
