"""BLE figures (SPEC §6): impression -> PUBACK latency and a backlog's drain, at ATT MTU 247 and 23.

    .venv/bin/python tools/bench.py ble

The whole gateway (a `ble://` port through bleak's public API on the bumble backend) against a
simulated seal that is a bumble GATT peripheral (sealink_sim.bleseal), the two on bumble's
in-process virtual link: real HCI, L2CAP, ATT and GATT between them, a real Mosquitto behind.
The seal is simulated (the firmware's peripheral is not built yet), so the seal's own time
per record is not in these figures.

- latency: LATENCY_STAMPS records one at a time, from the record leaving the seal to the
  gateway's PUBACK of its event; medians and p99 over the stamps.
- drain: a backlog of BACKLOG records sent as after a reconnect, until the seal has the ACK of
  the last one (`drain_events_per_s`) and until the broker PUBACKed it
  (`drain_published_per_s`).

bumble's virtual link carries a packet at once (no air time, no connection interval), so it
sets no ceiling: these figures are the two stacks' and the gateway's CPU on this machine.
`chunks_per_event` is what a record costs in notifications at that MTU, which is what a radio
link's connection events would bound.

    {"bench": "ble", "mtu": 247, "latency_p50_ms": ..., "latency_p99_ms": ...,
     "drain_events_per_s": ..., ...}
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
MTUS = (247, 23)
DEVICE = "seal-bench-ble"
_TIMEOUT_S = 600.0


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
    ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"))
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
    latencies.sort()
    return {
        "bench": "ble",
        "mtu": mtu,
        "latency_p50_ms": round(statistics.median(latencies), 2),
        "latency_p99_ms": round(latencies[max(0, int(len(latencies) * 0.99) - 1)], 2),
        "stamps": LATENCY_STAMPS,
        "drain_events_per_s": round(BACKLOG / acked_s),
        "drain_published_per_s": round(BACKLOG / published_s),
        "backlog": BACKLOG,
        "chunks_per_event": round(chunks, 2),
        "seal_bytes_per_event": round(wire, 1),
    }


def run() -> list[dict[str, Any]]:
    from sealink_sim.broker import Mosquitto

    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-ble-") as d,
        Mosquitto(Path(d) / "broker") as broker,
    ):
        for mtu in MTUS:
            rows.append(asyncio.run(_measure(Path(d) / f"gw-{mtu}", broker.port, mtu)))
    return rows


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
