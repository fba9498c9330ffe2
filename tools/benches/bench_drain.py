"""A backlog's drain over serial at 115,200 baud, against the line rate (issue 11).

    .venv/bin/python tools/bench.py drain

The real firmware on an EmulatedBoard (`-X heapsize=96k`) records BACKLOG permitted
impressions while no gateway listens, then the whole gateway (in this process: its serial
transport, sessions, group commit, signed ACKs, a real Mosquitto behind) drains them through
sealink_sim.uartpace, which holds the pty to a UART's 115,200 baud 8N1 (11,520 bytes/s) in each
direction. The seal is enrolled, so a Verify on the chip model of the gateway's stored
signature (every 256 records during a drain, and at the end of the burst: SPEC §5.11) frees
journal segments, as in the field. The impressions are signed with a chip that answers at
once (at the datasheet's times the recording alone would take minutes); the drain runs with its
typical times, the ones the other emulated benches use.

The clock runs on the relay's taps, the only exact view of the wire: from the chunk that
carries the first byte of the first record's EVENT frame to the chunk that completes the ACK
of the last record on its way into the seal (the board reports no ACKs, and the ledger knows
when it received an event, not when the seal had its ACK). `wire_bytes_per_s` is every
device -> host byte carried in between (the EVENTs, resent ones included, and STATUS frames);
`fraction_of_line_rate` is that over 11,520. In the same run the same relay carries a raw
stream with no firmware behind it: `relay_fraction_of_line_rate` is its ceiling.

Why the line idles, if it does: `ack_rtt_*_ms` (an EVENT's last byte out -> the ACK covering
it into the seal) against `window_ms` (what a window of EVENTs takes on the line: the seal
runs dry only when a round trip outlasts it), the pauses on the device -> host line, resent
EVENTs, and the firmware's CPU per record (`seal_cpu_ms_per_event`, this machine's, not an
MCU's) against the line time of one (1000 * `bytes_per_event` / 11,520 ms).

    {"bench": "drain", "transport": "serial", "baud": 115200, "events": ...,
     "fraction_of_line_rate": ..., "relay_fraction_of_line_rate": ..., ...}
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import os
import select
import statistics
import threading
import time
import tty
from pathlib import Path
from typing import Any, NamedTuple

from sealink_sim.uartpace import D2H, UartRelay
from sealproto import codec, messages, timers
from sealproto.errors import DecodeError
from sealproto.framing import FrameDecoder

# The emulated board's journal holds 2,000 records and keeps 64 of them for presses made
# without a permit (seal/app.py): 1,936 impressions fill it, and a full journal shuts the
# lock and raises an alarm. 1,900 is the longest backlog of a seal still at work.
BACKLOG = int(os.environ.get("SEALINK_BENCH_DRAIN_BACKLOG", "1900"))
# Issue 11's figure is at 115,200; another rate shows where the seal or the gateway, not the
# line, sets the pace.
BAUD = int(os.environ.get("SEALINK_BENCH_DRAIN_BAUD", "115200"))
DEVICE = "seal-bench-drain"
# The ceiling's raw stream: a few seconds of the line.
CEILING_BYTES = 32768
_BITS_PER_BYTE = 10
_TIMEOUT_S = 300.0
_STAMP_TIMEOUT_S = 10.0
# A line idle this long between two chunks (a slice is 1 ms) counts as a pause in the drain.
_PAUSE_S = 0.005


class _Wire:
    """What the relay carried, as it carried it: every chunk with its time; the ACKs on their
    way into the seal decoded at once, so the run ends when the last record's arrives."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.d2h: list[tuple[float, bytes]] = []
        self.h2d: list[tuple[float, bytes]] = []
        self.acked_at: float | None = None
        self.done = threading.Event()
        self._acks = FrameDecoder()

    def tap(self, direction: str, data: bytes, t: float) -> None:
        if direction == D2H:
            self.d2h.append((t, data))
            return
        self.h2d.append((t, data))
        for payload in self._acks.feed(data):
            msg = _message(payload)
            if (
                self.acked_at is None
                and msg.get(messages.K_TYPE) == messages.ACK
                and msg.get(messages.AK_COUNTER, 0) >= self.last
            ):
                self.acked_at = t
                self.done.set()


