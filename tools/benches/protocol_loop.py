# The protocol bench loop, shared by CPython and MicroPython (bench_protocol.py runs both).
# One iteration = an impression EVENT MACed, encoded, framed, deframed, decoded, MAC-verified.
import json
import sys

from sealproto import auth, framing, messages

try:
    from time import ticks_diff, ticks_us

    def elapsed_s(start):
        return ticks_diff(ticks_us(), start) / 1e6

    now = ticks_us
except ImportError:
    from time import perf_counter as now

    def elapsed_s(start):
        return now() - start


_KEY = bytes(range(32))
_PREV = bytes(range(32, 64))
# The chip's signature as bytes on the wire: ECDSA itself is the chip's time (the firmware
# bench) and the gateway's (the ingest bench), not this loop's.
_SIG = bytes(range(64, 128))


def impression(counter):
    # Values of a seal in service: a month of uptime, a real clock, permit and operator set
    return {
        messages.K_TYPE: messages.EVENT,
        messages.EV_COUNTER: counter,
        messages.EV_BOOT: 12,
        messages.EV_UPTIME: 2_592_000_000 + counter,
        messages.EV_TIME: 1_764_115_200 + counter,
        messages.EV_KIND: messages.KIND_IMPRESSION,
        messages.EV_PERMIT: 4711,
        messages.EV_OPERATOR: 1042,
        messages.EV_PREV: _PREV,
        messages.EV_SIG: _SIG,
    }


def one_round(iterations, first_counter):
    decoder = framing.FrameDecoder()
    wire_bytes = 0
    start = now()
    for counter in range(first_counter, first_counter + iterations):
        wire = framing.encode_frame(messages.encode(auth.sign(impression(counter), _KEY)))
        wire_bytes = len(wire)
        for payload in decoder.feed(wire):
            auth.verify(messages.decode(payload), _KEY)
    seconds = elapsed_s(start)
    if decoder.frames != iterations or decoder.dropped:
        raise RuntimeError("frames lost in the bench loop")
    return iterations / seconds, wire_bytes


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    rates = []
    wire = 0
    for r in range(rounds):
        rate, wire = one_round(iterations, 1000 + r * iterations)
        rates.append(rate)
    print(json.dumps({"rates": rates, "wire_bytes": wire}))


if __name__ == "__main__":
    main()
