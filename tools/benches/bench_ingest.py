"""Gateway figures: ingest throughput against raw MQTT, and impression -> PUBACK latency.

    .venv/bin/python tools/benches/bench_ingest.py      # or through tools/bench.py

ingest: many simulated seals (sealink_sim.simdevice, the real protocol through sealproto), all in
one child process (real seals are not inside the gateway either), replay a journal backlog over
one socketpair each through the whole gateway path (decode, MAC, counter and chain checks,
COSE_Sign1, SQLite WAL group commit with fsync, ACK, outbox, MQTT QoS 1) until every event is
PUBACKed; in the same run, raw paho QoS 1 publishes of the same
payload to the same broker give the ceiling. Both are measured in ROUNDS interleaved rounds
(SEALINK_BENCH_ROUNDS, default 3) and reported as medians; ratio = the ratio of the medians.
`cpu_us_per_event` is where the CPU went while the events flowed (Linux /proc, medians): the
gateway's event loop, its seal-verify and ledger threads, the publisher process, the simulated
fleet and the broker; `cores_busy` is their sum over the window. Once that nears the cores
there are, events per second are about cores / (the sum of cpu_us_per_event), so only a smaller
sum raises the rate, not moving work between threads.

latency: one stamp at a time on an EmulatedBoard (real firmware under MicroPython, over its
pty): from the moment the board reports the impression journaled to the PUBACK of its event.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEVICES = int(os.environ.get("SEALINK_BENCH_DEVICES", "64"))
EVENTS_PER_DEVICE = int(os.environ.get("SEALINK_BENCH_EVENTS", "250"))
ROUNDS = int(os.environ.get("SEALINK_BENCH_ROUNDS", "3"))
LATENCY_STAMPS = int(os.environ.get("SEALINK_BENCH_STAMPS", "100"))
# The emulated seal's MicroPython heap; empty = the board's default.
BOARD_HEAP = os.environ.get("SEALINK_BENCH_HEAP", "")


_THREAD_PARTS = {"MainThread": "loop", "seal-verify": "verify", "sealink-ledger": "ledger"}


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process's threads (by thread name, pool suffix dropped) and
    of its descendant processes (by what they run); {} where /proc is not there."""
    import threading

    if not Path("/proc/self/task").is_dir():
        return {}
    hz = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
    parts: dict[str, float] = {}
    pids, me = [os.getpid()], os.getpid()
    while pids:
        pid = pids.pop()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue  # ended meanwhile
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                pids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            if pid == me:
                part = _THREAD_PARTS.get(names.get(int(task.name), ""), "gateway_other")
            elif b"sealink.mqtt.process" in command:
                part = "publisher"
            elif b"--fleet" in command:
                part = "fleet"
            elif b"mosquitto" in command:
                part = "broker"
            else:
                part = "other"
            parts[part] = parts.get(part, 0.0) + (int(fields[11]) + int(fields[12])) / hz
    return parts