def _message(item: bytes | DecodeError) -> dict[int, Any]:
    if isinstance(item, DecodeError):
        return {}
    try:
        msg = codec.decode(item)
    except DecodeError:
        return {}
    return msg if isinstance(msg, dict) else {}


class _Frame(NamedTuple):
    at: float  # when the chunk carrying its first byte was delivered
    done: float  # ... and its last
    size: int
    msg: dict[int, Any]


def _frames(chunks: list[tuple[float, bytes]]) -> list[_Frame]:
    """The frames of one direction, each with the delivery times of its first and last byte."""
    stream = b"".join(data for _, data in chunks)
    ends: list[int] = []
    end = 0
    for _, data in chunks:
        end += len(data)
        ends.append(end)
    frames: list[_Frame] = []
    decoder = FrameDecoder()
    begin = 0
    while True:
        stop = stream.find(b"\x00", begin)
        if stop < 0:
            return frames
        if stop > begin:
            [item] = decoder.feed(stream[begin : stop + 1])
            at = chunks[bisect.bisect_right(ends, begin)][0]
            done = chunks[bisect.bisect_right(ends, stop)][0]
            frames.append(_Frame(at, done, stop + 1 - begin, _message(item)))
        begin = stop + 1


def _round_trips(events: list[_Frame], acks: list[_Frame]) -> list[float]:
    """For each record, from its first EVENT's last byte to the first ACK that covers it."""
    sent: dict[int, float] = {}
    for f in events:
        sent.setdefault(f.msg[messages.EV_COUNTER], f.done)
    order = sorted(sent)
    out: list[float] = []
    i = 0
    for ack in acks:
        covered = ack.msg.get(messages.AK_COUNTER, 0)
        while i < len(order) and order[i] <= covered:
            out.append(ack.done - sent[order[i]])
            i += 1
    return out


def _kind(frame: _Frame) -> int | None:
    kind = frame.msg.get(messages.K_TYPE)
    return kind if isinstance(kind, int) else None


