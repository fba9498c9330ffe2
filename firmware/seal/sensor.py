# Debounced digital inputs. The stamp sensor counts presses in its IRQ (a press can begin and
# end while the loop is busy journaling); the tamper switch is sampled until its level settles.
# Either way the IRQ only records and sets a ThreadSafeFlag; a coroutine does the work.
import asyncio
from micropython import const
from time import ticks_diff, ticks_ms

_SAMPLE_MS = const(2)
_STABLE_MS = const(10)


class PressCounter:
    # One press per rising edge that follows at least stable_ms of low: bounce on a press or a
    # release never rises after a long enough low, so each press/release cycle counts once.
    # A line found high at boot has no known low before it: that press never counts, only the
    # next one after a release. edge() allocates nothing, so it may run in a hard IRQ.
    def __init__(self, level, now_ms, stable_ms=_STABLE_MS):
        self.presses = 0
        self._level = level
        self._low_since = now_ms
        self._low_known = not level
        self._stable_ms = stable_ms

    def edge(self, level, now_ms):
        if level == self._level:
            return
        self._level = level
        if not level:
            self._low_since = now_ms
            self._low_known = True
        elif self._low_known:
            self._low_known = False
            if ticks_diff(now_ms, self._low_since) >= self._stable_ms:
                self.presses += 1


# Both coroutines wait on a ThreadSafeFlag the caller owns: the pin's IRQ sets it, and so does
# the caller's housekeeping now and then, because an edge may be lost (IRQ coalescing, noise at
# the wrong instant) and that slow poll catches up. No wait_for timeout: on the unix port each
# pending wait_for keeps ~1.5 KB of tasks alive, for nothing the poll does not do.


async def count_presses(pin, flag, on_press, stable_ms=_STABLE_MS):
    # Awaits on_press() once per counted press, in order, however late the loop got to it.
    counter = PressCounter(pin.value(), ticks_ms(), stable_ms)
    done = 0

    def irq(_pin):
        # Reads the board's input object, which applies the switch's active level.
        counter.edge(pin.value(), ticks_ms())
        flag.set()

    pin.irq(irq)
    while True:
        await flag.wait()
        # The poll: a level the IRQ already saw is no edge, so this only catches a lost one.
        counter.edge(pin.value(), ticks_ms())
        while done < counter.presses:
            done += 1
            await on_press()


class Debouncer:
    # A level counts once it held for stable_ms. The first settled level only teaches the
    # state, so a level found at boot is never an edge.
    def __init__(self, stable_ms=_STABLE_MS):
        self.state = None
        self._stable_ms = stable_ms
        self._raw = None
        self._since = 0

    def sample(self, level, now_ms):
        # Returns the new level on a debounced edge, else None.
        if level != self._raw:
            self._raw = level
            self._since = now_ms
            return None
        if level == self.state or ticks_diff(now_ms, self._since) < self._stable_ms:
            return None
        first = self.state is None
        self.state = level
        return None if first else level

    def settled(self):
        return self._raw is not None and self._raw == self.state


async def watch(pin, flag, handler, stable_ms=_STABLE_MS):
    # Awaits handler(level) once per debounced edge, never for the level found at boot.
    pin.irq(lambda _pin: flag.set())
    deb = Debouncer(stable_ms)
    while True:
        while True:
            edge = deb.sample(pin.value(), ticks_ms())
            if edge is not None:
                await handler(edge)
            if deb.settled():
                break
            await asyncio.sleep_ms(_SAMPLE_MS)
        await flag.wait()
