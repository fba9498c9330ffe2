"""Run the `sealink` CLI with a wall clock the test can step while it runs (a host clock jump).

    python -m sealink_hil.clockshift OFFSET_FILE run --config gateway.toml

The gateway has no clock-source override, and libfaketime is not part of the system here, so
this wrapper stands in for one: it shifts `time.time()` / `time.time_ns()` (what the gateway
reads for WELCOME/TIME host_time_ms and its received_ms stamps) by the number of seconds in
OFFSET_FILE, re-read every few milliseconds, exactly like an NTP step or a Raspberry Pi booting
with a wrong RTC. Monotonic clocks are untouched, as with a real step. Each change it applies is
acknowledged in OFFSET_FILE.applied so the test waits on a condition, not a sleep.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

_POLL_S = 0.005
_offset_ns = 0
_real_time = time.time
_real_time_ns = time.time_ns


def _shifted_time() -> float:
    return _real_time() + _offset_ns / 1e9


def _shifted_time_ns() -> int:
    return _real_time_ns() + _offset_ns


def _follow(offset_file: Path) -> None:
    global _offset_ns
    applied = offset_file.with_name(offset_file.name + ".applied")
    seen = None
    while True:
        with contextlib.suppress(OSError, ValueError):
            text = offset_file.read_text().strip()
            if text != seen:
                _offset_ns = round(float(text or 0) * 1e9)
                applied.write_text(text)
                seen = text
        time.sleep(_POLL_S)


def install(offset_file: Path) -> None:
    time.time = _shifted_time
    time.time_ns = _shifted_time_ns
    threading.Thread(target=_follow, args=(offset_file,), name="clockshift", daemon=True).start()


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python -m sealink_hil.clockshift OFFSET_FILE SEALINK-ARGS...")
    install(Path(sys.argv[1]))
    from sealink.cli import main as sealink_main  # after install: it must see the shifted clock

    sys.argv = ["sealink", *sys.argv[2:]]
    sys.exit(sealink_main())


if __name__ == "__main__":
    main()
