"""Waiting on a condition that has no event to wait on (a file, a database), under a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["until"]

T = TypeVar("T")


def until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> T:
    """Call `probe` until `done(value)`; return that value, or raise TimeoutError naming `what`.

    For things that change without telling anyone (the ledger on disk); where a part offers a
    condition to wait on (Dut, WireLog, Observer), wait on that instead.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout_s:g} s waiting for {what} (last: {value})"
            )
        time.sleep(interval_s)
