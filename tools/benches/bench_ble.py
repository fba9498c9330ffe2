"""BLE figures (SPEC §6): impression -> PUBACK latency and a backlog's drain, at ATT MTU 247 and 23.

    .venv/bin/python tools/bench.py ble

The whole gateway (a `ble://` port through bleak's public API on the bumble backend, a real
Mosquitto behind) against two seals, one row each per MTU:

- `"seal": "emulated"`: the real firmware on an EmulatedBoard (`-X heapsize=96k`, the chip
  model at its typical times, enrolled, so the drain waits for a Verify of the gateway's stored
  signature every 256 records and at the burst's end, SPEC §5.11), its BLE peripheral
  the `bluetooth` stand-in bridged by sealink_sim.air to a bumble Device; the gateway's central
  reaches it over the Air's H4-over-TCP HCI port. Real HCI, L2CAP, ATT and GATT between them.
- `"seal": "simulated"`: sealink_sim.bleseal, a bumble GATT peripheral in the gateway's process
  that answers at once: the ceiling of the gateway and the two stacks on this machine, measured
  in the same run (`fraction_of_simulated` on the emulated row).

- latency: LATENCY_STAMPS records one at a time, from the record (emulated: the moment the
  firmware counted the impression, on the board's report; simulated: the record leaving the
  seal) to the gateway's PUBACK of its event; median and p99.
- drain: a backlog recorded while no gateway listened, drained after it connects: emulated,
  from the session's opening to the PUBACK of the last record (`drain_events_per_s`); the
  backlog is recorded once and the board's flash, chip and the ledger are copied back before
  the second MTU's drain. Simulated: from the first record sent to the seal having the ACK of
  the last (`drain_events_per_s`) and to the broker's PUBACK of it (`drain_published_per_s`).

bumble's virtual link carries a packet at once (no air time, no connection interval), so it
sets no ceiling of its own: `chunks_per_event` is what a record costs in notifications at that
MTU, which is what a radio link's connection events would bound.

    {"bench": "ble", "seal": "emulated", "mtu": 247, "latency_p50_ms": ...,
     "latency_p99_ms": ..., "drain_events_per_s": ..., "fraction_of_simulated": ..., ...}
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

LATENCY_STAMPS = int(os.environ.get("SEALINK_BENCH_STAMPS", "100"))
BACKLOG = int(os.environ.get("SEALINK_BENCH_BLE_BACKLOG", "2000"))
# The emulated board's journal holds 2,000 records and keeps 64 for presses made without a
# permit (seal/app.py): 1,900 is the longest backlog of a seal still at work (bench_drain).
FIRMWARE_BACKLOG = int(os.environ.get("SEALINK_BENCH_BLE_FIRMWARE_BACKLOG", "1900"))
MTUS = (247, 23)
DEVICE = "seal-bench-ble"
_TIMEOUT_S = 600.0
_SESSION_TIMEOUT_S = 60.0
# The firmware's live heap, sampled this often (each sample is a full collection: at
# bench_firmware's 5 ms it would slow the drain it measures).
HEAP_PROBE_MS = 50


async def _published(published: dict[int, float], counter: int) -> float:
    deadline = time.monotonic() + _TIMEOUT_S
    while counter not in published:
        if time.monotonic() > deadline:
            raise TimeoutError(f"event {counter} was never PUBACKed")
        await asyncio.sleep(0.001)
    return published[counter]


async def _measure(work: Path, broker_port: int, mtu: int) -> dict[str, Any]:
    from sealink.config import Config, MqttConfig, PortConfig
    from sealink.crypto.keystore import LinkKeyStore
    from sealink.crypto.p256 import P256Key
    from sealink.crypto.signer import GatewayKey
    from sealink.gateway.service import Gateway
    from sealink.ledger.sqlite import Ledger
    from sealink.transport.blebumble import close_hosts
    from sealink_sim.bleseal import BleSeal
    from sealink_sim.simdevice import SimChip

    work.mkdir()
    key = GatewayKey.generate()
    key.save(work / "gateway.key")
    # Every ACK carries the gateway's signature, as in the field (SPEC §5.11).
    P256Key.generate().save(work / "gateway.ack.key", "acknowledgement key")
    device_key = os.urandom(32)
    ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
    ledger.add_device(DEVICE, device_key, SimChip.of(device_key).public)
    ledger.close()
    link = f"bench-ble-{mtu}"
    config = Config(
        gateway_id="bench",
        key_file=work / "gateway.key",
        ledger_path=work / "ledger.sqlite",
        link_keys=work / "link-keys",
        mqtt=MqttConfig(port=broker_port, prefix="bench"),
        ports=(PortConfig(f"ble://{DEVICE}?backend=bumble&hci=virtual:{link}", "ble"),),
        ack_key_file=work / "gateway.ack.key",
    )
    published: dict[int, float] = {}

    def on_published(row: Any) -> None:
        published.setdefault(row.counter or 0, time.perf_counter())

    try:
        async with (
            BleSeal(DEVICE, device_key, link=link, mtu=mtu) as seal,
            Gateway(config, key=key) as gateway,
        ):
            gateway.publisher.on_published = on_published
            await gateway.publisher.wait_connected(10)
            await asyncio.wait_for(seal.sim.welcomed.wait(), 60)
            latencies = []
            for _ in range(LATENCY_STAMPS):
                counter = seal.sim.next_counter
                sent = time.perf_counter()
                await seal.sim.stamp()
                latencies.append((await _published(published, counter) - sent) * 1000)
            first = seal.sim.next_counter
            seal.sim.record(BACKLOG)
            seal.sim.prepare_frames()
            last = first + BACKLOG - 1
            notified, sent_bytes = seal.notified, seal.notified_bytes
            start = time.perf_counter()
            await seal.sim.send_backlog()
            await seal.sim.wait_acked(last, timeout=_TIMEOUT_S)
            acked_s = time.perf_counter() - start
            published_s = await _published(published, last) - start
            chunks = (seal.notified - notified) / BACKLOG
            wire = (seal.notified_bytes - sent_bytes) / BACKLOG
    finally:
        await close_hosts()
    return {
        "bench": "ble",
        "seal": "simulated",
        "mtu": mtu,
        **_latency(latencies),
        "drain_events_per_s": round(BACKLOG / acked_s),
        "drain_published_per_s": round(BACKLOG / published_s),
        "backlog": BACKLOG,
        "chunks_per_event": round(chunks, 2),
        "seal_bytes_per_event": round(wire, 1),
    }


def _latency(latencies_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    return {
        "latency_p50_ms": round(statistics.median(ordered), 2),
        "latency_p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 2),
        "stamps": len(ordered),
    }


def _firmware_config(work: Path, broker_port: int, url: str) -> Any:
    from sealink.config import Config, MqttConfig, PortConfig

    return Config(
        gateway_id="bench",
        key_file=work / "gateway.key",
        ledger_path=work / "ledger.sqlite",
        link_keys=work / "link-keys",
        mqtt=MqttConfig(port=broker_port, prefix="bench"),
        ports=(PortConfig(url, "ble"),),
        ack_key_file=work / "gateway.ack.key",
    )


def _firmware_setup(work: Path, air: Any) -> Any:
    """The gateway's files and the enrolled, provisioned seal on `air`; returns the board."""
    from sealink_sim.emulator import HEAPSIZE, EmulatedBoard
    from sealink_sim.enrolment import enrolled_gateway

    work.mkdir()
    device_key = os.urandom(32)
    board = EmulatedBoard(
        work / "board",
        device_id=DEVICE,
        device_key=device_key,
        heapsize=HEAPSIZE,
        chip_latency="typical",
        air=air,
        links=("ble",),
        heap_probe_ms=HEAP_PROBE_MS,
    )
    enrolled_gateway(work, DEVICE, device_key, board.provision())
    return board