def _ack_key(work: Path) -> Path:
    """A gateway's acknowledgement key, so that every ACK carries its signature (SPEC §5.11)."""
    from sealink.crypto.p256 import P256Key

    path = work / "gateway.ack.key"
    P256Key.generate().save(path, "acknowledgement key")
    return path


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _raw_publish_rate(port: int, payload: bytes, count: int, window: int) -> float:
    """The ceiling: plain paho QoS 1 publishing, done well. One thread drives paho's socket
    itself (loop_read/loop_write on select, as the gateway's publisher does), keeps `window`
    messages in flight with paho's own inflight limit off (it rescans its queue on every
    PUBACK), and the clock stops at the last PUBACK. Measured here, this beats loop_start()
    with a publishing thread by 10-40%."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise TimeoutError("raw publish: no CONNACK")
        client.loop(0.05)
    sock = client.socket()
    sent = 0
    try:
        start = time.perf_counter()
        deadline = time.monotonic() + 120
        while acked < count:
            while sent < count and sent - acked < window:
                client.publish(f"bench/raw/{sent % DEVICES}/events", payload, qos=1)
                sent += 1
            readable, writable, _ = select.select(
                [sock], [sock] if client.want_write() else [], [], 1.0
            )
            if writable:
                client.loop_write()
            if readable:
                client.loop_read()
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw publish: {acked}/{count} PUBACKs")
        return count / (time.perf_counter() - start)
    finally:
        client.disconnect()
        client.loop_write()


async def _ingest(work: Path, port: int) -> tuple[float, bytes, dict[str, float]]:
    from sealink.config import Config, MqttConfig
    from sealink.crypto.keystore import LinkKeyStore
    from sealink.crypto.signer import GatewayKey
    from sealink.gateway.service import Gateway
    from sealink.ledger.sqlite import Ledger
    from sealink_sim.pipe import SocketTransport
    from sealink_sim.simdevice import SimChip

    key = GatewayKey.generate()
    key.save(work / "gateway.key")
    ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
    sims_keys = {f"bench-{i:04d}": os.urandom(32) for i in range(DEVICES)}
    for device, device_key in sims_keys.items():
        ledger.add_device(device, device_key, SimChip.of(device_key).public)
    ledger.close()
    config = Config(
        gateway_id="bench",
        key_file=work / "gateway.key",
        ledger_path=work / "ledger.sqlite",
        link_keys=work / "link-keys",
        mqtt=MqttConfig(port=port, prefix="bench"),
        ack_key_file=_ack_key(work),
    )
    total = DEVICES * EVENTS_PER_DEVICE
    loop = asyncio.get_running_loop()
    async with Gateway(config, key=key) as gateway:
        await gateway.publisher.wait_connected(10)
        links = {device: socket.socketpair() for device in sims_keys}
        control, fleet_control = socket.socketpair()
        fleet = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--fleet",
                str(fleet_control.fileno()),
                *(str(device_end.fileno()) for _, device_end in links.values()),
            ],
            pass_fds=[fleet_control.fileno(), *(d.fileno() for _, d in links.values())],
        )
        try:
            fleet_control.close()
            for _, device_end in links.values():
                device_end.close()
            for device, (host_end, _) in links.items():
                gateway.attach(SocketTransport(f"{device}:host", host_end))
            control.setblocking(False)
            hello = [[device, device_key.hex()] for device, device_key in sims_keys.items()]
            spec = json.dumps({"devices": hello, "events": EVENTS_PER_DEVICE}) + "\n"
            await loop.sock_sendall(control, spec.encode())
            ready = await asyncio.wait_for(loop.sock_recv(control, 64), 120)
            if ready != b"ready\n":
                raise RuntimeError(f"simulated device fleet failed: {ready!r}")
            sample: list[bytes] = []

            def keep_first(row: Any) -> None:
                if not sample:
                    sample.append(row.payload)

            gateway.publisher.on_published = keep_first
            published_before = gateway.publisher.published
            cpu_before = _cpu_seconds()
            start = time.perf_counter()
            await loop.sock_sendall(control, b"go\n")
            while gateway.publisher.published - published_before < total:
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - start
            cpu = {
                part: (seconds - cpu_before.get(part, 0.0)) / total * 1e6
                for part, seconds in _cpu_seconds().items()
            }
            cpu["cores_busy"] = sum(cpu.values()) * total / 1e6 / elapsed
        finally:
            control.close()  # the fleet's cue to stop
            try:
                fleet.wait(10)
            except subprocess.TimeoutExpired:
                fleet.kill()
                fleet.wait()
    return total / elapsed, sample[0], cpu


async def _fleet(control: socket.socket, fds: list[int]) -> None:
    """The child process: every simulated seal, each on its own socket to the gateway. Its
    own process, as real devices are: the gateway's core does only the gateway's work."""
    from sealink_sim.pipe import SocketTransport
    from sealink_sim.simdevice import SimDevice

    loop = asyncio.get_running_loop()
    control.setblocking(False)
    spec = b""
    while not spec.endswith(b"\n"):
        spec += await loop.sock_recv(control, 1 << 16)
    setup = json.loads(spec)
    sims = [
        SimDevice(device, bytes.fromhex(key_hex), SocketTransport(f"{device}:device", sock))
        for (device, key_hex), sock in zip(
            setup["devices"], (socket.socket(fileno=fd) for fd in fds), strict=True
        )
    ]
    for sim in sims:
        await sim.start()
    for sim in sims:
        await asyncio.wait_for(sim.welcomed.wait(), 60)
    while any(not sim.commands for sim in sims):  # the TIME sync after each handshake
        await asyncio.sleep(0.01)
    for sim in sims:
        # The backlog a seal accumulated offline, built before the clock starts.
        sim.record(setup["events"])
        sim.prepare_frames()
    await loop.sock_sendall(control, b"ready\n")
    if await loop.sock_recv(control, 64) == b"go\n":
        for sim in sims:
            await sim.send_backlog()
        await loop.sock_recv(control, 64)  # b"" once the parent has measured
    for sim in sims:
        await sim.stop()
        await sim.transport.close()


def bench_ingest() -> dict[str, Any]:
    from sealink.config import MqttConfig
    from sealink_sim.broker import Mosquitto

    rates: list[float] = []
    raws: list[float] = []
    cpus: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="sealink-bench-") as tmp:
        work = Path(tmp)
        with Mosquitto(work / "broker", autosave_s=3600) as broker:
            # Interleaved rounds, medians: on a shared machine single rates wander by tens of
            # percent, and neighbours' load then hits both sides alike.
            for i in range(ROUNDS):
                round_dir = work / f"round-{i}"
                round_dir.mkdir()
                rate, payload, cpu = asyncio.run(_ingest(round_dir, broker.port))
                rates.append(rate)
                cpus.append(cpu)
                # the same window as the gateway's publisher
                window = MqttConfig().inflight
                raws.append(
                    _raw_publish_rate(broker.port, payload, DEVICES * EVENTS_PER_DEVICE, window)
                )
    rate, raw = statistics.median(rates), statistics.median(raws)
    cpu = {p: statistics.median(c.get(p, 0.0) for c in cpus) for p in sorted(set().union(*cpus))}
    return {
        "bench": "ingest",
        "events_per_s": round(rate),
        "raw_publish_per_s": round(raw),
        "ratio": round(rate / raw, 3),
        "devices": DEVICES,
        "rounds": ROUNDS,
        "cores_busy": round(cpu.pop("cores_busy", 0.0), 2),
        "cpu_us_per_event": {p: round(us) for p, us in cpu.items() if us >= 0.5},
    }


async def _latency(
    work: Path, port: int, board: Any, device: str, key: Any
) -> tuple[list[float], list[float]]:
    from sealink.config import Config, MqttConfig, PortConfig
    from sealink.gateway.service import Gateway

    config = Config(
        gateway_id="bench",
        key_file=work / "gateway.key",
        ledger_path=work / "ledger.sqlite",
        link_keys=work / "link-keys",
        mqtt=MqttConfig(port=port, prefix="bench"),
        ports=(PortConfig(board.uart_path),),
        ack_key_file=work / "gateway.ack.key",
    )
    pubacks_wall_ms: dict[int, float] = {}

    def published(row: Any) -> None:
        pubacks_wall_ms.setdefault(row.counter or 0, time.time() * 1000)

    async with Gateway(config, key=key) as gateway:
        gateway.publisher.on_published = published
        await gateway.publisher.wait_connected(10)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not any(s.device is not None for s in gateway.sessions):
            if loop.time() > deadline:
                raise TimeoutError(f"no handshake; device log {board.log_path}")
            await asyncio.sleep(0.01)
        now = int(time.time())
        await gateway.issue_permit(device, LATENCY_STAMPS + 10, now - 60, now + 3600)
        while True:
            commands = await gateway.db(gateway.ledger.commands, device)
            if commands and commands[-1].state != "pending":
                break
            await asyncio.sleep(0.01)
        counted: list[int] = []
        for _ in range(LATENCY_STAMPS):
            before = board.counter or 0
            press = asyncio.create_task(asyncio.to_thread(board.stamp))
            await asyncio.to_thread(board.wait_until, lambda b, n=before: (b.counter or 0) > n, 15)
            counted.append(board.counter)
            await press
            while board.counter not in pubacks_wall_ms:
                await asyncio.sleep(0.0005)
        received = {
            e["counter"]: e["received_ms"]
            for e in await gateway.db(lambda: list(gateway.ledger.events(device)))
        }
    # From the moment the impression counted on the board (journaled; its own wall-clock
    # report) to the PUBACK: the board shares this machine's clock.
    total = [pubacks_wall_ms[c] - board.counted_at_us[c] / 1000 for c in counted]
    host = [pubacks_wall_ms[c] - received[c] for c in counted]
    return total, host


def bench_latency() -> dict[str, Any]:
    from sealink.crypto.keystore import LinkKeyStore
    from sealink.crypto.p256 import P256Key
    from sealink.crypto.signer import GatewayKey
    from sealink.ledger.sqlite import Ledger
    from sealink_sim.broker import Mosquitto
    from sealink_sim.emulator import EmulatedBoard
    from sealink_sim.enrolment import enrol

    device = "bench-latency"
    with tempfile.TemporaryDirectory(prefix="sealink-bench-") as tmp:
        work = Path(tmp)
        key = GatewayKey.generate()
        key.save(work / "gateway.key")
        device_key = os.urandom(32)
        board = EmulatedBoard(
            work / "board",
            device_id=device,
            device_key=device_key,
            # what a seal takes to sign an impression is part of its latency
            chip_latency="typical",
            **({"heapsize": BOARD_HEAP} if BOARD_HEAP else {}),  # type: ignore[arg-type]
        )
        ledger = Ledger(work / "ledger.sqlite", LinkKeyStore(work / "link-keys"), create=True)
        ledger.add_device(device, device_key, board.provision())
        # Enrolled, as a site's seal is: its acknowledgements free the journal (SPEC §5.11).
        ack_key = P256Key.load(_ack_key(work), "acknowledgement key")
        cert = enrol(device, ack_key.public)
        ledger.enrol(device, cert.to_json(), cert.serial)
        ledger.close()
        with Mosquitto(work / "broker", autosave_s=3600) as broker, board:
            values, host = asyncio.run(_latency(work, broker.port, board, device, key))
    return {
        "bench": "latency",
        "p50_ms": round(statistics.median(values), 3),
        "p99_ms": round(_percentile(values, 0.99), 3),
        "stamps": len(values),
        # the gateway's share: EVENT frame received -> PUBACK (wall clock, ms resolution)
        "gateway_p50_ms": round(statistics.median(host), 3),
        "gateway_p99_ms": round(_percentile(host, 0.99), 3),
    }


def run() -> list[dict[str, Any]]:
    results = [bench_ingest()]
    try:
        results.append(bench_latency())
    except Exception as exc:  # the emulated board may be unavailable (no micropython wheel)
        results.append({"bench": "latency", "error": f"{type(exc).__name__}: {exc}"})
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fleet"]:
        fleet_control = socket.socket(fileno=int(sys.argv[2]))
        asyncio.run(_fleet(fleet_control, [int(fd) for fd in sys.argv[3:]]))
        sys.exit(0)
    for result in run():
        print(json.dumps(result))
