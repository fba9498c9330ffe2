# The link's ports (UART, BLE) and the sender that runs the link over them. Nothing polls: a
# reader task per port sleeps until its port is readable, the sender until the link's wake
# event, its next deadline, or a port that can take more output.
import asyncio
import gc
from micropython import const
from time import ticks_add, ticks_diff, ticks_ms

# How long the link waits after a MemoryError before it tries again: a few of the other
# tasks' turns (a BLE chunk, an ACK read), whose objects then are garbage.
_COLLECTED_MS = const(20)


class Ports:
    # The board's ports in its order of preference (board.LINKS): the first that is up carries
    # the link, alone. What arrives on another is dropped unread: a SYNC on a spare UART must
    # not restart the session of the seal's BLE gateway.
    def __init__(self, ports):
        self.all = ports
        self.active = None

    def send(self, frame):
        if self.active is not None:
            self.active.send(frame)

    def refresh(self):
        for port in self.all:
            port.refresh()

    def choose(self):
        # True when a new session must start: the carrier changed, or a new central came.
        best = None
        for port in self.all:
            if port.up():
                best = port
                break
        due = best is not None and best.session_due()
        moved = best is not self.active
        self.active = best
        return best is not None and (moved or due)


async def serve(link, ports, ticks=ticks_ms):
    # The link's sender: runs tick() whenever the link's wake event is set (a new record or
    # alarm, bytes fed, the timer) and sleeps in between, exactly until next_deadline_ms().
    wake = link.wake
    readers = [asyncio.create_task(_read(link, ports, port, ticks)) for port in ports.all]
    timer = None
    due = 0
    ports.choose()
    link.start(ticks())
    try:
        while True:
            wake.clear()
            now = ticks()
            if ports.choose():
                link.start(now)
            port = ports.active
            try:
                link.tick(now)
                busy = port is not None and port.flush()
            except MemoryError:
                await _collected()
                continue
            if busy:
                await port.writable()
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
        for reader in readers:
            reader.cancel()
        if timer is not None:
            timer.cancel()


async def _read(link, ports, port, ticks):
    while True:
        await port.readable()
        # Before the bytes: a central's first write (the host's SYNC) starts the session, and
        # that SYNC then finds the HELLO just sent (SPEC §5.2: one HELLO per SYNC interval).
        if ports.choose():
            link.start(ticks())
            link.wake.set()
        try:
            data = port.receive()
            if data and port is ports.active:
                link.feed(data, ticks())
                link.wake.set()
        except MemoryError:
            # What was not read is written again: the host resends what goes unanswered.
            await _collected()
            link.wake.set()


async def _collected():
    # MicroPython raises MemoryError only after a collection found no block large enough:
    # the heap is cut up by objects alive at that moment, not full. The link must not stop
    # for it (a task that dies stops the firmware, seal/app.py): what tick() did not send is
    # on flash and sent again (SPEC §5.5), so the other tasks run a while, their objects die,
    # and the caller tries again.
    gc.collect()
    await asyncio.sleep_ms(_COLLECTED_MS)


async def _ring(wake, ms):
    await asyncio.sleep_ms(ms)
    wake.set()
