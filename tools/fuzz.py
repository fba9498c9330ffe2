"""Long fuzz run of the sealproto decoders (`make fuzz`); seeded, prints its seed.

1. Host (CPython): atheris (libFuzzer, coverage-guided) drives the whole receive path --
   FrameDecoder in chunks of a size the input chooses, messages.decode, the MAC check -- and,
   on the same bytes, cbor.loads and messages.decode directly. The seed corpus is every frame
   and payload of protocol/vectors. Default 1,000,000 inputs.
2. MicroPython: protocol/tests/mp_fuzz.py under `micropython -X heapsize=64k`, seeded mutations
   of valid frames and payloads. Default 100,000 inputs.

A crash is any exception other than DecodeError or a broken decoder invariant (libFuzzer saves
the input under results/fuzz/); a hang is an input running longer than --hang-s seconds.
Replay a run with `tools/fuzz.py --seed N`; exit status 1 if anything crashed or hung.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "protocol"
RESULTS = ROOT / "results" / "fuzz"
KEY = bytes(range(32))


def host_worker(argv: list[str]) -> None:
    """Runs inside the atheris subprocess; libFuzzer owns argv and the exit status."""
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        sys.exit("tools/fuzz.py needs atheris (x86_64 Linux): .venv/bin/pip install atheris")
    sys.path.insert(0, str(PROTOCOL))
    with atheris.instrument_imports(include=["sealproto"]):
        from sealproto import auth, cbor, framing, messages
        from sealproto.errors import DecodeError

    def decode_payload(payload: bytes) -> None:
        try:
            msg = messages.decode(payload)
            if messages.auth(msg[messages.K_TYPE]) != messages.AUTH_NONE:
                auth.verify(msg, KEY)
        except DecodeError:
            pass

    def one_input(raw: bytes) -> None:
        if not raw:
            return
        # First byte: chunk size for the stream, and whether to wrap the rest in a good frame
        # (so mutations of a payload reach CBOR instead of stopping at the CRC).
        chunk = 1 + (raw[0] & 0x3F)
        data = raw[1:]
        if raw[0] & 0x80 and 0 < len(data) <= framing.MAX_PAYLOAD:
            data = framing.encode_frame(data)
        decoder = framing.FrameDecoder()
        items: list[bytes | DecodeError] = []
        for start in range(0, len(data), chunk):
            items += decoder.feed(data[start : start + chunk])
        items += decoder.feed(b"\x00")
        good = [i for i in items if isinstance(i, bytes)]
        if not all(isinstance(i, bytes | DecodeError) for i in items):
            raise AssertionError("feed returned something else")
        if (decoder.frames, decoder.dropped) != (len(good), len(items) - len(good)):
            raise AssertionError("counters disagree with outputs")
        for payload in good:
            if not 1 <= len(payload) <= framing.MAX_PAYLOAD:
                raise AssertionError("payload size out of range")
            decode_payload(payload)
        body = raw[1:]
        try:
            value = cbor.loads(body)
        except DecodeError:
            pass
        else:
            if cbor.dumps(value) != body:
                raise AssertionError("accepted a non-canonical encoding")
        decode_payload(body)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def write_corpus(directory: Path) -> int:
    count = 0
    for name in ("frames.json", "streams.json"):
        for v in json.loads((PROTOCOL / "vectors" / name).read_text())["vectors"]:
            for field, flag in (("frame", 0x10), ("payload", 0x90), ("stream", 0x07)):
                if field in v:
                    seed_input = bytes([flag]) + bytes.fromhex(v[field])
                    (directory / f"seed-{count}").write_bytes(seed_input)
                    count += 1
    return count


def fuzz_host(seed: int, runs: int, hang_s: float) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"fuzz": "host-atheris", "seed": seed, "inputs": 0, "crashes": 0,
                              "hangs": 0}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sealink-fuzz-") as tmp:
        corpus = Path(tmp)
        seeds = write_corpus(corpus)
        command = [sys.executable, __file__, "--host-worker", f"-runs={runs}", f"-seed={seed}",
                   "-max_len=2048", f"-timeout={int(hang_s)}", "-print_final_stats=1",
                   "-rss_limit_mb=2048", f"-artifact_prefix={RESULTS}/", str(corpus)]
        print(f"host: {seeds} seed inputs; {' '.join(command)}", flush=True)
        lines = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                # libFuzzer's pulses (#2^n), its final stats and any error; not every NEW unit
                if " pulse " in line or "DONE" in line or "ERROR" in line or "stat::" in line:
                    print("host:", line.rstrip(), flush=True)
    log = "".join(lines)
    (RESULTS / f"host-{seed}.log").write_text(log)
    executed = re.search(r"stat::number_of_executed_units: (\d+)", log)
    result["inputs"] = int(executed[1]) if executed else 0
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", log)
    if coverage:
        result["coverage_edges"], result["features"] = map(int, coverage[-1])
    if "libFuzzer: timeout" in log:
        result["hangs"] = 1
    elif proc.returncode != 0:
        result["crashes"] = 1
    if proc.returncode != 0:
        print(log[-3000:], flush=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def fuzz_micropython(seed: int, total: int, hang_s: float) -> dict[str, Any]:
    micropython = Path(sys.executable).parent / "micropython"
    # 96k: sealproto is compiled from source in the heap here (protocol/tests/test_fuzz_smoke.py).
    command = [str(micropython), "-X", "heapsize=96k", str(PROTOCOL / "tests" / "mp_fuzz.py"),
               str(seed), str(total)]
    print("micropython:", " ".join(command), flush=True)
    started = time.monotonic()
    result: dict[str, Any] = {"fuzz": "micropython", "seed": seed, "inputs": 0, "crashes": 0,
                              "hangs": 0}
    env = {**os.environ, "MICROPYPATH": f"{PROTOCOL}:.frozen"}
    silent = threading.Event()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None

        def kill_if_silent() -> None:
            silent.set()
            proc.kill()

        # mp_fuzz prints a progress line every 10,000 inputs: silence this long is a hang
        timer = threading.Timer(hang_s, kill_if_silent)
        timer.start()
        for line in proc.stdout:
            timer.cancel()
            timer = threading.Timer(hang_s, kill_if_silent)
            timer.start()
            line = line.rstrip()
            print("micropython:", line, flush=True)
            if line.startswith("CRASH"):
                result["crashes"] += 1
            if line.startswith("fuzz:"):
                fields = dict(f.split("=", 1) for f in line.split()[1:])
                result["inputs"] = int(fields["inputs"])
                result["outcomes"] = {k: int(v) for k, v in fields.items()
                                      if k not in ("seed", "inputs", "crashes")}
        timer.cancel()
        code = proc.wait()
    if silent.is_set():
        result["hangs"] = 1
    elif code != 0 and result["crashes"] == 0:
        result["crashes"] = 1
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main() -> int:
    if sys.argv[1:2] == ["--host-worker"]:
        host_worker([sys.argv[0], *sys.argv[2:]])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seed", type=int, default=random.randrange(1, 2**31))
    parser.add_argument("--host-inputs", type=int, default=1_000_000)
    parser.add_argument("--micropython-inputs", type=int, default=100_000)
    parser.add_argument("--hang-s", type=float, default=30.0)
    args = parser.parse_args()
    print(f"fuzz seed {args.seed} (replay: tools/fuzz.py --seed {args.seed})", flush=True)
    results = []
    if args.micropython_inputs:
        results.append(fuzz_micropython(args.seed, args.micropython_inputs, args.hang_s))
    if args.host_inputs:
        results.append(fuzz_host(args.seed, args.host_inputs, args.hang_s))
    for result in results:
        print(json.dumps(result), flush=True)
    return 1 if any(r["crashes"] or r["hangs"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