async def _session_up(gateway: Any, board: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not any(s.device == DEVICE for s in gateway.sessions):
        if loop.time() > deadline:
            raise TimeoutError(f"no handshake with the board; device log {board.log_path}")
        await asyncio.sleep(0.02)


async def _grant(config: Any, key: Any, board: Any) -> None:
    """A permit for the whole backlog, over the board's own pty (no relay): the seal must be
    permitted before the gateway goes away."""
    from sealink.gateway.service import Gateway
    from sealink.transport.serial import SerialTransport

    async with Gateway(config, key=key) as gateway:
        gateway.attach(SerialTransport(board.uart_path, baudrate=BAUD))
        await _session_up(gateway, board)
        now = int(time.time())
        permit = await gateway.issue_permit(DEVICE, BACKLOG + 10, now - 60, now + 3600, 7)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            commands = await gateway.db(gateway.ledger.commands, DEVICE)
            mine = [c for c in commands if c.body.get("permit") == permit]
            if mine and mine[0].state != "pending":
                if mine[0].state != "done":
                    raise RuntimeError(f"permit refused: {mine[0]}; log {board.log_path}")
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the permit was never answered; log {board.log_path}")
            await asyncio.sleep(0.02)


async def _drain(config: Any, key: Any, host_path: str, wire: _Wire, board: Any) -> None:
    from sealink.gateway.service import Gateway
    from sealink.transport.serial import SerialTransport

    async with Gateway(config, key=key) as gateway:
        # Attached once the gateway is up: its start is not part of the drain.
        await gateway.publisher.wait_connected(10)
        gateway.attach(SerialTransport(host_path, baudrate=BAUD))
        if not await asyncio.to_thread(wire.done.wait, _TIMEOUT_S):
            raise TimeoutError(
                f"record {wire.last} was never acknowledged within {_TIMEOUT_S:g} s; "
                f"device log {board.log_path}"
            )


def _record_backlog(board: Any) -> float:
    """Stamp BACKLOG impressions; seconds it took."""
    start = time.monotonic()
    for _ in range(BACKLOG):
        board.stamp()
    board.wait_until(lambda b: b.counter == BACKLOG, _STAMP_TIMEOUT_S)
    if board.alarms:
        raise RuntimeError(f"alarms {board.alarms} while recording; log {board.log_path}")
    return time.monotonic() - start


def _ceiling() -> float:
    """Bytes per second the relay carries of a raw stream written as fast as it takes it."""
    stream = os.urandom(CEILING_BYTES)
    board, board_slave = os.openpty()
    for fd in (board, board_slave):
        tty.setraw(fd)
        os.set_blocking(fd, False)
    delivered: list[tuple[float, int]] = []
    try:
        with UartRelay(
            os.ttyname(board_slave), BAUD, tap=lambda d, b, t: delivered.append((t, len(b)))
        ) as relay:
            host = os.open(relay.host_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(host)
            try:
                got, left = 0, memoryview(stream)
                deadline = time.monotonic() + _TIMEOUT_S
                while got < len(stream):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the ceiling's stream: {got} of {len(stream)} bytes")
                    readable, writable, _ = select.select([host], [board] if left else [], [], 1)
                    if writable:
                        left = left[os.write(board, left) :]
                    if readable:
                        got += len(os.read(host, 65536))
            finally:
                os.close(host)
    finally:
        os.close(board)
        os.close(board_slave)
    (first_t, first_n), (last_t, _) = delivered[0], delivered[-1]
    return (CEILING_BYTES - first_n) / (last_t - first_t)


def _board_cpu_s() -> float:
    """CPU seconds so far of the emulated board's process (the firmware alone: the chip
    model answers from a thread of this one)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"micropython_run" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            total += (int(fields[11]) + int(fields[12])) / hz
    return total


def _setup(work: Path, broker_port: int) -> tuple[Any, Any, Any]:
    """The gateway's files and the enrolled, provisioned seal: (config, gateway key, board)."""
    from sealink.config import Config, MqttConfig
    from sealink_sim.emulator import HEAPSIZE, EmulatedBoard
    from sealink_sim.enrolment import enrolled_gateway

    device_key = os.urandom(32)
    board = EmulatedBoard(
        work / "board",
        device_id=DEVICE,
        device_key=device_key,
        heapsize=HEAPSIZE,
        chip_latency="none",
    )
    # Enrolled, as a site's seal is: the ACKs free its journal (SPEC §5.11).
    key = enrolled_gateway(work, DEVICE, device_key, board.provision())
    config = Config(
        gateway_id="bench",
        key_file=work / "gateway.key",
        ledger_path=work / "ledger.sqlite",
        link_keys=work / "link-keys",
        mqtt=MqttConfig(port=broker_port, prefix="bench"),
        ack_key_file=work / "gateway.ack.key",
    )
    return config, key, board


def _figures(wire: _Wire, ceiling: float) -> dict[str, Any]:
    line_rate = BAUD / _BITS_PER_BYTE
    byte_s = 1 / line_rate
    assert wire.acked_at is not None
    end = wire.acked_at
    d2h = _frames(wire.d2h)
    first = next(
        f for f in d2h if _kind(f) == messages.EVENT and f.msg.get(messages.EV_COUNTER) == 1
    )
    start = first.at
    elapsed = end - start
    window = [f for f in d2h if start <= f.at <= end]
    events = [f for f in window if _kind(f) == messages.EVENT]
    counters = {f.msg.get(messages.EV_COUNTER) for f in events}
    if counters != set(range(1, BACKLOG + 1)):
        raise RuntimeError(f"the drain carried {len(counters)} of {BACKLOG} records")
    # Strictly after the chunk the clock starts on: its bytes were on the line before.
    d2h_bytes = sum(len(b) for t, b in wire.d2h if start < t <= end)
    h2d_bytes = sum(len(b) for t, b in wire.h2d if start < t <= end)
    acks = [f for f in _frames(wire.h2d) if _kind(f) == messages.ACK and start <= f.at <= end]
    rtts = sorted(_round_trips(events, acks))
    # Where the line stood idle: between two chunks, the time the later one's bytes did not
    # take on the line, beyond a few slices (a late wake-up delivers more bytes, no pause).
    chunks = [(t, len(b)) for t, b in wire.d2h if start <= t <= end]
    idle = [(t1 - t0) - n1 * byte_s for (t0, _), (t1, n1) in itertools.pairwise(chunks)]
    pauses = [s for s in idle if s > _PAUSE_S]
    wire_rate = d2h_bytes / elapsed
    event_bytes = sum(f.size for f in events) / len(events)
    return {
        "bench": "drain",
        "transport": "serial",
        "baud": BAUD,
        "events": BACKLOG,
        "drain_s": round(elapsed, 3),
        "drain_events_per_s": round(BACKLOG / elapsed, 1),
        "wire_bytes_per_s": round(wire_rate),
        "line_rate_bytes_per_s": round(line_rate),
        "fraction_of_line_rate": round(wire_rate / line_rate, 3),
        "relay_bytes_per_s": round(ceiling),
        "relay_fraction_of_line_rate": round(ceiling / line_rate, 3),
        "bytes_per_event": round(d2h_bytes / BACKLOG, 1),
        "event_frame_bytes": round(event_bytes, 1),
        "events_resent": len(events) - BACKLOG,
        "host_to_device_bytes_per_s": round(h2d_bytes / elapsed),
        "acks": len(acks),
        "ack_frame_bytes": round(sum(f.size for f in acks) / len(acks), 1) if acks else 0,
        # an EVENT's last byte out of the seal's line -> the last byte of the ACK covering it
        # into the seal; the line never idles while it stays under what a window takes on it
        "ack_rtt_p50_ms": round(statistics.median(rtts) * 1000, 1),
        "ack_rtt_max_ms": round(rtts[-1] * 1000, 1),
        "window_ms": round(timers.WINDOW * event_bytes * byte_s * 1000, 1),
        # the line's idle time, and the part of it in pauses longer than _PAUSE_S
        "d2h_idle_s": round(elapsed - d2h_bytes * byte_s, 3),
        "d2h_pauses": len(pauses),
        "d2h_pause_s": round(sum(pauses), 3),
        "d2h_longest_pause_ms": round(max(pauses, default=0.0) * 1000, 1),
    }


def run() -> list[dict[str, Any]]:
    import tempfile

    from sealink_sim.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="bench-drain-") as d:
        work = Path(d)
        with Mosquitto(work / "broker", autosave_s=3600) as broker:
            config, key, board = _setup(work, broker.port)
            with board:
                asyncio.run(_grant(config, key, board))
                recorded_s = _record_backlog(board)
                # The drain with the chip's typical times (see the module docstring).
                board.chip_latency = "typical"
                assert board.chip is not None
                board.chip.latency = "typical"
                wire = _Wire(last=BACKLOG)
                writes, cpu_s = board.block_writes, _board_cpu_s()
                with UartRelay(board.uart_path, BAUD, tap=wire.tap) as relay:
                    asyncio.run(_drain(config, key, relay.host_path, wire, board))
                if relay.error is not None:
                    raise RuntimeError(f"the relay failed: {relay.error!r}")
                # The verified ACKs' compaction, while the seal sends the rest.
                writes = board.block_writes - writes
                cpu_s = _board_cpu_s() - cpu_s
                stalls = sum(relay.stalls.values())
            ceiling = _ceiling()
    return [
        {
            **_figures(wire, ceiling),
            "seal_flash_writes": writes,
            # the firmware's own time per record sent, on this machine's CPU, not an MCU's
            "seal_cpu_ms_per_event": round(cpu_s / BACKLOG * 1000, 3),
            # times a full pty held the relay back (a receiver not reading): 0 expected
            "relay_stalls": stalls,
            "record_s": round(recorded_s, 1),
        }
    ]


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
