# heapsize: 128k  (test code: the peer host, mpy/peer.py with the sealproto.messages names and
# every record it stores, 175 bytes each since seal signatures, and the in-memory wire run in
# this interpreter beside the firmware, which alone fits in 96k)
# The transport glue: serve() runs the link over a raw non-blocking byte stream, waking only
# when the stream is readable or writable, the link's wake event is set or its deadline comes.
# The stream is an in-memory pipe that asyncio polls as it polls a UART (MP_STREAM_POLL), takes
# partial writes and hands out bytes in random chunks (seeded, seed printed).
import asyncio
import gc
import io
import os
import random
import time
from micropython import const

from mpyunit import equal
from peer import Peer
from rig import KEY, NOW_S, Rig
from sealproto import messages as M
from testchip import stored_proof

from seal.link import HELLO_SENT, UP, Link
from seal.ports import Ports, serve
from seal.uart import StreamPort

_SEED = 777
_POLL = 3  # MP_STREAM_POLL
_POLLIN = 1
_POLLOUT = 4


class Pipe(io.IOBase):
    # One direction each way, like a UART: readinto() returns None when nothing is there;
    # write() takes at most `room` bytes (None: random partial writes), 0 of them when full.
    def __init__(self, rnd):
        self.to_device = bytearray()
        self.to_host = bytearray()
        self.room = None
        self._rnd = rnd

    def ioctl(self, req, arg):
        if req != _POLL:
            return -1
        ready = 0
        if self.to_device:
            ready |= _POLLIN
        if self.room is None or self.room > 0:
            ready |= _POLLOUT
        return ready & arg

    def readinto(self, buf):
        if not self.to_device:
            return None
        n = min(len(buf), len(self.to_device), 1 + self._rnd.getrandbits(6))
        buf[:n] = self.to_device[:n]
        self.to_device = self.to_device[n:]
        return n

    def write(self, data):
        # A UART FIFO takes what fits: sometimes part of a frame, sometimes nothing.
        n = min(len(data), self._rnd.getrandbits(8) if self.room is None else self.room)
        self.to_host.extend(memoryview(data)[:n])
        if self.room is not None:
            self.room -= n
        return n or None


class Counting(Link):
    # The real link; counts tick() calls, to show that nothing polls it, and the MemoryErrors
    # that leave them.
    ticks = 0
    memory_errors = 0

    def tick(self, now_ms):
        self.ticks += 1
        try:
            super().tick(now_ms)
        except MemoryError:
            self.memory_errors += 1
            raise


def _setup(name):
    random.seed(_SEED)
    print("seed", _SEED)
    rig = Rig(name, blocks=64)
    pipe = Pipe(random)
    port = StreamPort(pipe)
    ports = Ports([port])
    link = Counting("seal-uart", KEY, "fw", rig.journal, rig.guard, rig.enrolment("seal-uart"),
                    lambda: 3700, os.urandom, ports.send, rig.wake)
    return rig, pipe, link, asyncio.create_task(serve(link, ports))


async def _host(pipe, peer, until, timeout_ms=20000):
    # The peer host on the far end of the pipe, until `until()` or the timeout.
    t0 = time.ticks_ms()
    while not until():
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            raise AssertionError(f"timed out after {timeout_ms} ms")
        if pipe.to_host:
            chunk = bytes(pipe.to_host)
            pipe.to_host = bytearray()
            pipe.to_device.extend(peer.feed(chunk))
        await asyncio.sleep_ms(1)


async def _until(condition, what, timeout_ms=2000):
    t0 = time.ticks_ms()
    while not condition():
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            raise AssertionError(f"timed out after {timeout_ms} ms waiting for {what}")
        await asyncio.sleep_ms(1)


def _idle(link):
    # Nothing due for the next 50 s: the sender sleeps toward the STATUS interval.
    return link.next_deadline_ms(time.ticks_ms()) > 50000


async def test_serve_over_a_chunking_pipe_delivers_in_order():
    rig, pipe, link, serving = _setup("uart")
    peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    for _ in range(40):
        await rig.guard.on_press()
    await _host(pipe, peer, lambda: link.acked == 40)
    serving.cancel()
    equal(link.state, UP)
    equal(peer.counters(), list(range(1, 41)))
    equal([e for e in peer.errors if e[0] != "session"], [])
    equal(link.backlog, 0)


async def test_an_idle_link_sleeps_until_its_deadline():
    # No host: HELLO at once, again after 1 s and 2 s more (SPEC §5.2). A 5 ms poll would tick
    # ~500 times in 2.5 s; the sender ticks at the deadlines only.
    _, pipe, link, serving = _setup("idle")
    t0 = time.ticks_ms()
    await asyncio.sleep_ms(2500)
    serving.cancel()
    peer = Peer(KEY)
    peer.feed(bytes(pipe.to_host))
    equal(len(peer.hellos), 2, "HELLO at 0 ms and 1000 ms, the next due at 3000 ms")
    equal(link.state, HELLO_SENT)
    print("ticks in", time.ticks_diff(time.ticks_ms(), t0), "ms:", link.ticks)
    equal(link.ticks <= 4, True, f"{link.ticks} ticks in 2.5 s")


