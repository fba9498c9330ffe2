# Minimal harness run under micropython: firmware/tests/mpy_runner.py runs
# `mpyunit.main("mp_NAME")`, which runs the module's test_* functions (async ones under asyncio)
# and prints one line per outcome. A module may also end with `mpyunit.main(globals())`.
import asyncio
import gc
import os
import sys

_done = set()


def main(target):
    if isinstance(target, str):
        if target in _done:
            return
        scope = __import__(target).__dict__
        if target in _done:
            return
    else:
        scope = target
    _done.add(scope["__name__"])
    names = sorted(n for n in scope if n.startswith("test_"))
    failed = 0
    for name in names:
        gc.collect()
        try:
            result = scope[name]()
            if hasattr(result, "send"):
                asyncio.run(result)
            print("@@PASS", name)
        except Exception as e:  # every failure is reported, none stops the run
            failed += 1
            print("@@FAIL", name)
            sys.print_exception(e)
            print("@@END", name)
    print("@@DONE", len(names), failed)


def equal(got, want, what=""):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError(f"{exc.__name__} not raised")


def tmpdir(name):
    # SEAL_TMP is a fresh folder per script run; each test takes its own folder in it.
    path = os.getenv("SEAL_TMP") + "/" + name
    os.mkdir(path)
    return path
