# heapsize: 96k  (test code: the peer host, mpy/peer.py with the sealproto.messages names, and
# the in-memory wire run in this interpreter beside the firmware, which alone fits in 64k)
# The transport glue: serve() runs the link over a raw non-blocking byte stream. Here the stream
# is an in-memory pipe that takes partial writes and hands out bytes in random chunks (seeded),
# with a peer host on the other end; 40 impressions go through under asyncio.
import asyncio
import os
import random

from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S, Rig

from seal.link import UP, Link
from seal.uart import StreamPort, serve

_SEED = 777


class Pipe:
    # One direction each way, like a UART: readinto() returns None when nothing is there.
    def __init__(self, rnd):
        self.to_device = bytearray()
        self.to_host = bytearray()
        self._rnd = rnd

    def readinto(self, buf):
        if not self.to_device:
            return None
        n = min(len(buf), len(self.to_device), 1 + self._rnd.getrandbits(6))
        buf[:n] = self.to_device[:n]
        self.to_device = self.to_device[n:]
        return n

    def write(self, data):
        # A UART FIFO takes what fits: sometimes part of a frame, sometimes nothing.
        n = min(len(data), self._rnd.getrandbits(8))
        self.to_host.extend(memoryview(data)[:n])
        return n or None


async def _host(pipe, peer, until):
    while not until():
        if pipe.to_host:
            chunk = bytes(pipe.to_host)
            pipe.to_host = bytearray()
            pipe.to_device.extend(peer.feed(chunk))
        await asyncio.sleep_ms(1)


async def test_serve_over_a_chunking_pipe_delivers_in_order():
    random.seed(_SEED)
    rnd = random
    print("seed", _SEED)
    rig = Rig("uart", blocks=64)
    pipe = Pipe(rnd)
    port = StreamPort(pipe)
    peer = Peer(KEY, NOW_S * 1000)
    link = Link("seal-uart", KEY, rig.boot, "fw", rig.journal, rig.recorder, rig.guard,
                lambda: 3700, os.urandom, port.send)
    rig.guard.alarm_sink = link.alarm
    serving = asyncio.create_task(serve(link, port))
    for _ in range(40):
        await rig.guard.on_press()
    await asyncio.wait_for_ms(_host(pipe, peer, lambda: rig.journal.acked == 40), 20000)
    serving.cancel()
    equal(link.state, UP)
    equal(peer.counters(), list(range(1, 41)))
    equal([e for e in peer.errors if e[0] != "session"], [])
    equal(rig.journal.backlog, 0)
