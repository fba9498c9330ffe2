# UART port: moves bytes between a raw non-blocking byte stream (machine.UART, the emulated
# board's pty) and the link (seal/ports.py). Nothing polls: the waits sleep until the stream is
# readable or writable.
from asyncio import core
from micropython import const

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

    # A stream is up from boot on: nobody connects to a UART, so no session starts on that.
    def up(self):
        return True

    def session_due(self):
        return False

    def refresh(self):
        pass

    def readable(self):
        return readable(self.stream)

    def writable(self):
        return _writable(self.stream)
