# Transport glue: moves bytes between a raw non-blocking byte stream (machine.UART, the
# emulated board's pty) and the link, through one preallocated read buffer.
import asyncio
from micropython import const
from time import ticks_ms

_CHUNK = const(128)
_IDLE_MS = const(5)
# Nobody reading the wire (no host, a full pty) must not grow the heap: the link resends
# everything that matters, so output beyond this is dropped.
_OUT_MAX = const(2048)


class StreamPort:
    def __init__(self, stream):
        self._stream = stream
        self._buf = bytearray(_CHUNK)
        self._mv = memoryview(self._buf)
        self._out = bytearray()
        self.dropped_bytes = 0

    def _write(self, data):
        try:
            return self._stream.write(data) or 0
        except OSError:
            return 0

    def send(self, frame):
        if not self._out:
            n = self._write(frame)
            if n == len(frame):
                return
            frame = memoryview(frame)[n:]
        if len(self._out) + len(frame) > _OUT_MAX:
            self.dropped_bytes += len(frame)
            return
        self._out.extend(frame)

    def flush(self):
        if self._out:
            n = self._write(self._out)
            if n:
                self._out = self._out[n:]

    def receive(self):
        try:
            n = self._stream.readinto(self._buf)
        except OSError:
            return None
        return self._mv[:n] if n else None


async def serve(link, port, ticks=ticks_ms):
    link.start(ticks())
    while True:
        data = port.receive()
        now = ticks()
        if data:
            link.feed(data, now)
        link.tick(now)
        port.flush()
        await asyncio.sleep_ms(0 if data else _IDLE_MS)
