# Transport glue: moves bytes between a raw non-blocking byte stream (machine.UART, the
# emulated board's pty) and the link. Nothing polls: a reader task sleeps until the stream is
# readable, the sender until the link's wake event or its next deadline.
import asyncio
from asyncio import core
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

_CHUNK = const(128)
# Nobody reading the wire (no host, a full pty) must not grow the heap: the link resends
# everything that matters, so output beyond this is dropped. It holds a whole window of the
# longest EVENTs (8 x 193 bytes) with a STATUS and 8 ALARMs: a burst the host is reading is
# never dropped, or every drop would cost a retransmission timeout (500 ms, doubling).
_OUT_MAX = const(3072)


# asyncio.StreamReader waits the same way (its read() yields this before reading), but importing
# its module takes ~1.7 KB of the 64 KB heap for streams the seal does not use. select.poll
# takes machine.UART and the unix port's file objects alike (firmware/tests/test_uart_pty.py).
async def readable(stream):
    yield core._io_queue.queue_read(stream)


async def _writable(stream):
    yield core._io_queue.queue_write(stream)


class StreamPort:
    def __init__(self, stream):
        self.stream = stream
        self._buf = memoryview(bytearray(_CHUNK))
        self._out = bytearray()
        self.dropped_bytes = 0

    def _write(self, data):
        try:
            return self.stream.write(data) or 0
        except OSError:
            return 0

    def send(self, frame):
        # `frame` may be a view of the link's frame buffer: what the stream does not take now is
        # copied before send() returns.
        if not self._out:
            n = self._write(frame)
            if n == len(frame):
                return
            frame = frame[n:]
        if len(self._out) + len(frame) > _OUT_MAX:
            self.dropped_bytes += len(frame)
            return
        self._out.extend(frame)

    def flush(self):
        # True while output waits for the stream.
        if self._out:
            n = self._write(self._out)
            if n:
                self._out = self._out[n:]
        return bool(self._out)

    def receive(self):
        try:
            n = self.stream.readinto(self._buf)
        except OSError:
            return None
        return self._buf[:n] if n else None


async def serve(link, port, ticks=ticks_ms):
    # The link's sender: runs tick() whenever the link's wake event is set (a new record or
    # alarm, bytes fed, the timer) and sleeps in between, exactly until next_deadline_ms().
    wake = link.wake
    reader = asyncio.create_task(_read(link, port, ticks))
    timer = None
    due = 0
    link.start(ticks())
    try:
        while True:
            wake.clear()
            now = ticks()
            link.tick(now)
            if port.flush():
                await _writable(port.stream)
                continue
            ms = link.next_deadline_ms(now)
            at = ticks_add(now, ms)
            # A sleeping timer cannot be moved: one that would ring late is replaced; one that
            # rings early only costs a tick() with nothing due.
            if timer is None or timer.done() or ticks_diff(at, due) < 0:
                if timer is not None:
                    timer.cancel()
                timer = asyncio.create_task(_ring(wake, ms))
                due = at
            await wake.wait()
            if timer.done():
                timer = None
    finally:
        reader.cancel()
        if timer is not None:
            timer.cancel()


async def _read(link, port, ticks):
    while True:
        await readable(port.stream)
        data = port.receive()
        if data:
            link.feed(data, ticks())
            link.wake.set()


async def _ring(wake, ms):
    await asyncio.sleep_ms(ms)
    wake.set()
