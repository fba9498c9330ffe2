"""A flooding port must not delay another port's events, nor cost storage or log volume.

    .venv/bin/python tools/benches/bench_flood.py      # or through tools/bench.py

One gateway (in this process, with a real Mosquitto) serves two ptys. On port A a simulated
seal (sealink_sim.simdevice) sends one event at a time and times each until its ACK, which the
gateway sends only after the fsync'd commit. On port B a child process writes as fast as the
pty takes it: random bytes (`garbage`), or well-framed HELLOs with a bad MAC (`bad_hello`).
Each kind is measured against a quiet round in the same run: the ceiling is port A alone.

Reported per flood kind (`flood`): port A's event -> ACK latency p50/p99 quiet and under
flood, and their ratio; how much the flood pushed through and what that left in the ledger
and the log.

`line_cost`: what bad input costs per MB and per day of a noisy 115,200-baud line, measured on
the link state machine itself with its clock advanced at the line rate (real time would take
87 s a MB): quarantine rows, alarms and gateway log bytes (one log line per row or alarm, at
the measured size of such a line). Seeded (SEALINK_BENCH_SEED, printed in each result).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EVENTS = int(os.environ.get("SEALINK_BENCH_FLOOD_EVENTS", "300"))
SEED = int(os.environ.get("SEALINK_BENCH_SEED", str(random.SystemRandom().randrange(2**32))))
DEVICE = "flood-a"

# The flooder: argv = the pty master fd (inherited), kind, seed; it writes until
# SIGTERM, then prints how many bytes it wrote.
_FLOODER = r"""
import os, random, select, signal, sys
from sealproto import auth, framing, messages
fd = int(sys.argv[1])
os.set_blocking(fd, False)
rng = random.Random(int(sys.argv[3]))
if sys.argv[2] == "garbage":
    block = bytes(rng.getrandbits(8) for _ in range(1024))
else:
    hello = {0: messages.HELLO, 1: 1, 2: "flood-a", 3: bytes(16), 4: 1, 5: 1, 6: "x"}
    block = framing.encode_frame(messages.encode(auth.sign(hello, os.urandom(32))))
