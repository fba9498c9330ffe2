# The stamp's press counter, the tamper debouncer and their IRQ -> flag -> coroutine tasks,
# under micropython.
# Bounce patterns are seeded and the seed printed, so a failure can be replayed.
import asyncio
import random
import time

from mpyunit import equal

from seal.sensor import Debouncer, PressCounter, count_presses, watch

PRESS = 1
RELEASE = 0

_SEED = 20261126


def _feed(deb, levels, t0=0, step_ms=2):
    edges = []
    t = t0
    for level in levels:
        edge = deb.sample(level, t)
        if edge is not None:
            edges.append(edge)
        t += step_ms
    return edges, t


def _held(level, ms, step_ms=2):
    return [level] * (ms // step_ms)


def test_first_level_is_learned_not_counted():
    deb = Debouncer(10)
    edges, _ = _feed(deb, _held(0, 40))
    equal(edges, [], "edges at boot")
    equal(deb.state, 0)


def test_one_edge_per_clean_press_and_release():
    deb = Debouncer(10)
    edges, _ = _feed(deb, _held(0, 40) + _held(1, 40) + _held(0, 40))
    equal(edges, [PRESS, RELEASE])


def test_bouncy_press_counts_once():
    random.seed(_SEED)
    print("seed", _SEED)
    for _ in range(50):
        bounce_in = [random.getrandbits(1) for _ in range(random.getrandbits(3))]
        bounce_out = [random.getrandbits(1) for _ in range(random.getrandbits(3))]
        levels = _held(0, 30) + bounce_in + _held(1, 30) + bounce_out + _held(0, 30)
        edges, _ = _feed(Debouncer(10), levels)
        equal(edges, [PRESS, RELEASE], f"levels {levels!r}")


def test_glitch_shorter_than_stable_time_is_ignored():
    deb = Debouncer(10)
    edges, _ = _feed(deb, _held(0, 30) + [1, 1, 0] + _held(0, 30))
    equal(edges, [])


def test_press_held_at_boot_counts_only_after_release_and_new_press():
    deb = Debouncer(10)
    edges, t = _feed(deb, _held(1, 100))
    equal(edges, [], "held across reboot")
    edges, t = _feed(deb, _held(0, 30), t)
    equal(edges, [RELEASE])
    edges, _ = _feed(deb, _held(1, 30), t)
    equal(edges, [PRESS])


class _Pin:
    # Stands in for a GPIO: the unit under test is the debounce coroutine, not a board.
    def __init__(self, level):
        self.level = level
        self.handler = None

    def value(self):
        return self.level

    def irq(self, handler):
        self.handler = handler

    def set(self, level):
        self.level = level
        self.handler(self)


async def _settle(ms=60):
    await asyncio.sleep_ms(ms)


async def test_watch_coroutine_reports_each_edge_once():
    pin = _Pin(0)
    got = []

    async def handler(level):
        got.append(level)

    task = asyncio.create_task(watch(pin, asyncio.ThreadSafeFlag(), handler, 10))
    await _settle()
    for _ in range(3):
        # A bounce on each edge: the handler must still see one press and one release.
        for level in (1, 0, 1):
            pin.set(level)
        await _settle()
        for level in (0, 1, 0):
            pin.set(level)
        await _settle()
    task.cancel()
    equal(got, [PRESS, RELEASE] * 3)


async def test_watch_ignores_the_level_found_at_boot():
    pin = _Pin(1)
    got = []

    async def handler(level):
        got.append(level)

    task = asyncio.create_task(watch(pin, asyncio.ThreadSafeFlag(), handler, 10))
    await _settle()
    equal(got, [], "level at boot")
    pin.set(0)
    await _settle()
    pin.set(1)
    await _settle()
    task.cancel()
    equal(got, [RELEASE, PRESS])




def _edges(counter, levels, t=0, step_ms=2):
    # Feeds a level per step as the IRQ would see it (edge() ignores repeats).
    for level in levels:
        counter.edge(level, t)
        t += step_ms
    return t


def test_press_counter_counts_each_cycle_once_through_bounce():
    random.seed(_SEED)
    print("seed", _SEED)
    counter = PressCounter(0, 0, 10)
    t = _edges(counter, _held(0, 30))
    for _ in range(50):
        bounce_in = [random.getrandbits(1) for _ in range(random.getrandbits(3))]
        bounce_out = [random.getrandbits(1) for _ in range(random.getrandbits(3))]
        t = _edges(counter, bounce_in + _held(1, 30) + bounce_out + _held(0, 30), t)
    equal(counter.presses, 50)


def test_press_counter_ignores_a_press_held_at_boot():
    counter = PressCounter(1, 0, 10)
    t = _edges(counter, _held(1, 100))
    equal(counter.presses, 0)
    t = _edges(counter, _held(0, 30), t)
    equal(counter.presses, 0, "the release of the boot press is not a press")
    _edges(counter, _held(1, 30), t)
    equal(counter.presses, 1)


def test_press_counter_needs_a_settled_low_before_a_press():
    counter = PressCounter(0, 0, 10)
    t = _edges(counter, _held(0, 30) + _held(1, 30))
    # Released for 4 ms only, then high again: release bounce, not a second press.
    _edges(counter, [0, 0, 1, 1], t)
    equal(counter.presses, 1)


async def test_presses_during_a_slow_handler_are_not_lost():
    pin = _Pin(0)
    got = []

    async def on_press():
        got.append(len(got) + 1)
        if len(got) == 1:
            # Journaling blocks the loop; meanwhile two more whole stamps happen. The IRQ
            # still runs (and timestamps) each edge.
            for _ in range(2):
                time.sleep_ms(15)
                pin.set(0)
                time.sleep_ms(15)
                pin.set(1)
            time.sleep_ms(15)
            pin.set(0)

    task = asyncio.create_task(count_presses(pin, asyncio.ThreadSafeFlag(), on_press, 10))
    await _settle()
    pin.set(1)
    await _settle()
    task.cancel()
    equal(got, [1, 2, 3])


async def test_count_presses_ignores_press_held_at_boot():
    pin = _Pin(1)
    got = []

    async def on_press():
        got.append(1)

    task = asyncio.create_task(count_presses(pin, asyncio.ThreadSafeFlag(), on_press, 10))
    await _settle()
    equal(got, [], "press held at boot")
    pin.set(0)
    await _settle()
    pin.set(1)
    await _settle()
    task.cancel()
    equal(got, [1])


async def test_a_lost_edge_is_caught_by_the_poll():
    # The IRQ never fires (a lost edge); the owner's housekeeping sets the flag, and the
    # coroutines sample the pins then.
    press_pin = _Pin(0)
    case_pin = _Pin(0)
    press_flag = asyncio.ThreadSafeFlag()
    case_flag = asyncio.ThreadSafeFlag()
    presses = []
    edges = []

    async def on_press():
        presses.append(1)

    async def on_case(level):
        edges.append(level)

    tasks = [
        asyncio.create_task(count_presses(press_pin, press_flag, on_press, 10)),
        asyncio.create_task(watch(case_pin, case_flag, on_case, 10)),
    ]
    await _settle()
    press_pin.level = 1
    case_pin.level = 1
    await _settle()
    equal((presses, edges), ([], []), "nothing seen without an IRQ or a poll")
    press_flag.set()
    case_flag.set()
    await _settle()
    for task in tasks:
        task.cancel()
    equal(presses, [1])
    equal(edges, [PRESS])
