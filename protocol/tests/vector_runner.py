# Runs protocol/vectors/*.json against sealproto; the same file runs on CPython and MicroPython.
# Usage: [micropython|python] vector_runner.py [VECTORS_DIR]; exits 1 if any vector fails.
import gc
import json
import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.insert(0, _HERE + "/..")

from sealproto import auth, cbor, framing, messages  # noqa: E402
from sealproto.errors import DecodeError, reason_name  # noqa: E402

FILES = ("frames.json", "mac.json", "session.json", "chain.json", "invalid.json", "streams.json")
CHUNKINGS = (1, 3, 7, 64, 100000)


class VectorFailure(Exception):
    pass


def from_json(value):
    if isinstance(value, dict):
        if len(value) == 1 and "hex" in value:
            return bytes.fromhex(value["hex"])
        return {int(k): from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def expect(cond, what):
    if not cond:
        raise VectorFailure(what)


def receive(frame, key=None, last_seq=0):
    # The receive path of SPEC §2-§4: frame, decode, then the MAC (and seq) check.
    decoder = framing.FrameDecoder()
    items = decoder.feed(frame)
    expect(len(items) == 1, "expected one frame, got " + str(len(items)))
    if isinstance(items[0], DecodeError):
        raise items[0]
    msg = messages.decode(items[0])
    if key is not None:
        if messages.auth(msg[messages.K_TYPE]) == messages.AUTH_SESSION:
            auth.accept(msg, key, last_seq)
        else:
            auth.verify(msg, key)
    return items[0], msg


def check_frame(v):
    msg = from_json(v["message"])
    payload = bytes.fromhex(v["payload"])
    frame = bytes.fromhex(v["frame"])
    expect(messages.encode(msg) == payload, "encode(message) != payload")
    expect(cbor.dumps(msg) == payload, "cbor.dumps(message) != payload")
    expect(framing.encode_frame(payload) == frame, "encode_frame(payload) != frame")
    key = bytes.fromhex(v["key"]) if "key" in v else None
    got_payload, got = receive(frame, key)
    expect(got_payload == payload and got == msg, "decoded message differs")
    if key is not None:
        unsigned = dict(msg)
        del unsigned[messages.K_MAC]
        expect(auth.sign(unsigned, key) == msg, "sign() gives another MAC")


def check_mac(v):
    mac = auth.hmac_sha256(bytes.fromhex(v["key"]), bytes.fromhex(v["data"]))
    expect(mac == bytes.fromhex(v["mac"]), "HMAC differs")


def check_session(v):
    key = auth.session_key(
        bytes.fromhex(v["device_key"]),
        bytes.fromhex(v["device_nonce"]),
        bytes.fromhex(v["host_nonce"]),
    )
    expect(key == bytes.fromhex(v["session_key"]), "session key differs")


def check_chain(v):
    key = bytes.fromhex(v["device_key"])
    prev = auth.GENESIS
    for counter, record in enumerate(v["events"], 1):
        payload = bytes.fromhex(record["payload"])
        msg = messages.decode(payload)
        auth.verify(msg, key)
        expect(msg[messages.EV_COUNTER] == counter, "counter not contiguous")
        expect(msg[messages.EV_PREV] == prev, "prev is not the hash of the previous record")
        expect(msg == from_json(record["message"]), "decoded event differs")
        prev = auth.record_hash(payload)
        expect(prev == bytes.fromhex(record["hash"]), "record hash differs")


def check_invalid(v):
    key = bytes.fromhex(v["key"]) if "key" in v else None
    try:
        receive(bytes.fromhex(v["frame"]), key, v.get("last_seq", 0))
    except DecodeError as e:
        expect(reason_name(e.reason) == v["reason"], "got " + reason_name(e.reason) + ": "
               + e.detail)
        return
    raise VectorFailure("accepted; expected " + v["reason"])


def check_stream(v):
    stream = bytes.fromhex(v["stream"])
    for size in CHUNKINGS:
        decoder = framing.FrameDecoder()
        got = []
        for start in range(0, len(stream), size):
            for item in decoder.feed(stream[start : start + size]):
                if isinstance(item, DecodeError):
                    got.append({"error": reason_name(item.reason)})
                else:
                    got.append({"payload": item.hex()})
        where = " (chunks of " + str(size) + ")"
        expect(got == v["expect"], "outputs differ" + where)
        expect(decoder.frames == v["frames"], "frames count differs" + where)
        expect(decoder.dropped == v["dropped"], "dropped count differs" + where)


CHECKS = {
    "frames.json": check_frame,
    "mac.json": check_mac,
    "session.json": check_session,
    "chain.json": check_chain,
    "invalid.json": check_invalid,
    "streams.json": check_stream,
}


def vectors(path):
    # make_vectors.py writes one vector per line: a 64 KB heap cannot hold a whole file parsed.
    with open(path) as f:
        for line in f:
            if line.startswith('{"name"'):
                vector = json.loads(line.rstrip().rstrip(","))
                line = None
                gc.collect()
                yield vector


def cases(directory):
    # Yields (label, check, vector) for every vector of every file.
    for name in FILES:
        for v in vectors(directory + "/" + name):
            yield name + ":" + v["name"], CHECKS[name], v


def run(directory, out=None):
    passed = 0
    failed = 0
    for label, check, vector in cases(directory):
        try:
            check(vector)
            passed += 1
            line = "ok   " + label
        except (VectorFailure, DecodeError, ValueError) as e:
            failed += 1
            line = "FAIL " + label + ": " + str(e)
        if out is not None:
            out(line)
    return passed, failed


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else _HERE + "/../vectors"
    passed, failed = run(directory, print)
    print("vectors: " + str(passed) + " passed, " + str(failed) + " failed")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