async def _session_opened(gateway: Any) -> float:
    """The wall-clock time the seal's session opened (polled each millisecond)."""
    deadline = time.monotonic() + _SESSION_TIMEOUT_S
    while not any(s.device == DEVICE for s in gateway.sessions):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no session with {DEVICE} in {_SESSION_TIMEOUT_S:g} s")
        await asyncio.sleep(0.001)
    return time.time()


async def _grant(config: Any, board: Any) -> None:
    """A permit for every record the bench makes, in force once the lock opens."""
    from sealink.crypto.signer import GatewayKey
    from sealink.gateway.service import Gateway

    async with Gateway(config, key=GatewayKey.load(config.key_file)) as gateway:
        await _session_opened(gateway)
        now = int(time.time())
        count = FIRMWARE_BACKLOG + LATENCY_STAMPS + 10
        permit = await gateway.issue_permit(DEVICE, count, now - 60, now + 3600, 7)
        deadline = time.monotonic() + _SESSION_TIMEOUT_S
        while not board.lock_open:
            if time.monotonic() > deadline:
                raise TimeoutError(f"permit {permit} never opened the lock; {board.log_path}")
            await asyncio.sleep(0.01)


async def _drain_then_latency(config: Any, board: Any, last: int) -> tuple[float, list[float]]:
    """Seconds from the session's opening to the PUBACK of record `last`; then the latency of
    LATENCY_STAMPS stamps made one at a time on the same link."""
    from sealink.crypto.signer import GatewayKey
    from sealink.gateway.service import Gateway

    # Wall-clock times: the board reports when each record counted on the host's clock.
    published: dict[int, float] = {}

    def on_published(row: Any) -> None:
        published.setdefault(row.counter or 0, time.time())

    async with Gateway(config, key=GatewayKey.load(config.key_file)) as gateway:
        gateway.publisher.on_published = on_published
        start = await _session_opened(gateway)
        drained_s = await _published(published, last) - start
        latencies = []
        for _ in range(LATENCY_STAMPS):
            await asyncio.to_thread(board.stamp)
            counter = board.counter or 0
            counted_s = board.counted_at_us[counter] / 1e6
            latencies.append((await _published(published, counter) - counted_s) * 1000)
    return drained_s, latencies


