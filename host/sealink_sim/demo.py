"""`sealink demo`: the whole path on one machine, no hardware.

A private Mosquitto on a free loopback port, an emulated seal running the real firmware under
MicroPython with a freshly provisioned key, the gateway in this process on the seal's pty
(`transport="serial"`) or over BLE (`"ble"`: the seal's GATT peripheral and the gateway's
central on bumble virtual controllers, real HCI, L2CAP, ATT and GATT between them), a
permit for N impressions, N stamps pressed through the board's control channel, and the
independent observer (cwt) verifying every COSE signature with the exported public key.
Every process it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
from sealink.config import Config, MqttConfig, PortConfig
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.p256 import P256Key
from sealink.crypto.signer import GatewayKey
from sealink.gateway.service import Gateway
from sealink.ledger.sqlite import Ledger

from sealink_sim.broker import Mosquitto
from sealink_sim.enrolment import enrol
from sealink_sim.observer import Observer

__all__ = ["run_demo"]

DEVICE = "seal-demo-0001"
_EV_KIND = 5
_KIND_IMPRESSION = 0
_SETUP_TIMEOUT_S = 60.0
_STAMP_TIMEOUT_S = 15.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def line(self, text: str) -> None:
        if self.enabled:
            sys.stdout.write("\r" + text.ljust(78) if sys.stdout.isatty() else text + "\n")
            sys.stdout.flush()


TRANSPORTS = ("serial", "ble")


def run_demo(
    stamps: int,
    *,
    as_json: bool,
    workdir: str | None = None,
    heap: str | None = None,
    transport: str = "serial",
) -> int:
    from sealink_sim.emulator import HEAPSIZE, EmulatedBoard

    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")

    progress = _Progress(not as_json)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sealink-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            progress.say(f"sealink demo: {stamps} stamps; files in {work}")
            broker = stack.enter_context(Mosquitto(work / "broker"))
            progress.say(f"  mosquitto   127.0.0.1:{broker.port} (log {broker.log_path})")
            key = GatewayKey.generate()
            key.save(work / "gateway.key", overwrite=True)
            public_pem = key.public_pem()  # what `sealink keys show --format pem` exports
            (work / "gateway.pub.pem").write_bytes(public_pem)
            device_key = os.urandom(32)
            air = None
            if transport == "ble":
                from sealink_sim.air import Air  # bumble: the ble extra

                air = stack.enter_context(Air())
            board = EmulatedBoard(
                work / "board",
                device_id=DEVICE,
                device_key=device_key,
                air=air,
                links=("ble",) if air else ("uart",),
                heapsize=heap or HEAPSIZE,
            )
            # As a provisioning station does: the seal key is made inside the chip, and only
            # its public half is registered with the gateway.
            seal_key = board.provision()
            progress.say(f"  seal chip   public key {seal_key[:8].hex()}… (ATECC608 model)")
            # As `sealink devices add` does: the link key into the key store, the rest into the
            # ledger.
            ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
            ledger.add_device(DEVICE, device_key, seal_key, replace=True)
            # As `sealink keys init`, `sealink authority certify` (the simulator's authority,
            # which the emulated board's firmware trusts) and `sealink devices enrol` do: the
            # seal frees its journal on this gateway's signed acknowledgements (SPEC §5.11).
            ack_key = P256Key.generate()
            ack_key.save(work / "gateway.ack.key", "acknowledgement key", overwrite=True)
            cert = enrol(DEVICE, ack_key.public)
            ledger.enrol(DEVICE, cert.to_json(), cert.serial)
            ledger.close()
            stack.enter_context(board)
            port = board.ble_url(air.central_hci()) if air else board.uart_path
            progress.say(f"  seal        {DEVICE} on {port} (log {board.log_path})")
            observer = stack.enter_context(
                Observer(
                    "127.0.0.1",
                    broker.port,
                    public_pem,
                    prefix="sealink",
                    seal_keys={DEVICE: seal_key},
                )
            )
            progress.say(f"  observer    independent cwt verifier, kid {key.kid.hex()}")
            config = Config(
                gateway_id="demo",
                key_file=work / "gateway.key",
                ledger_path=work / "ledger.sqlite",
                link_keys=work / "link-keys",
                ack_key_file=work / "gateway.ack.key",
                mqtt=MqttConfig(port=broker.port, prefix="sealink"),
                ports=(PortConfig(port, transport="ble" if air else "serial"),),
            )
            summary = asyncio.run(_drive(config, key, board, observer, stamps, progress))
    except KeyboardInterrupt:
        progress.say("\ninterrupted; everything stopped")
        return 130
    finally:
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
    ok = (
        summary["verified"] == summary["stamps"]
        and summary["lost"] == 0
        and summary["invalid"] == 0
    )
    if as_json:
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in ("stamps", "published", "verified", "lost", "duplicates", "latency_ms")
                }
            )
        )
    else:
        lat = summary["latency_ms"]
        progress.say(
            f"\n{'OK' if ok else 'FAILED'}: {summary['verified']}/{stamps} impressions verified, "
            f"lost {summary['lost']}, duplicates {summary['duplicates']}, "
            f"latency p50 {lat['p50']} ms p99 {lat['p99']} ms\n(latency: stamp pressed -> "
            "signature verified by the subscriber; includes the seal's 10 ms debounce)"
        )
    return 0 if ok else 1


async def _drive(
    config: Config,
    key: GatewayKey,
    board: Any,
    observer: Observer,
    stamps: int,
    progress: _Progress,
) -> dict[str, Any]:
    async with Gateway(config, key=key) as gateway:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SETUP_TIMEOUT_S
        while not any(s.device == DEVICE for s in gateway.sessions):
            if loop.time() > deadline:
                raise TimeoutError(f"the seal never completed its handshake; log {board.log_path}")
            await asyncio.sleep(0.02)
        now = int(time.time())
        permit = await gateway.issue_permit(DEVICE, stamps, now - 60, now + 3600, operator=1)
        while True:
            commands = await gateway.db(gateway.ledger.commands, DEVICE)
            states = [c.state for c in commands if c.body.get("permit") == permit]
            if states and states[0] != "pending":
                break
            if loop.time() > deadline:
                raise TimeoutError(f"the seal never answered the permit; log {board.log_path}")
            await asyncio.sleep(0.02)
        if states[0] != "done":
            raise RuntimeError(f"the seal refused the permit: {commands[-1]}")
        progress.say(f"  permit      #{permit} for {stamps} impressions accepted by the seal\n")
        pressed: dict[int, float] = {}
        start_counter = board.counter or 0
        for i in range(1, stamps + 1):
            before = board.counter or 0
            t_press = time.time() * 1000
            await asyncio.to_thread(board.stamp)
            await asyncio.to_thread(
                board.wait_until, lambda b, n=before: (b.counter or 0) > n, _STAMP_TIMEOUT_S
            )
            pressed[board.counter] = t_press
            tally = observer.device(DEVICE)
            progress.line(
                f"  stamp {i:>4}/{stamps}  seal counter {board.counter:>5}  "
                f"verified {tally.verified:>5}  published {tally.published:>5}"
            )
        last = max(pressed)
        await asyncio.to_thread(observer.wait_for, DEVICE, last, 30.0)
        progress.line(f"  all {stamps} stamps made; counters {start_counter + 1}..{last} verified")
    tally = observer.device(DEVICE)
    latencies = [tally.arrivals[c] - t for c, t in pressed.items() if c in tally.arrivals]
    impressions = sum(
        1
        for c in pressed
        if c in tally.events and cbor2.loads(tally.events[c]).get(_EV_KIND) == _KIND_IMPRESSION
    )
    return {
        "stamps": stamps,
        "published": tally.published,
        "verified": impressions,
        "lost": tally.lost,
        "duplicates": tally.duplicates,
        "invalid": tally.invalid + tally.conflicts + tally.chain_breaks,
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)},
    }
