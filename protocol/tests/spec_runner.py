# Runs the SPEC conformance cases (spec_cases.py writes them) against sealproto; the same file
# runs on CPython and MicroPython. Usage: [micropython|python] spec_runner.py CASES.jsonl
import gc
import json
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _HERE + "/..")

from sealproto import auth, cbor, codec, framing  # noqa: E402
from sealproto.errors import DecodeError, reason_name  # noqa: E402

# Streams longer than this are fed in pieces, never built whole: a 64-96 KB heap.
_PIECE = 4096


class CaseFailure(Exception):
    pass


def from_json(value):
    # bytes travel as {"hex": ...}, maps as {"map": [[key, value], ...]} (JSON keys are text)
    if isinstance(value, dict):
        if "hex" in value:
            return bytes.fromhex(value["hex"])
        return {k: from_json(v) for k, v in value["map"]}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def attempt(call, *args):
    # (value, None), or (None, the reason name of a DecodeError, or "ValueError")
    try:
        return call(*args), None
    except DecodeError as e:
        return None, reason_name(e.reason)
    except ValueError:
        return None, "ValueError"


def expect(got, want, what):
    if got != want:
        raise CaseFailure(what + ": got " + repr(got) + ", want " + repr(want))


def run_decode(c):
    _, why = attempt(codec.decode, bytes.fromhex(c["hex"]))
    expect(why or "ok", c["want"], "decode")


def run_loads(c):
    _, why = attempt(cbor.loads, bytes.fromhex(c["hex"]))
    expect(why or "ok", c["want"], "cbor.loads")


def run_dumps(c):
    got, why = attempt(cbor.dumps, from_json(c["value"]))
    expect(why or got.hex(), c["want"], "cbor.dumps")


def run_encode_frame(c):
    got, why = attempt(framing.encode_frame, bytes.fromhex(c["hex"]))
    expect(why or got.hex(), c["want"], "encode_frame")


def run_verify(c):
    msg = codec.decode(bytes.fromhex(c["hex"]))
    _, why = attempt(auth.verify, msg, bytes.fromhex(c["key"]))
    expect(why or "ok", c["want"], "auth.verify")


def run_accept(c):
    msg = codec.decode(bytes.fromhex(c["hex"]))
    seq, why = attempt(auth.accept, msg, bytes.fromhex(c["key"]), c["last_seq"])
    expect(why or seq, c["want"], "auth.accept after seq " + str(c["last_seq"]))


def _feed(decoder, chunks):
    got = []
    for chunk in chunks:
        for item in decoder.feed(chunk):
            got.append(reason_name(item.reason) if isinstance(item, DecodeError) else item.hex())
    return got


def _pieces(parts):
    # [[hex, repeat], ...] as chunks of at most about _PIECE bytes
    for hex_part, repeat in parts:
        part = bytes.fromhex(hex_part)
        per = max(1, _PIECE // len(part))
        while repeat > 0:
            n = min(per, repeat)
            yield part * n
            repeat -= n


def _chunkings(c):
    # Named cuttings of the stream; every cut point only for streams small enough to build.
    yield "as written", _pieces(c["parts"])
    if not c.get("every_cut"):
        return
    stream = b"".join(_pieces(c["parts"]))
    yield "byte by byte", (stream[i : i + 1] for i in range(len(stream)))
    for cut in range(1, len(stream)):
        yield "cut at " + str(cut), (stream[:cut], stream[cut:])
    for cuts in c.get("cuts", ()):
        # no [0, *cuts]: MicroPython has no unpacking in a list display
        bounds = [0] + list(cuts) + [len(stream)]  # noqa: RUF005
        yield "cuts " + str(cuts), (stream[bounds[k] : bounds[k + 1]] for k in range(len(cuts) + 1))


def run_stream(c):
    for name, chunks in _chunkings(c):
        decoder = framing.FrameDecoder()
        expect(_feed(decoder, chunks), c["want"], "frames, " + name)
        expect((decoder.frames, decoder.dropped), (c["frames"], c["dropped"]),
               "frames/dropped counts, " + name)


RUN = {
    "decode": run_decode,
    "loads": run_loads,
    "dumps": run_dumps,
    "encode_frame": run_encode_frame,
    "verify": run_verify,
    "accept": run_accept,
    "stream": run_stream,
}


def cases(path):
    # One case a line: the whole file parsed at once would not fit a small heap.
    with open(path) as f:
        for line in f:
            case = json.loads(line)
            line = None
            gc.collect()
            yield case


def run_case(case):
    # None if the case holds, else why not.
    try:
        RUN[case["op"]](case)
    except (CaseFailure, DecodeError, ValueError, TypeError) as e:
        return str(e) or repr(e)
    return None


def main():
    # Exits 0 whatever the outcome: the caller reads the lines, "ok   N name" or
    # "FAIL N name: why" with N the case's line in the file (names may hold colons).
    failed = 0
    total = 0
    for case in cases(sys.argv[1]):
        why = run_case(case)
        if why is None:
            print("ok   " + str(total) + " " + case["name"])
        else:
            failed += 1
            print("FAIL " + str(total) + " " + case["name"] + ": " + why)
        total += 1
    print("spec cases: " + str(total - failed) + " passed, " + str(failed) + " failed")


if __name__ == "__main__":
    main()