written = 0
def stop(*_):
    print(written, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    select.select([], [fd], [], 0.1)
    try:
        written += os.write(fd, block)
    except BlockingIOError:
        pass
"""


class _ByteCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        from sealink.logs import _JsonFormatter

        self.setFormatter(_JsonFormatter())
        self.bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.bytes += len(self.format(record)) + 1


async def _latencies(sim: Any, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        await sim.stamp(1)
        await sim.wait_acked(len(sim.journal), timeout=30)
        out.append((time.perf_counter() - start) * 1000)
    return out


def _ledger_counts(path: Path) -> tuple[int, int, int]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        alarms = db.execute("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/alarms'").fetchone()[0]
        counted = db.execute("SELECT COALESCE(SUM(count), 0) FROM rejections").fetchone()[0]
        return int(rows), int(alarms), int(counted)
    finally:
        db.close()


async def _run(work: Path, broker_port: int) -> list[dict[str, Any]]:
    from sealink.config import Config, LedgerConfig, MqttConfig, PortConfig
    from sealink.crypto import GatewayKey, LinkKeyStore
    from sealink.gateway import Gateway
    from sealink.ledger import Ledger
    from sealink_sim.ptylink import open_pty_link
    from sealink_sim.simdevice import SimChip, SimDevice

    key = GatewayKey.generate()
    key.save(work / "gateway.key")
    device_key = os.urandom(32)
    ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
    ledger.add_device(DEVICE, device_key, SimChip.of(device_key).public)
    ledger.close()
    counter = _ByteCount()
    logging.getLogger("sealink").addHandler(counter)
    logging.getLogger("sealink").setLevel(logging.INFO)
    results = []
    with open_pty_link() as link_a, open_pty_link() as link_b:
        config = Config(
            gateway_id="flood",
            key_file=work / "gateway.key",
            ledger_path=work / "ledger.sqlite",
            link_keys=work / "link-keys",
            mqtt=MqttConfig(port=broker_port, prefix="flood"),
            ledger=LedgerConfig(),
            ports=(
                PortConfig(url=link_a.host_path, transport="serial"),
                PortConfig(url=link_b.host_path, transport="serial"),
            ),
        )
        async with (
            Gateway(config) as gateway,
            SimDevice(DEVICE, device_key, link_a.device_end) as sim,
        ):
            await asyncio.wait_for(sim.welcomed.wait(), 15)
            await _latencies(sim, 20)  # warm up
            for kind in ("garbage", "bad_hello"):
                quiet = await _latencies(sim, EVENTS)
                rows0, alarms0, counted0 = _ledger_counts(config.ledger_path)
                log0 = counter.bytes
                flooder = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        _FLOODER,
                        str(link_b.master_fd),
                        kind,
                        str(SEED),
                    ],
                    stdout=subprocess.PIPE,
                    pass_fds=(link_b.master_fd,),
                    text=True,
                )
                try:
                    await asyncio.sleep(0.5)  # the flood is at full rate before timing starts
                    flooded = await _latencies(sim, EVENTS)
                finally:
                    flooder.terminate()
                    written = int(flooder.communicate(timeout=10)[0] or 0)
                # The gateway may still hold unread flood: let the pty drain, then commit.
                await asyncio.sleep(1.5)
                await gateway.committer.commit_now()
                rows1, alarms1, counted1 = _ledger_counts(config.ledger_path)
                mb = written / 1e6
                results.append(
                    {
                        "bench": "flood",
                        "kind": kind,
                        "events": EVENTS,
                        "p50_ms_quiet": round(statistics.median(quiet), 3),
                        "p99_ms_quiet": round(_percentile(quiet, 0.99), 3),
                        "p50_ms_flood": round(statistics.median(flooded), 3),
                        "p99_ms_flood": round(_percentile(flooded, 0.99), 3),
                        "p50_ratio": round(
                            statistics.median(flooded) / statistics.median(quiet), 2
                        ),
                        "flood_mb": round(mb, 2),
                        "quarantine_rows_per_mb": round((rows1 - rows0) / mb, 2),
                        "alarms_per_mb": round((alarms1 - alarms0) / mb, 2),
                        "rejections_counted": counted1 - counted0,
                        "log_bytes_per_mb": round((counter.bytes - log0) / mb, 1),
                        "seed": SEED,
                    }
                )
    logging.getLogger("sealink").removeHandler(counter)
    return results


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


_LINE_BYTES_PER_S = 11_520  # 115,200 baud, 8N1
_COST_MB = 4


def _line_cost(kind: str) -> dict[str, Any]:
    from sealink.gateway.actions import Reject
    from sealink.gateway.machine import LinkMachine
    from sealink.gateway.registry import DeviceRegistry
    from sealink.ledger import GENESIS, DeviceRecord
    from sealink.logs import _JsonFormatter
    from sealproto import auth, framing, messages

    rng = random.Random(SEED)
    registry = DeviceRegistry()
    registry.load(DeviceRecord(DEVICE, 0, GENESIS, 0, None, None), os.urandom(32), 0)
    machine = LinkMachine("tty-noisy", registry)
    if kind == "garbage":
        stream = bytes(rng.getrandbits(8) for _ in range(_COST_MB * 1_000_000))
    else:
        hello = {0: messages.HELLO, 1: 1, 2: DEVICE, 3: bytes(16), 4: 1, 5: 1, 6: "x"}
        frame = framing.encode_frame(messages.encode(auth.sign(hello, os.urandom(32))))
        stream = frame * (_COST_MB * 1_000_000 // len(frame))
    chunk = 128
    now_ms = 0.0
    rows = alarms = rejects = logged = 0
    for i in range(0, len(stream), chunk):
        now_ms += chunk * 1000 / _LINE_BYTES_PER_S
        for action in machine.feed(stream[i : i + chunk], int(now_ms)):
            if isinstance(action, Reject):
                rejects += 1
                rows += action.row
                alarms += action.alarm is not None
                # The service logs one line per rejection that keeps a row or raises an alarm.
                logged += action.row or action.alarm is not None
    line = logging.LogRecord("sealink.gateway", logging.WARNING, __file__, 0, "rejected", (), None)
    line.fields = {
        "device": None,
        "port": "/dev/ttyUSB0",
        "reason": "malformed_frame",
        "detail": "COBS: invalid stuffing",
    }
    line_bytes = len(_JsonFormatter().format(line)) + 1
    mb = len(stream) / 1e6
    per_day = _LINE_BYTES_PER_S * 86_400 / 1e6 / mb
    return {
        "bench": "line_cost",
        "kind": kind,
        "mb": round(mb, 2),
        "line_rate_bytes_per_s": _LINE_BYTES_PER_S,
        "rejections": rejects,
        "quarantine_rows_per_mb": round(rows / mb, 2),
        "alarms_per_mb": round(alarms / mb, 2),
        "log_bytes_per_mb": round(logged * line_bytes / mb),
        "quarantine_rows_per_day": round(rows * per_day),
        "log_bytes_per_day": round(logged * line_bytes * per_day),
        "seed": SEED,
    }


def run() -> list[dict[str, Any]]:
    from sealink_sim.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="sealink-flood-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker") as broker:
            results = asyncio.run(_run(work, broker.port))
    return [*results, _line_cost("garbage"), _line_cost("bad_hello")]


if __name__ == "__main__":
    import json

    for result in run():
        print(json.dumps(result))
