# Seeded mutation fuzz of the sealproto receive path; runs on MicroPython (and CPython).
# Usage: mp_fuzz.py SEED INPUTS; prints the seed, progress, "fuzz: ..." summary; exit 1 on crash.
import sys

from sealproto import auth, framing, messages
from sealproto.errors import DecodeError, reason_name

_KEY = bytes(range(32))
_PROGRESS_EVERY = 10000
_MAX_INPUT = 1200  # inputs stay within what the heap can concatenate
_RUN = bytes(range(1, 256)) * 3  # non-zero bytes, for runs longer than any frame


class Rng:
    # xorshift32: the same stream on every interpreter, unlike each port's `random`
    def __init__(self, seed):
        self.state = (seed & 0xFFFFFFFF) or 0x5EA1

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def below(self, n):
        return self.next() % n


def corpus():
    nonce = bytes(range(16))
    msgs = [
        {0: messages.HELLO, 1: 3, 2: "seal-0001", 3: nonce, 4: 3, 5: 42, 6: "fw 0.1", 7: 9},
        {0: messages.WELCOME, 1: nonce, 2: 41, 3: 1764115200125, 4: bytes(range(64)), 14: 1},
        {0: messages.SYNC},
        {0: messages.EVENT, 1: 42, 2: 3, 3: 61250, 4: 1764115242, 5: 0, 6: 17, 7: 1042,
         8: auth.GENESIS, 9: bytes(range(64))},
        {0: messages.ACK, 1: 42, 2: b"", 14: 2},
        {0: messages.ALARM, 1: 2, 2: 1764115200, 3: 0, 14: 1},
        {0: messages.STATUS, 1: 3712, 2: 3, 3: 1021, 4: 33, 5: 4, 6: 43, 14: 2},
        {0: messages.PERMIT, 1: 17, 2: 5, 3: 1764115200, 4: 1764144000, 5: 1042, 14: 3},
        {0: messages.REVOKE, 1: 17, 14: 4},
        {0: messages.TIME, 1: 1764115200500, 14: 5},
        {0: messages.RESULT, 1: 3, 2: 0, 14: 3},
        {0: messages.ENROL, 1: 9, 2: bytes(range(64)), 3: bytes(64), 4: "seal-0001", 14: 6},
    ]
    payloads = []
    for msg in msgs:
        if messages.auth(msg[0]) != messages.AUTH_NONE:
            auth.sign(msg, _KEY)
        payloads.append(messages.encode(msg))
    return payloads


def mutate(rng, data):
    # Bytes concatenation, not bytearray surgery: MicroPython's bytearray cannot resize in place
    for _ in range(1 + rng.below(4)):
        op = rng.below(9)
        pos = rng.below(len(data) + 1)
        head = data[:pos]
        if op == 0 and pos < len(data):
            data = head + bytes((data[pos] ^ (1 << rng.below(8)),)) + data[pos + 1 :]
        elif op == 1 and pos < len(data):
            data = head + bytes((rng.below(256),)) + data[pos + 1 :]
        elif op == 2:
            data = head + bytes((rng.below(256),)) + data[pos:]
        elif op == 3:
            data = head + data[pos + 1 :]
        elif op == 4:
            data = head + b"\x00" + data[pos:]
        elif op == 5 and len(data) < _MAX_INPUT:
            data = head + data[pos : pos + rng.below(40)] + data[pos:]
        elif op == 6:
            data = head
        elif op == 7 and len(data) < _MAX_INPUT - len(_RUN):
            start = rng.below(255)
            data = head + _RUN[start : start + 400 + rng.below(300)] + data[pos:]
        else:
            data = head + bytes(rng.below(256) for _ in range(rng.below(24))) + data[pos:]
    return data


def receive(decoder, data, chunk, tally):
    # Feed in chunks; each good payload goes on to decode and, when it carries one, the MAC.
    # tally[reason] counts each outcome (reason 0: a message accepted).
    items = []
    for start in range(0, len(data), chunk):
        items.extend(decoder.feed(data[start : start + chunk]))
    for item in items:
        if isinstance(item, DecodeError):
            tally[item.reason] += 1
            continue
        if len(item) > framing.MAX_PAYLOAD:
            raise AssertionError("payload over MAX_PAYLOAD")
        try:
            msg = messages.decode(item)
            if messages.auth(msg[0]) != messages.AUTH_NONE:
                auth.verify(msg, _KEY)
            tally[0] += 1
        except DecodeError as e:
            tally[e.reason] += 1
    return len(items)


def run(seed, inputs, out):
    rng = Rng(seed)
    payloads = corpus()
    frames = [framing.encode_frame(p) for p in payloads]
    decoder = framing.FrameDecoder()
    crashes = 0
    outputs = 0
    tally = [0] * 11
    for i in range(inputs):
        source = rng.below(len(payloads))
        if rng.below(2):
            # a mutated payload in a correct frame reaches CBOR and the schema
            body = mutate(rng, payloads[source])
            data = framing.encode_frame(body) if 0 < len(body) <= framing.MAX_PAYLOAD else body
        else:
            # mutated wire bytes, usually glued to the frame before: the framing layer
            data = mutate(rng, frames[source])
        chunk = 1 + rng.below(64) if rng.below(2) else len(data) + 1
        before = decoder.frames + decoder.dropped
        try:
            got = receive(decoder, data, chunk, tally)
            if decoder.frames + decoder.dropped - before != got:
                raise AssertionError("counters disagree with outputs")
            outputs += got
        except Exception as e:  # the fuzzer's job: catch anything but DecodeError
            crashes += 1
            out("CRASH seed=" + str(seed) + " input=" + str(i) + " " + repr(e) + " data="
                + data.hex())
            decoder = framing.FrameDecoder()
        if (i + 1) % _PROGRESS_EVERY == 0:
            out("progress " + str(i + 1))
    return crashes, outputs, decoder, tally


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    inputs = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    print("seed " + str(seed))
    crashes, outputs, decoder, tally = run(seed, inputs, print)
    outcomes = "accepted=" + str(tally[0])
    for reason in range(1, len(tally)):
        outcomes += " " + reason_name(reason) + "=" + str(tally[reason])
    print("fuzz: seed=" + str(seed) + " inputs=" + str(inputs) + " outputs=" + str(outputs)
          + " frames=" + str(decoder.frames) + " dropped=" + str(decoder.dropped)
          + " crashes=" + str(crashes) + " " + outcomes)
    if crashes:
        sys.exit(1)


if __name__ == "__main__":
    main()
