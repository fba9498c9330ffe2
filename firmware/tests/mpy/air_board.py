# A peripheral on the emulated board's bluetooth stand-in, driven line by line from stdin by
# host/tests/test_air.py: each command calls one documented BLE method and prints its outcome;
# every IRQ is printed as it arrives. Runs under micropython beside a real sealink_sim.air.
import asyncio
import errno
import gc
import sys
import time
from asyncio import core

# What the stand-in costs in the heap: imported and constructed, before any test code.
gc.collect()
_BEFORE = gc.mem_alloc()

import bluetooth  # noqa: E402

ble = bluetooth.BLE()
gc.collect()
_BUILT = gc.mem_alloc()

_SERVICE = bluetooth.UUID("5ea10000-5ea1-4c1d-8e5e-a15ea1000000")
_RX = (bluetooth.UUID("5ea10001-5ea1-4c1d-8e5e-a15ea1000000"), bluetooth.FLAG_WRITE_NO_RESPONSE)
_TX = (bluetooth.UUID("5ea10002-5ea1-4c1d-8e5e-a15ea1000000"), bluetooth.FLAG_NOTIFY)
# A second service with a readable, writable characteristic and a descriptor: the shape of the
# handles gatts_register_services returns.
_AUX = (
    bluetooth.UUID(0x180F),
    (
        (
            bluetooth.UUID(0x2A19),
            bluetooth.FLAG_READ | bluetooth.FLAG_WRITE,
            ((bluetooth.UUID(0x2901), bluetooth.FLAG_READ),),
        ),
    ),
)


def out(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")


def on_irq(event, data):
    words = []
    for item in data:
        words.append(bytes(item).hex() if isinstance(item, memoryview) else item)
    out("@irq", event, *words)


def _data(word):
    return bytes.fromhex(word) if word != "-" else None


def run(words):
    cmd = words[0]
    if cmd == "active":
        return ble.active(words[1] == "1") if len(words) > 1 else ble.active()
    if cmd == "mem":
        gc.collect()
        return f"{_BUILT - _BEFORE}:{gc.mem_alloc()}"
    if cmd == "irq":
        ble.irq(on_irq)
        return None
    if cmd == "config":
        if len(words) == 2:
            v = ble.config(words[1])
            if isinstance(v, tuple):
                return f"{v[0]}:{bytes(v[1]).hex()}"
            return bytes(v).hex() if isinstance(v, bytes) else v
        if words[1] == "mtu":
            return ble.config(mtu=int(words[2]))
        return ble.config(gap_name=words[2])
    if cmd == "register":
        services = (_SERVICE, (_RX, _TX))
        handles = ble.gatts_register_services((services, _AUX) if "aux" in words else (services,))
        return repr(handles).replace(" ", "")
    if cmd == "advertise":
        interval = None if words[1] == "-" else int(words[1])
        if len(words) == 2:
            return ble.gap_advertise(interval)
        resp = _data(words[3]) if len(words) > 3 else None
        return ble.gap_advertise(interval, _data(words[2]), resp_data=resp)
    if cmd == "disconnect":
        return ble.gap_disconnect(int(words[1]))
    if cmd == "read":
        return ble.gatts_read(int(words[1])).hex()
    if cmd == "write":
        return ble.gatts_write(int(words[1]), bytes.fromhex(words[2]), len(words) > 3)
    if cmd == "buffer":
        return ble.gatts_set_buffer(int(words[1]), int(words[2]), words[3] == "1")
    if cmd == "notify":
        return ble.gatts_notify(int(words[1]), int(words[2]), _data(words[3]))
    if cmd == "flood":
        # Notifications back to back until the pool is empty: how many went before ENOMEM.
        sent = 0
        try:
            while sent < 1000:
                ble.gatts_notify(int(words[1]), int(words[2]), bytes(int(words[3])))
                sent += 1
        except OSError as e:
            return f"{sent}:{e.errno}"
        return f"{sent}:0"
    raise ValueError("unknown command " + cmd)


async def readable(stream):
    yield core._io_queue.queue_read(stream)


async def stream(conn, handle, count, size):
    # `count` notifications of `size` bytes as fast as the pool frees: a buffer comes back
    # only between tasks, so the wait on ENOMEM yields.
    data = bytearray(size)
    sent = 0
    start = time.ticks_ms()
    while sent < count:
        data[0] = sent & 0xFF
        try:
            ble.gatts_notify(conn, handle, data)
            sent += 1
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            await asyncio.sleep_ms(0)
    return time.ticks_diff(time.ticks_ms(), start)


async def main():
    while True:
        await readable(sys.stdin)
        line = sys.stdin.readline()
        if not line:
            return
        words = line.split()
        try:
            if words and words[0] == "stream":
                out("@ok", await stream(*(int(w) for w in words[1:])))
                continue
            out("@ok", run(words))
        except OSError as e:
            out("@oserror", e.errno)
        except Exception as e:
            out("@error", type(e).__name__, e)


asyncio.run(main())