def _measure_firmware(work: Path, broker_port: int) -> list[dict[str, Any]]:
    import shutil

    from sealink_sim.air import Air

    rows = []
    with Air() as air:
        hci = air.central_hci()
        board = _firmware_setup(work, air)
        with board:
            asyncio.run(_grant(_firmware_config(work, broker_port, board.ble_url(hci)), board))
            first = (board.counter or 0) + 1
            for _ in range(FIRMWARE_BACKLOG):
                board.stamp()  # returns once the board applied it
            last = board.counter or 0
            if last - first + 1 < FIRMWARE_BACKLOG:
                raise RuntimeError(f"recorded {first}..{last}; device log {board.log_path}")
            board.stop()
            # Each MTU drains the same backlog: flash, chip and ledger as recorded.
            recorded = work.with_name(work.name + "-recorded")
            shutil.copytree(work, recorded)
            for mtu in MTUS:
                board.start()
                url = f"{board.ble_url(hci)}&mtu={mtu}"
                config = _firmware_config(work, broker_port, url)
                drained_s, latencies = asyncio.run(_drain_then_latency(config, board, last))
                heap_peak = board.heap_peak
                board.stop()
                rows.append(
                    {
                        "bench": "ble",
                        "seal": "emulated",
                        "mtu": mtu,
                        **_latency(latencies),
                        "drain_events_per_s": round((last - first + 1) / drained_s),
                        "backlog": last - first + 1,
                        "seal_heap_peak_bytes": heap_peak,
                    }
                )
                shutil.rmtree(work)
                shutil.copytree(recorded, work)
    return rows


def run() -> list[dict[str, Any]]:
    from sealink_sim.broker import Mosquitto

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-ble-") as d,
        Mosquitto(Path(d) / "broker") as broker,
    ):
        simulated = {
            mtu: asyncio.run(_measure(Path(d) / f"gw-{mtu}", broker.port, mtu)) for mtu in MTUS
        }
        emulated = _measure_firmware(Path(d) / "firmware", broker.port)
    for row in emulated:
        ceiling = simulated[row["mtu"]]["drain_events_per_s"]
        row["fraction_of_simulated"] = round(row["drain_events_per_s"] / ceiling, 3)
        rows.append(row)
    rows.extend(simulated.values())
    return rows


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