async def test_a_new_record_goes_out_at_once():
    # In a session, with the next deadline a minute away, a press reaches the wire within the
    # same scheduling round: the guard's wake event, not a poll and not the app calling into
    # the link, moves the sender.
    rig, pipe, link, serving = _setup("prompt")
    peer = Peer(KEY, NOW_S * 1000)
    await _host(pipe, peer, lambda: link.state == UP and peer.of_type(M.STATUS))
    # A permitted impression: a record and no alarm, so only the record itself wakes the link.
    equal(rig.grant(count=5), M.R_OK)
    await _until(lambda: _idle(link), "the STATUS of the new permit to go out")
    peer.feed(bytes(pipe.to_host))
    pipe.to_host = bytearray()
    ticks = link.ticks
    t0 = time.ticks_ms()
    await rig.guard.on_press()
    await _host(pipe, peer, lambda: peer.stored == 1, timeout_ms=1000)
    took = time.ticks_diff(time.ticks_ms(), t0)
    serving.cancel()
    equal(peer.events[-1], rig.journal.read(1))
    equal(M.decode(peer.events[-1])[M.EV_KIND], M.KIND_IMPRESSION)
    print("press to host:", took, "ms,", link.ticks - ticks, "ticks")
    equal(took < 20, True, f"{took} ms from press to host")


async def test_a_full_stream_is_waited_on_not_polled():
    # The stream takes nothing (a full UART FIFO, a pty nobody reads): the sender waits until
    # it is writable, without ticking; once it takes bytes again the held frame goes out.
    _, pipe, link, serving = _setup("full")
    pipe.room = 0
    await _until(lambda: link.ticks, "the first tick")
    ticks = link.ticks
    await asyncio.sleep_ms(1500)
    equal(link.ticks, ticks, "no tick while the stream is full")
    equal(len(pipe.to_host), 0)
    pipe.room = None
    await _until(lambda: pipe.to_host, "the held HELLO")
    serving.cancel()
    peer = Peer(KEY)
    peer.feed(bytes(pipe.to_host))
    equal(len(peer.hellos) >= 1, True, "the held HELLO went out once the stream took bytes")


async def test_a_timer_that_would_ring_late_is_moved_earlier():
    # Idle in a session, the sender sleeps toward the STATUS interval (a minute). A record
    # then puts an event in flight: its retransmission timeout (RTO_MS, 500) is far sooner,
    # and the resend must come at 500 ms, not at the minute (SPEC §5.6).
    rig, pipe, link, serving = _setup("rearm")
    peer = Peer(KEY, NOW_S * 1000)
    await _host(pipe, peer, lambda: link.state == UP and peer.of_type(M.STATUS))
    await _until(lambda: _idle(link), "an idle link")
    pipe.to_host = bytearray()  # from here on the host hears but never answers
    await rig.guard.on_press()
    t0 = time.ticks_ms()
    sends = []
    deaf = Peer(KEY)
    while len(sends) < 2 and time.ticks_diff(time.ticks_ms(), t0) < 3000:
        if pipe.to_host:
            chunk = bytes(pipe.to_host)
            pipe.to_host = bytearray()
            before = len(deaf.events) + deaf.duplicates
            deaf.feed(chunk)
            sends += [time.ticks_diff(time.ticks_ms(), t0)] * (len(deaf.events) + deaf.duplicates
                                                                - before)
        await asyncio.sleep_ms(1)
    serving.cancel()
    print("event sent at", sends, "ms")
    equal(len(sends), 2, "sent and resent")
    equal(400 <= sends[1] - sends[0] <= 700, True, f"resent after {sends[1] - sends[0]} ms")


_HOLE = const(1000)


def _cut_up_heap(blocks):
    # The heap as a long BLE drain once left it (issue 11): room, but in pieces smaller than
    # the 1,200 bytes of a segment file's object (littlefs's cache at a 256-byte program size):
    # blocks of _HOLE bytes to the heap's end, every other one kept. Real allocations, a real
    # MemoryError: MicroPython's own collection before it raises finds no larger block.
    gc.collect()
    n = 0
    try:
        while n < len(blocks):
            blocks[n] = bytearray(_HOLE)
            n += 1
    except MemoryError:
        pass
    for i in range(0, n, 2):
        blocks[i] = None
    gc.collect()
    return n


async def test_a_memory_error_on_the_send_path_holds_the_link_only_while_it_lasts():
    rig, pipe, link, serving = _setup("cutup")
    peer = Peer(KEY, NOW_S * 1000, prove=stored_proof)
    for _ in range(20):
        await rig.guard.on_press()
    # Taken before the heap is cut up: the list's own storage is one block.
    blocks = [None] * 256
    n = _cut_up_heap(blocks)
    print("held", n // 2, "blocks of", _HOLE, "bytes")
    equal(n < len(blocks), True, "the heap's end reached")
    # The session opens, and the first record to send needs its segment file opened.
    await _host(pipe, peer, lambda: link.memory_errors, timeout_ms=5000)
    equal(serving.done(), False, "the sender survived the MemoryError")
    equal(peer.stored, 0)
    del blocks
    await _host(pipe, peer, lambda: link.acked == 20)
    serving.cancel()
    equal(peer.counters(), list(range(1, 21)))
    equal([e for e in peer.errors if e[0] != "session"], [])
